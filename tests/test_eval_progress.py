"""Evaluation in batches: progress on stderr, batching that changes no result, and the time bound
data.eval_max_seconds (each task's first examples scored, the result marked partial).

A tiny soft-mode model with random params (no training: evaluation's bookkeeping is under test;
tests/test_generate.py checks its tokens against the full-recompute reference)."""

import io

import numpy as np
import pytest

from ifp_jax import sharding as shd
from ifp_jax.benchmarks.eval_bench import random_params
from ifp_jax.config import ConfigError, apply_overrides, replace
from ifp_jax.data import tasks
from ifp_jax.eval.evaluate import evaluate, round_robin_order
from ifp_jax.eval.progress import EvalProgress
from ifp_jax.train.state import build_model
from tests.helpers import tiny_config

TASKS = ["ifp_skill_add", "ifp_skill_reverse"]


@pytest.fixture(scope="module")
def run():
    cfg = tiny_config()
    tasks.register_all(cfg.data)
    model = build_model(cfg)
    mesh = shd.make_mesh(cfg.mesh)
    return cfg, model, random_params(model, cfg, mesh), mesh


def _evaluate(run, batch_size, **data):
    cfg, model, params, mesh = run
    cfg = replace(cfg, data=replace(cfg.data, **data))
    return evaluate(model, params, cfg, mesh, task_names=TASKS, batch_size=batch_size,
                    num_samples=8)


def test_round_robin_order_takes_every_tasks_next_example_in_turn():
    np.testing.assert_array_equal(round_robin_order([3, 1, 2]), [0, 3, 4, 1, 5, 2])


def test_batches_of_any_size_give_the_same_result(run):
    """One batch of 16 rows vs 6 batches of 3 (the last padded): the same predictions, exact
    match and masks, in the same task-major order."""
    whole, split = _evaluate(run, 256), _evaluate(run, 3)
    assert whole.samples == split.samples and whole.per_task == split.per_task
    np.testing.assert_array_equal(whole.kept, split.kept)
    np.testing.assert_array_equal(whole.task_of, [0] * 8 + [1] * 8)
    assert whole.examples == split.examples == {name: 8 for name in TASKS}
    assert not whole.partial and not split.partial


def test_time_bound_scores_each_tasks_first_examples_and_says_partial(run, capsys):
    """A bound already past when the first batch ends: that batch alone is scored (2 examples
    of each task, round-robin), with the predictions the whole evaluation makes for them;
    progress names the examples done out of the total."""
    bounded = _evaluate(run, 4, eval_max_seconds=1e-9)
    err = capsys.readouterr().err
    assert "[eval] exact match, 2 tasks: 4/16 examples" in err, err
    assert bounded.partial and bounded.examples == {name: 2 for name in TASKS}
    whole = _evaluate(run, 256)
    for name in TASKS:
        assert bounded.samples[name] == whole.samples[name][:2]
        assert bounded.per_task[name] == np.mean([t == p for _, t, p in whole.samples[name][:2]])
    np.testing.assert_array_equal(bounded.task_of, [0, 0, 1, 1])
    np.testing.assert_array_equal(bounded.kept, whole.kept[[0, 1, 8, 9]])


def test_a_negative_time_bound_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="data.eval_max_seconds"):
        apply_overrides(tiny_config(), ["data.eval_max_seconds=-1"])


def test_progress_lines_off_a_terminal_count_rate_and_eta():
    out = io.StringIO()
    with EvalProgress("exact match, 2 tasks", 10, stream=out, every_seconds=0.0) as progress:
        progress.advance(4)
        progress.advance(6)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines  # one per batch, but the last batch's is the final line
    assert lines[0].startswith("[eval] exact match, 2 tasks: 4/10 examples | ")
    assert "ex/s | ETA " in lines[0]
    assert lines[1].startswith("[eval] exact match, 2 tasks: 10/10 examples | ")
    assert "| took 0m0" in lines[1]
