"""A model sharded over 8 virtual CPU devices (data x tensor) computes what 1 device computes."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from ifp_jax import sharding as shd
from ifp_jax.config import ConfigError, MeshConfig, replace
from ifp_jax.data import pipeline, tasks
from ifp_jax.train.optim import make_optimizer
from ifp_jax.train.state import build_model, create_state, state_layout
from ifp_jax.train.step import STEP_KEYS, make_train_step
from tests.helpers import tiny_config


def _one_step(cfg, batch_np):
    mesh = shd.make_mesh(cfg.mesh)
    model = build_model(cfg)
    tx = make_optimizer(cfg.optimizer, cfg.train.steps)
    layout = state_layout(model, cfg, tx, mesh)
    state = create_state(model, cfg, tx, layout=layout, mesh=mesh)
    init_params = jax.device_get(state.params)
    step = make_train_step(model, cfg, tx, num_tasks=int(batch_np["task_id"].max()) + 1)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        shardings = {k: shd.batch_sharding(mesh, v.ndim) for k, v in batch_np.items()}
        batch = {k: jax.device_put(v, shardings[k]) for k, v in batch_np.items()}
        logits = jax.jit(lambda p, b: model.apply({"params": p}, b, mode="soft", temperature=0.5,
                                                  train=True).logits)(state.params, batch)
        new_state, metrics = jax.jit(step, in_shardings=(layout.shardings, shardings),
                                     out_shardings=(layout.shardings, None))(state, batch)
    # The FFN kernels really are split over the tensor axis on the sharded mesh.
    mlp_shardings = [x.sharding for x in jax.tree_util.tree_leaves(new_state.params["decoder"])]
    return (init_params, np.asarray(logits), jax.device_get(new_state.params),
            float(metrics["loss"].compute()), mlp_shardings)


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (virtual) devices")
def test_sharded_matches_single_device():
    cfg1 = tiny_config(mesh=MeshConfig(data=1, fsdp=1, tensor=1))
    cfg8 = replace(cfg1, mesh=MeshConfig(data=4, fsdp=1, tensor=2))
    tasks.register_all(cfg1.data, cfg1.predictor.max_prompt_len)
    batch = next(pipeline.make_train_batches(cfg1.data, cfg1.predictor.max_prompt_len))
    batch = {k: batch[k] for k in STEP_KEYS}
    p1, logits1, new1, loss1, _ = _one_step(cfg1, batch)
    p8, logits8, new8, loss8, shardings8 = _one_step(cfg8, batch)
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p8)):
        np.testing.assert_array_equal(a, b)  # same init regardless of layout
    np.testing.assert_allclose(logits8, logits1, atol=2e-5, rtol=1e-5)
    assert abs(loss8 - loss1) < 1e-5
    for a, b in zip(jax.tree_util.tree_leaves(new1), jax.tree_util.tree_leaves(new8)):
        np.testing.assert_allclose(b, a, atol=2e-5, rtol=1e-4)
    assert any("tensor" in str(s.spec) for s in shardings8)


def test_mesh_errors_are_clear():
    with pytest.raises(ConfigError, match="at most one"):
        shd.make_mesh(MeshConfig(data=-1, fsdp=-1))
    with pytest.raises(ConfigError, match="needs 16 devices"):
        shd.make_mesh(MeshConfig(data=16, fsdp=1, tensor=1))
    with pytest.raises(ConfigError, match="not divisible"):
        shd.make_mesh(MeshConfig(data=-1, fsdp=1, tensor=3))
    with pytest.raises(ConfigError, match=r"^mesh.dcn_data=2 but the \d+ devices are in 1 "
                                          r"slice\(s\); set mesh.dcn_data=1$"):
        shd.make_mesh(MeshConfig(dcn_data=2))


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (virtual) devices")
def test_cpu_mesh_keeps_jax_device_order_and_subsets():
    """On the CPU mesh_utils keeps jax's order: process-contiguous batch rows, as before."""
    mesh = shd.make_mesh(MeshConfig(data=-1, fsdp=2, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()]
    assert shd.process_batch_rows(shd.batch_sharding(mesh, 1), 16) == (0, 16)
    assert mesh.devices.size == 8
    assert shd.make_mesh(MeshConfig(data=2, fsdp=1, tensor=1)).devices.size == 2  # a subset
