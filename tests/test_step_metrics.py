"""Typed metrics: each carries its own reduction, so splitting a batch into micro-batches changes
neither the loss nor the balance loss reported (it used to read grad_accum_steps times high)."""

import flax.linen as nn
import jax
import numpy as np

from ifp_jax import metric
from ifp_jax import sharding as shd
from ifp_jax.config import replace
from ifp_jax.data import pipeline, tasks
from ifp_jax.metric import Average, Sum
from ifp_jax.model.soft_topk import balance_loss
from ifp_jax.train.optim import make_optimizer
from ifp_jax.train.state import build_model, create_state, state_layout
from ifp_jax.train.step import STEP_KEYS, make_train_step
from tests.helpers import tiny_config


def test_average_and_sum_merge_then_compute():
    a = metric.merge(None, {"x": Average.of(2.0), "n": Sum(np.float32(3))})
    a = metric.merge(a, {"x": Average.of(4.0), "n": Sum(np.float32(1))})
    out = metric.compute(a)
    assert out == {"x": 3.0, "n": 4.0}
    vec = metric.compute({"t": Average(np.array([2.0, 0.0]), np.array([4.0, 0.0]))},
                         {"t": ["a", "b"]})
    assert vec == {"t/a": 0.5}  # no observations of 'b': left out, not 0


def test_micro_batching_changes_no_reported_metric():
    cfg1 = tiny_config()
    cfg2 = replace(cfg1, optimizer=replace(cfg1.optimizer, grad_accum_steps=2))
    tasks.register_all(cfg1.data, cfg1.predictor.max_prompt_len)
    host = next(pipeline.make_train_batches(cfg1.data, cfg1.predictor.max_prompt_len))
    batch = {k: host[k] for k in STEP_KEYS}
    mesh = shd.make_mesh(cfg1.mesh)
    model = build_model(cfg1)
    results = []
    for cfg in (cfg1, cfg2):
        tx = make_optimizer(cfg.optimizer, cfg.train.steps)
        layout = state_layout(model, cfg, tx, mesh)
        state = create_state(model, cfg, tx, layout=layout, mesh=mesh)
        with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
            _, m = jax.jit(make_train_step(model, cfg, tx, num_tasks=16))(state, batch)
        results.append(metric.compute(m))
    one, two = results
    assert abs(one["loss"] - two["loss"]) < 1e-5
    # Reference: the mean over the two halves of the balance loss of each half.
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        halves = []
        for part in (slice(0, 8), slice(8, 16)):
            out = model.apply({"params": state.params}, {k: v[part] for k, v in batch.items()},
                              mode="soft", temperature=1.0, train=True)
            halves.append(float(balance_loss(out.lam, cfg1.pruning.keep_k)))
    assert abs(two["balance_loss"] - np.mean(halves)) < 1e-5, (two["balance_loss"], halves)
    assert 0.9 < two["balance_loss"] < 3.0  # a mean of values >= 1, not a sum of two
    assert one["nonfinite_steps"] == two["nonfinite_steps"] == 0.0
