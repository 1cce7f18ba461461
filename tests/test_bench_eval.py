"""`ifp bench eval` end to end at the tiny size (figures are not asserted: speed lives in the
benchmark's printout, never in unit tests)."""

import json

from ifp_jax.benchmarks.eval_bench import format_report
from ifp_jax.commands import main as cli


def test_eval_bench_times_two_evaluations_of_every_example(capsys):
    cli.main(["bench", "eval", "tiny_multiskill", "data.eval_examples_per_task=2",
              "--batch-size", "8", "--mask", "dense", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["mode"] == "dense" and r["tasks"] == 11 and r["examples"] == 22
    assert r["first_s"] > 0 and r["second_s"] > 0
    assert r["examples_per_s"] == r["examples"] / r["second_s"]
    assert "second evaluation" in format_report(r)
