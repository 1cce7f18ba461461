"""`ifp bench train` at a tiny shape: the JSON report's keys and sane values (no timing bars)."""

import argparse
import builtins
import json
import sys

import pytest

from ifp_jax.commands.bench import add_parser

# One process-wide cache: the second run reuses the first one's compiled arms (keeps the file
# fast); mesh.data=1 keeps the 8 virtual test devices out of a timing-only run.
_ARMS: dict = {}
TINY = [
    "mesh.data=1",
    "model.vocab_size=256", "model.d_model=32", "model.n_layers=1", "model.n_heads=2",
    "model.n_kv_heads=1", "model.head_dim=16", "model.d_ffn=64", "model.max_len=16",
    "pruning.keep_k=16", "data.seq_len=16", "data.global_batch_size=8",
    "predictor.backbone.vocab_size=256", "predictor.backbone.d_model=16",
    "predictor.backbone.n_layers=1", "predictor.backbone.n_heads=1",
    "predictor.backbone.n_kv_heads=1", "predictor.backbone.head_dim=16",
    "predictor.backbone.d_ffn=32", "predictor.backbone.max_len=8", "predictor.head_hidden=16",
    "predictor.max_prompt_len=8",
]
FLAGS = ["--json", "--steps", "2", "--warmup", "0", "--matmul-n", "128"]


def _run_cli(argv, capsys) -> dict:
    parser = argparse.ArgumentParser(prog="ifp")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.arm_cache = _ARMS
    args.fn(args)
    out = capsys.readouterr()
    assert "[bench] timed step 2/2: ifp" in out.err  # progress goes to stderr
    return json.loads(out.out)  # stdout is exactly one JSON object


def _check_ours(r: dict) -> None:
    assert r["benchmark"] == "train" and r["experiment"] == "bench_train_50m"
    assert r["tokens_per_step"] == 8 * 16
    assert r["shape"]["d_model"] == 32 and r["shape"]["keep_k"] == 16
    assert r["llm_params"] > r["llm_matmul_params"] > 0
    assert r["predictor_params"] > 0 and r["flops_per_step"] > 0
    assert r["xla_matmul_peak_flops"] > 0
    for arm in ("dense", "ifp"):
        a = r[arm]
        assert len(a["step_s_all"]) == 2
        assert a["tokens_per_s"] > 0 and a["step_s_median"] > 0 and a["compile_s"] > 0
        assert a["model_flops_per_s"] > 0
        assert 0 < a["fraction_of_peak"] < 1.5
    assert r["ifp_over_dense_step_time"] > 0 and r["ifp_over_dense_step_time_paired"] > 0
    assert "6 * N_matmul" in r["flops_formula"]


def test_bench_train_json_without_torch(capsys, monkeypatch):
    """--peer without torch: our figures still come, the peer is skipped with a clear reason."""
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    for mod in [m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")]:
        monkeypatch.delitem(sys.modules, mod)
    r = _run_cli(["bench", "train", *TINY, *FLAGS, "--peer"], capsys)
    _check_ours(r)
    assert "torch" in r["peer"]["skipped"] and "pip install" in r["peer"]["skipped"]
    assert "ours_over_peer_tokens_per_s" not in r


def test_bench_train_with_transformers_peer(capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    r = _run_cli(["bench", "train", *TINY, *FLAGS, "--peer"], capsys)
    _check_ours(r)
    p = r["peer"]
    assert p["tokens_per_s"] > 0 and p["params"] > 0 and p["threads"] >= 1
    assert 0 < p["fraction_of_peak"] < 1.5 and r["torch_matmul_peak_flops"] > 0
    assert r["ours_over_peer_tokens_per_s"] > 0 and r["ours_over_peer_tokens_per_s_paired"] > 0


def test_report_text_and_flop_formula():
    from ifp_jax.benchmarks.train_bench import default_config, flops_per_step, format_report
    cfg = default_config()
    m = cfg.model
    assert (m.d_model, m.n_layers, m.d_ffn, m.n_heads, m.n_kv_heads, m.head_dim, m.vocab_size) \
        == (512, 8, 1376, 8, 2, 64, 32000)
    assert (cfg.data.global_batch_size, cfg.data.seq_len) == (8, 256)
    # matmul weights: 8 layers x (attention 512*64*(2*8 + 2*2) + FFN 3*512*1376) + LM head
    n = 8 * (512 * 64 * 20 + 3 * 512 * 1376) + 512 * 32000
    assert flops_per_step(cfg) == 8 * 256 * (6 * n + 12 * 8 * 256 * 8 * 64)
    arm = {"step_s_median": 2.0, "tokens_per_s": 1024.0, "model_flops_per_s": 5e10,
           "fraction_of_peak": 0.5, "compile_s": 3.0}
    r = {"experiment": "x", "backend": "cpu", "devices": 1, "llm_params": 5e7,
         "shape": {"d_model": 512, "n_layers": 8, "d_ffn": 1376, "n_heads": 8, "n_kv_heads": 2,
                   "head_dim": 64, "vocab_size": 32000, "batch": 8, "seq_len": 256,
                   "keep_k": 688},
         "predictor_params": 2e6, "predictor_fraction_of_llm": 0.04, "tokens_per_step": 2048,
         "timed_steps": 5, "warmup_steps": 1, "flops_per_step": 1e11, "flops_formula": "f",
         "xla_matmul_peak_flops": 1e11, "dense": arm, "ifp": arm, "ifp_over_dense_step_time": 1.0,
         "peer": {"skipped": "transformers peer skipped: torch not installed"}}
    text = format_report(r)
    assert "IFP / dense step time: 1.000" in text and "peer skipped" in text


def test_bench_ckpt_saves_checks_and_restores_on_disk_and_in_a_bucket():
    from ifp_jax.benchmarks.ckpt_bench import format_report, run_ckpt_bench
    result = run_ckpt_bench(0.004, storages=("disk", "bucket"), repeats=1)
    assert set(result["storages"]) == {"disk", "bucket"}
    for figures in result["storages"].values():
        assert figures["files"] > 0
        assert all(figures[k] > 0 for k in ("save_s", "record_s", "restore_s",
                                              "restore_verified_s"))
    report = format_report(result)
    assert "| disk |" in report and "| bucket |" in report and "bar:" in report
