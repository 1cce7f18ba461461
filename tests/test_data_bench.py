"""`ifp bench data` on a small generated corpus: the report's figures are measured (examples,
tokens, memory including the worker), a complete preparation is reused, and a stale one in the
bench's own cache is rebuilt rather than refused."""

import json
import os

import pytest

from ifp_jax.benchmarks import data_bench
from ifp_jax.data.prepare import PLAN


def test_bench_data_measures_the_loader_and_reuses_or_rebuilds_its_cache(tmp_path):
    corpus, cache = str(tmp_path / "corpus"), str(tmp_path / "prepared")
    first = data_bench.run_data_bench(0.002, corpus, cache, workers=(0, 1), batches=20,
                                      step_tokens_per_s=1000.0, own_cache=True)
    assert first["prepared_examples"] > 2000
    assert [r["workers"] for r in first["loader"]] == [0, 1]
    for r in first["loader"]:
        # Tokens as the train step counts them: batch x sequence length.
        assert r["examples_per_s"] > 0 and r["tokens_per_s"] == pytest.approx(
            r["examples_per_s"] * data_bench.SEQ_LEN)
    inline, worker = first["loader"]
    # The worker's memory is counted (apart from processes earlier tests left behind).
    assert inline["workers_rss_mib"] == 0 and worker["workers_rss_mib"] > 50, (inline, worker)
    assert first["loader_over_step"] == pytest.approx(
        max(r["tokens_per_s"] for r in first["loader"]) / 1000)
    assert "fastest loader / train step" in data_bench.format_report(first)

    # A stale preparation (another fingerprint) in the bench's cache is removed and rebuilt.
    with open(os.path.join(cache, PLAN)) as f:
        plan = json.load(f)
    plan["fingerprint"]["seq_len"] = 999
    with open(os.path.join(cache, PLAN), "w") as f:
        json.dump(plan, f)
    again = data_bench.run_data_bench(0.002, corpus, cache, workers=(0,), batches=5,
                                      step_tokens_per_s=1000.0, own_cache=True)
    assert again["prepared_examples"] == first["prepared_examples"]
    with open(os.path.join(cache, PLAN)) as f:
        assert json.load(f)["fingerprint"]["seq_len"] == data_bench.SEQ_LEN
