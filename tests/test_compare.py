"""`ifp compare`: budgets and seed statistics of the report (fast, synthetic results), and the
whole pipeline at a few steps per stage (slow): every arm trained, evaluated, reported, and a
rerun that redoes nothing."""

import json
import os
import time

import pytest

from ifp_jax.experiments import compare
from ifp_jax.config import ConfigError


def _runs(means):
    """Synthetic per-seed results: every row gets `means[seed] + offset(row)` on both tasks."""
    runs = {}
    for seed, base in enumerate(means):
        stages = {arm: {s.name: {"tokens": 100 * (i + 1), "seconds": 10.0}
                        for i, s in enumerate(arm_stages)}
                  for arm, arm_stages in compare.ARMS.items()}
        evals = {label: {"per_task": {"t1": base + 0.01 * i, "t2": base}, "mean": base + 0.005 * i}
                 for i, (label, *_) in enumerate(compare.EVALS)}
        runs[seed] = {"stages": stages, "evals": evals}
    return runs


def test_report_averages_seeds_and_counts_each_arms_budget():
    cfg = compare.stage_config("tiny_multiskill", compare.ARMS["source"][0], 0, [], {})
    report = compare.summarize(_runs([0.2, 0.4]), cfg)
    ifp = report["rows"]["IFP per-task (lambda)"]
    assert ifp["per_task"]["t2"]["mean"] == pytest.approx(0.3)
    assert ifp["per_task"]["t2"]["sd"] == pytest.approx(0.1414, abs=1e-4)
    # Arms after the shared source: their own stages (100 + 200) on top of the source's 100;
    # dense-small trains its own source stage instead.
    assert (ifp["train_tokens_after_source"], ifp["train_tokens_total"]) == (300, 400)
    small = report["rows"]["dense-small (F = k)"]
    assert (small["train_tokens_after_source"], small["train_tokens_total"]) == (500, 600)
    assert report["rows"]["dense source"]["train_tokens_total"] == 100
    f, k = cfg.model.d_ffn, cfg.pruning.keep_k
    assert report["rows"]["dense-full"]["active_ffn_params"] == 3 * cfg.model.d_model * f * \
        cfg.model.n_layers
    assert ifp["active_ffn_params"] * f == report["rows"]["dense-full"]["active_ffn_params"] * k
    text = compare.format_markdown(report)
    assert "| IFP per-task (lambda) |" in text and "0.300 ± 0.141" in text
    assert "Does k bind?" in text and "no (below 0.05)" in text
    bars = {b["bar"]: b for b in report["bars"]}
    # Synthetic rows: row i scores base + 0.005 i: IFP per-input (row 8) leads static (row 5)
    # by 0.015 and dense-full (row 2) by 0.030; per-task (row 10) leads per-input by 0.010.
    ahead = bars["IFP per-input (lambda) - static (lambda) >= +0.05"]
    assert ahead["figure"] == pytest.approx(0.015) and not ahead["met"]
    behind = bars["IFP per-input (lambda) - dense-full >= -0.03"]
    assert behind["figure"] == pytest.approx(0.030) and behind["met"]
    per_task = bars["IFP per-task (lambda) - IFP per-input (lambda) >= -0.02"]
    assert per_task["figure"] == pytest.approx(0.010) and per_task["met"]
    assert "| IFP per-input (lambda) - static (lambda) >= +0.05 | +0.015 | no |" in text
    # An optional arm that was not run has no row.
    for run in (runs := _runs([0.2])).values():
        del run["evals"]["static, distilled from the source (lambda)"]
    assert "static, distilled from the source (lambda)" not in compare.summarize(runs, cfg)["rows"]


def test_unknown_comparison_and_bad_seeds_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown comparison"):
        compare.stage_config("nope", compare.ARMS["source"][0], 0, [], {})
    with pytest.raises(ConfigError, match="--seeds"):
        compare.run_compare(str(tmp_path), seeds=0)


def test_a_comparison_without_cpt_chains_every_arm_from_the_source():
    chains = {arm: compare.arm_stages("tiny_facts", arm) for arm in compare.ARMS}
    assert [s.name for s in chains["ifp"]] == ["sft"]
    assert (chains["ifp"][0].init_llm, chains["ifp"][0].init_predictor) == ("shared_source", "")
    assert [(s.name, s.init_llm) for s in chains["dense_small"]] == [("source", ""),
                                                                       ("sft", "source")]
    assert all(s.role != "cpt" for chain in chains.values() for s in chain)
    assert compare.arm_stages("tiny_multiskill", "ifp") == compare.ARMS["ifp"]
    instruction = compare.stage_config("tiny_facts", chains["ifp_instruction"][0], 0,
                                       ["data.predictor_instruction_rate=0.25"], {})
    assert instruction.data.predictor_instruction_rate == 1.0  # the arm's own setting wins
    plain = compare.stage_config("tiny_facts", chains["ifp"][0], 0, [], {})
    assert plain.data.predictor_instruction_rate == 0.5
    assert plain.distill.teacher == ""
    distilled = compare.stage_config("tiny_facts", chains["static_distill"][0], 0, [],
                                     {"shared_source": "/runs/source"})
    assert (distilled.pruning.mode, distilled.distill.teacher) == ("static", "/runs/source")


def test_a_finished_stage_is_reused_only_under_the_same_config(tmp_path):
    cfg = compare.stage_config("tiny_facts", compare.ARMS["source"][0], 0, [], {})
    record = {"steps": 1, "config_digest": compare.config_digest(cfg)}
    (tmp_path / compare.STAGE_DONE).write_text(json.dumps(record))
    assert compare._train_stage(cfg, str(tmp_path)) == record  # reused, nothing trained
    other = compare.stage_config("tiny_facts", compare.ARMS["source"][0], 0,
                                 ["optimizer.lr_llm=1e-4"], {})
    with pytest.raises(ConfigError, match="another config"):
        compare._train_stage(other, str(tmp_path))
    # Only fields off their defaults are hashed: a field added later at its default leaves
    # every finished stage's digest as it was.
    assert compare._non_defaults({"a": 1, "b": {"c": 2, "d": 3}, "new": {"x": 0}},
                                 {"a": 1, "b": {"c": 2, "d": 4}, "new": {"x": 0}}) == \
        {"b": {"d": 3}}


@pytest.mark.slow
def test_compare_trains_every_arm_then_reruns_nothing(tmp_path):
    """About 6 minutes on 2 cores: 12 stages of 3 steps and 13 evaluations."""
    overrides = ["train.steps=3", "data.eval_examples_per_task=4"]
    report = compare.run_compare(str(tmp_path), "tiny_multiskill", seeds=1,
                                 overrides=overrides, log=lambda m: None, distill_static=True)
    assert set(report["rows"]) == {label for label, *_ in compare.EVALS}
    with open(tmp_path / "report.json") as f:
        assert json.load(f) == json.loads(json.dumps(report))
    assert (tmp_path / "report.md").read_text().startswith("# ifp compare")
    for arm, stages in compare.ARMS.items():
        for stage in stages:
            assert os.path.exists(tmp_path / "seed0" / arm / stage.name / compare.STAGE_DONE)
    t0 = time.time()
    again = compare.run_compare(str(tmp_path), "tiny_multiskill", seeds=1,
                                overrides=overrides, log=lambda m: None, distill_static=True)
    assert again == report and time.time() - t0 < 60


def test_seeds_in_processes_report_a_failed_seed_with_its_log(tmp_path):
    """--jobs runs each seed as `ifp compare --only-seed S`; a seed that fails (here: an
    unknown comparison, refused at once) stops the run with one line naming its log."""
    with pytest.raises(ConfigError, match=r"seed \d failed \(exit 2\); see .*seed\d.log"):
        compare._seeds_in_processes(str(tmp_path), "nope", 2, [], distill_static=False,
                                    jobs=2, log=lambda m: None)
    assert "unknown comparison" in (tmp_path / "seed0.log").read_text()
    with pytest.raises(ConfigError, match="--jobs"):
        compare.run_compare(str(tmp_path), jobs=0)
