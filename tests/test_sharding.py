"""A model sharded over 8 virtual CPU devices (data x tensor, data x fsdp, data x fsdp x tensor)
computes what 1 device computes.

The 8 devices are set by tests/conftest.py before JAX initialises (XLA_FLAGS
--xla_force_host_platform_device_count=8), so these tests run in the pytest process.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ifp_jax import sharding as shd
from ifp_jax.config import ConfigError, MeshConfig, replace
from ifp_jax.data import pipeline, tasks
from ifp_jax.train.compiled import compile_train_step
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


# fsdp numerics: one train step's loss and gradient, and a few steps of training, on meshes with
# fsdp=2 (and tensor=2) equal the 1-device run's. float32 throughout (compute_dtype auto = f32 on
# CPU); the meshes change only the order of the reductions (over the batch, the fsdp-split embed
# dim, the tensor-split heads/mlp), so results differ by a few rounding steps. Measured on the
# 2-core VM: losses at most 1e-6 apart (2 ulp of 5.59), gradients at most 4.4e-7 x the leaf's
# largest |g|. The bounds are ~10x that: a real error (a shard missing from a reduction, a
# per-shard instead of global normalisation) moves them by orders of magnitude more.
# Params after the steps get a looser bound in units of the learning rate: AdamW's update is
# lr * m / (sqrt(v) + 1e-8), so where |g| is near 1e-8 a rounding-level change of g changes that
# element's update by up to lr (measured: 3 of 2048 elements of the predictor head 1.4% of lr
# apart, everything else below 1e-6).
FSDP_STEPS = 4
LOSS_ATOL = 1e-5
GRAD_TOL = 5e-6  # x max |g| of the leaf (elementwise relative error is meaningless near 0)
PARAM_ATOL_LR = 0.1  # x the learning rate


def _recording(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner`, with the last step's gradient kept in the optimizer state (first element)."""
    def init(params):
        return jax.tree_util.tree_map(jnp.zeros_like, params), inner.init(params)

    def update(grads, state, params=None):
        updates, inner_state = inner.update(grads, state[1], params)
        return updates, (grads, inner_state)

    return optax.GradientTransformation(init, update)


def _train_steps(cfg, batches, num_tasks):
    """Runs the loop's compiled step (train/compiled.py) on `cfg.mesh`: losses, the first step's
    gradient, the final params, and the params' shardings."""
    mesh = shd.make_mesh(cfg.mesh)
    model = build_model(cfg)
    tx = _recording(make_optimizer(cfg.optimizer, cfg.train.steps))
    layout = state_layout(model, cfg, tx, mesh)
    state = create_state(model, cfg, tx, layout=layout, mesh=mesh)
    step_fn = compile_train_step(model, cfg, tx, layout=layout, mesh=mesh, num_tasks=num_tasks)
    losses, first_grads = [], None
    for host in batches:
        batch = {k: jax.device_put(v, shd.batch_sharding(mesh, v.ndim)) for k, v in host.items()}
        state, metrics = step_fn(state, batch)
        losses.append(float(metrics["loss"].compute()))
        if first_grads is None:
            first_grads = jax.device_get(state.opt_state[0])
    specs = [str(x.sharding.spec) for x in jax.tree_util.tree_leaves(state.params)]
    return losses, first_grads, jax.device_get(state.params), specs


@pytest.fixture(scope="module")
def fsdp_reference():
    assert len(jax.devices()) >= 8, "tests/conftest.py sets 8 virtual CPU devices"
    cfg = tiny_config(steps=FSDP_STEPS, mesh=MeshConfig(data=1, fsdp=1, tensor=1))
    cfg = replace(cfg, optimizer=dataclasses.replace(cfg.optimizer, warmup_steps=0))  # step 1 moves
    tasks.register_all(cfg.data, cfg.predictor.max_prompt_len)
    it = pipeline.make_train_batches(cfg.data, cfg.predictor.max_prompt_len)
    batches = [{k: b[k] for k in STEP_KEYS} for b, _ in zip(it, range(FSDP_STEPS))]
    num_tasks = len(it.task_names)
    return cfg, batches, num_tasks, _train_steps(cfg, batches, num_tasks)


@pytest.mark.parametrize("mesh", [MeshConfig(data=-1, fsdp=2, tensor=1),
                                  MeshConfig(data=-1, fsdp=2, tensor=2)],
                         ids=["data4xfsdp2", "data2xfsdp2xtensor2"])
def test_fsdp_mesh_matches_single_device_loss_gradients_and_training(fsdp_reference, mesh):
    cfg1, batches, num_tasks, (losses1, grads1, params1, _) = fsdp_reference
    losses, grads, params, specs = _train_steps(replace(cfg1, mesh=mesh), batches, num_tasks)
    assert any("fsdp" in s for s in specs), specs  # the params really are split over fsdp
    if mesh.tensor > 1:
        assert any("tensor" in s for s in specs), specs
    # One step: the loss, and the gradient of every leaf.
    assert abs(losses[0] - losses1[0]) < LOSS_ATOL, (losses[0], losses1[0])
    flat1 = jax.tree_util.tree_flatten_with_path(grads1)[0]
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    assert [p for p, _ in flat] == [p for p, _ in flat1]
    nonzero, worst = 0, 0.0
    for (path, g1), (_, g) in zip(flat1, flat):
        g1, g = np.asarray(g1), np.asarray(g)
        assert g.shape == g1.shape
        scale = float(np.abs(g1).max())
        nonzero += scale > 0  # zero: static_scores (the static baseline's, unused in soft mode)
        err = float(np.abs(g - g1).max())
        worst = max(worst, err / scale if scale else err)
        assert err <= GRAD_TOL * scale, (f"gradient of {jax.tree_util.keystr(path)}: max error "
                                         f"{err:.3g} > {GRAD_TOL} x max |g| {scale:.3g}")
    assert nonzero >= len(flat1) - 1 > 20, (nonzero, len(flat1))
    print(f"worst gradient error {worst:.3g} x max |g|")
    # A few steps of training: every step's loss and the final params.
    print(f"loss diffs {np.abs(np.subtract(losses, losses1)).tolist()}")
    np.testing.assert_allclose(losses, losses1, rtol=0, atol=LOSS_ATOL)
    assert losses1[-1] < losses1[0]  # the steps did train
    for (path, p1), p in zip(jax.tree_util.tree_flatten_with_path(params1)[0],
                             jax.tree_util.tree_leaves(params)):
        lr = max(cfg1.optimizer.lr_llm, cfg1.optimizer.lr_predictor)
        np.testing.assert_allclose(np.asarray(p), np.asarray(p1), rtol=0,
                                   atol=PARAM_ATOL_LR * lr, err_msg=jax.tree_util.keystr(path))


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
