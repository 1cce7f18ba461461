"""The train step compiled ahead of time from abstract inputs (no batch, no arrays needed).

The loop and `ifp compile` share this path: the state's shapes and shardings come from
`state.state_layout`, the batch's from `batch_layout`, and `jax.jit(...).lower(...).compile()`
runs before the first batch is read. On a TPU topology description the same call yields the
per-chip memory and cost figures without a TPU.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh

from ifp_jax import batch as batch_lib
from ifp_jax import sharding as shd
from ifp_jax.config import ExperimentConfig
from ifp_jax.model.ifp import IFPModel
from ifp_jax.train.state import StateLayout
from ifp_jax.train.step import make_train_step


def batch_layout(cfg: ExperimentConfig, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """Global train-batch shapes/dtypes of the step's fields (ifp_jax/batch.py: the pipeline's,
    plus the teacher's arrays when distilling), batch dim over ('data', 'fsdp')."""
    shd.check_batch_divisible(mesh, cfg.data.global_batch_size)
    out = {}
    for f in batch_lib.step_fields(cfg):
        shape = (cfg.data.global_batch_size,) + batch_lib.example_shape(f, cfg)
        out[f.name] = jax.ShapeDtypeStruct(shape, f.dtype,
                                           sharding=shd.batch_sharding(mesh, len(shape)))
    return out


def compile_train_step(model: IFPModel, cfg: ExperimentConfig, tx: optax.GradientTransformation,
                       *, layout: StateLayout, mesh: Mesh, num_tasks: int) -> jax.stages.Compiled:
    """step(state, batch) -> (state, metrics), compiled for `mesh` with the state donated."""
    step = make_train_step(model, cfg, tx, num_tasks)
    batch = batch_layout(cfg, mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        jitted = jax.jit(step, in_shardings=(layout.shardings, {k: v.sharding for k, v in
                                                                 batch.items()}),
                         out_shardings=(layout.shardings, shd.replicated(mesh)),
                         donate_argnums=0)
        return jitted.lower(layout.abstract, batch).compile()
