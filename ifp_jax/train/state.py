"""Train state: its abstract shapes and shardings (one place), its creation directly into those
shardings, and compute-dtype resolution.

`state_layout` is the single source of the state's shapes and shardings: the loop compiles the
step from it before the first batch, checkpoints restore into it (on any mesh), and
`ifp compile` lowers the same step from it for a TPU topology without allocating anything.

Parameters carry logical axis names (flax `with_logical_partitioning`); the optimizer state
inherits each parameter's sharding by tree-path suffix, so AdamW moments are sharded like their
parameters without depending on optax's internal state layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from ifp_jax import batch as batch_lib
from ifp_jax import sharding as shd
from ifp_jax.config import ExperimentConfig
from ifp_jax.model.attention import splash_supported
from ifp_jax.model.decoder import scan_unroll
from ifp_jax.model.ifp import IFPModel


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: Any
    opt_state: Any


def resolve_compute_dtype(name: str, platform: str | None = None) -> jnp.dtype:
    """'auto' is bf16 on TPU/GPU and f32 on CPU (bf16 matmuls are slower than f32 on CPU).

    `platform` defaults to this process's backend; `ifp compile` passes the target's ('tpu').
    """
    if name == "auto":
        platform = platform or jax.default_backend()
        return jnp.bfloat16 if platform in ("tpu", "gpu", "cuda", "rocm") else jnp.float32
    return jnp.dtype(name)


def _resolve_for_platform(model_cfg, seq_len: int, platform: str):
    """'auto' attention kernel and layer-loop unrolling -> the choice for `platform`."""
    model_cfg = dataclasses.replace(model_cfg, scan_unroll=scan_unroll(model_cfg, platform))
    if model_cfg.attention != "auto":
        return model_cfg
    use_splash = platform == "tpu" and splash_supported(seq_len)
    return dataclasses.replace(model_cfg, attention="splash" if use_splash else "xla")


def build_model(cfg: ExperimentConfig, platform: str | None = None) -> IFPModel:
    """The IFPModel for `platform` (default: this process's backend; `ifp compile` passes the
    target's): compute dtype, attention kernel and layer-loop unrolling resolved for it."""
    platform = platform or jax.default_backend()
    predictor = dataclasses.replace(cfg.predictor, backbone=_resolve_for_platform(
        cfg.predictor.backbone, cfg.predictor.max_prompt_len, platform))
    return IFPModel(model_cfg=_resolve_for_platform(cfg.model, cfg.data.seq_len, platform),
                    predictor_cfg=predictor, pruning_cfg=cfg.pruning,
                    dtype=resolve_compute_dtype(cfg.train.compute_dtype, platform))


def dummy_batch(cfg: ExperimentConfig, batch_size: int = 1) -> dict:
    """A placeholder batch of the fields init reads (ifp_jax/batch.py), for init and AOT
    compilation."""
    return batch_lib.placeholder(cfg, batch_size, "init")


def _init_params_boxed(model: IFPModel, cfg: ExperimentConfig, rng: jax.Array):
    return model.init(rng, dummy_batch(cfg), mode="soft", temperature=1.0, train=False)["params"]


def _traced_params(model: IFPModel, cfg: ExperimentConfig) -> tuple[Any, Any]:
    """(logical PartitionSpecs, abstract unboxed params) from one abstract trace of init: no
    arrays are allocated, and the model is traced once (about 1 s at the demo size)."""
    boxed = jax.eval_shape(lambda r: _init_params_boxed(model, cfg, r), jax.random.key(0))
    specs = nn.get_partition_spec(boxed)
    shd.check_rules_cover(specs)
    return specs, nn.meta.unbox(boxed)


def param_logical_specs(model: IFPModel, cfg: ExperimentConfig) -> Any:
    """PartitionSpecs of logical names for every parameter (no arrays are allocated)."""
    return _traced_params(model, cfg)[0]


def _path_key(path) -> tuple:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _opt_state_specs(abstract_opt_state: Any, param_specs: Any, abstract_params: Any) -> Any:
    """Gives each optimizer-state leaf the spec of the parameter whose path is its path's suffix."""
    by_path = {}
    for (path, spec), leaf in zip(
            jax.tree_util.tree_flatten_with_path(
                param_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))[0],
            jax.tree_util.tree_leaves(abstract_params)):
        by_path[_path_key(path)] = (spec, leaf.shape)

    def spec_for(path, leaf):
        key = _path_key(path)
        for start in range(len(key)):
            hit = by_path.get(key[start:])
            if hit is not None and hit[1] == leaf.shape:
                return hit[0]
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(spec_for, abstract_opt_state)


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Abstract shapes and shardings of the train state on one mesh."""

    abstract: TrainState  # of jax.ShapeDtypeStruct carrying .sharding
    shardings: TrainState  # of NamedSharding
    logical_specs: TrainState  # of logical PartitionSpec


def params_layout(model: IFPModel, cfg: ExperimentConfig, mesh: Mesh) -> Any:
    """Abstract params (ShapeDtypeStruct with .sharding) alone: what a params-only restore
    (stage chaining, eval, export) reads, without the optimizer state's shapes."""
    specs, abstract = _traced_params(model, cfg)
    shardings = shd.logical_sharding(mesh, specs)
    shd.check_divisible(abstract, shardings)
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def state_layout(model: IFPModel, cfg: ExperimentConfig, tx: optax.GradientTransformation,
                 mesh: Mesh) -> StateLayout:
    """The train state's abstract shapes, shardings and logical specs on `mesh`."""
    param_specs, abstract_params = _traced_params(model, cfg)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    specs = TrainState(step=PartitionSpec(), params=param_specs,
                       opt_state=_opt_state_specs(abstract_opt, param_specs, abstract_params))
    shardings = shd.logical_sharding(mesh, specs)
    shd.check_divisible(abstract_params, shardings.params)
    abstract = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                   opt_state=abstract_opt),
        shardings)
    return StateLayout(abstract=abstract, shardings=shardings, logical_specs=specs)


def create_state(model: IFPModel, cfg: ExperimentConfig, tx: optax.GradientTransformation, *,
                 layout: StateLayout, mesh: Mesh,
                 params_override: Callable[[Any], Any] | None = None) -> TrainState:
    """Initialises the state directly into its shardings (no host-side full copy).

    `params_override(params) -> params` may replace sub-trees (stage chaining) before the
    optimizer state is built from them. The sub-trees it lists in its `replaces` attribute
    (key paths) are not initialised: it gets them as abstract arrays (ShapeDtypeStruct with
    .sharding) and must return real ones.
    """
    replaced = tuple(getattr(params_override, "replaces", ()))

    def init(rng):
        params = nn.meta.unbox(_init_params_boxed(model, cfg, rng))
        return _without(params, replaced)  # XLA drops the init of what is not returned

    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        params = jax.jit(init, out_shardings=_without(layout.shardings.params, replaced))(
            jax.random.key(cfg.train.seed))
    if params_override is not None:
        for path in replaced:
            params = with_path(params, path, at_path(layout.abstract.params, path))
        params = params_override(params)
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(params)):
            raise ValueError(f"params_override left abstract leaves in {replaced}")
        params = jax.device_put(params, layout.shardings.params)
    opt_state = jax.jit(tx.init, out_shardings=layout.shardings.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), layout.shardings.step)
    return TrainState(step=step, params=params, opt_state=opt_state)


def at_path(tree: dict, path: tuple[str, ...]) -> Any:
    """The sub-tree of nested dict `tree` at key path `path`."""
    for key in path:
        tree = tree[key]
    return tree


def with_path(tree: dict, path: tuple[str, ...], value: Any) -> dict:
    """A copy of nested dict `tree` with `value` at `path` (the other branches shared)."""
    head, *rest = path
    return {**tree, head: with_path(tree[head], tuple(rest), value) if rest else value}


def _without(tree: dict, paths: tuple[tuple[str, ...], ...]) -> dict:
    """A copy of nested dict `tree` without the sub-trees at `paths`."""
    for path in paths:
        head, *rest = path
        tree = ({**tree, head: _without(tree[head], (tuple(rest),))} if rest
                else {k: v for k, v in tree.items() if k != head})
    return tree
