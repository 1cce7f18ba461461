"""Device mesh and logical-axis sharding rules.

Every parameter and key activation is annotated with logical axis names (flax.linen
`with_logical_partitioning` / `with_logical_constraint`). This one table maps them to the mesh
axes ('data', 'fsdp', 'tensor'). A logical name missing from the table is an error, not a silent
replication (see `check_rules_cover`).
"""

from __future__ import annotations

import sys

import numpy as np
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import flax.linen as nn

from ifp_jax.config import ConfigError, MeshConfig

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None for replicated).
LOGICAL_RULES: tuple[tuple[str, object], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("predictor_hidden", None),
    ("head_mlp", ("fsdp", "tensor")),  # the predictor head's unit axis (model/predictor.py)
    ("norm", None),
)
KNOWN_LOGICAL_NAMES = frozenset(name for name, _ in LOGICAL_RULES)


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    """Builds a ('data', 'fsdp', 'tensor') mesh; one axis may be -1 (fill with the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sizes.count(-1) > 1:
        raise ConfigError("at most one of mesh.data / mesh.fsdp / mesh.tensor may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ConfigError(f"{len(devices)} devices are not divisible by the fixed mesh axes "
                              f"(product {known}); change mesh.fsdp / mesh.tensor")
        sizes[sizes.index(-1)] = len(devices) // known
    needed = int(np.prod(sizes))
    if needed > len(devices):
        raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {needed} devices "
                          f"but {len(devices)} are available; set one mesh axis to -1")
    if needed < len(devices):
        # Debugging on a subset (e.g. mesh.data=1 on a multi-device host) is allowed, but said.
        if jax.process_index() == 0:
            print(f"[ifp] mesh uses {needed} of {len(devices)} devices "
                  f"(set one mesh axis to -1 to use all)", file=sys.stderr)
        devices = devices[:needed]
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_sharding(mesh: Mesh, logical_specs):
    """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_RULES)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharding of a host batch array: leading dim over ('data', 'fsdp'), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_rules_cover(logical_specs) -> None:
    """Raises if any logical axis name used by the model has no rule (would replicate silently)."""
    names = set()
    for spec in jax.tree_util.tree_leaves(
            logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)):
        if isinstance(spec, PartitionSpec):
            for n in spec:
                if n is None:
                    continue
                names.update(n if isinstance(n, tuple) else (n,))
    missing = names - KNOWN_LOGICAL_NAMES
    if missing:
        raise ValueError(f"logical axis names {sorted(missing)} have no rule in LOGICAL_RULES")


def check_divisible(abstract_tree, shardings) -> None:
    """Raises ConfigError naming the first array whose dims do not split evenly over the mesh."""
    flat = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
    for (path, leaf), sharding in zip(flat, jax.tree_util.tree_leaves(shardings)):
        mesh = sharding.mesh
        for dim, axes in zip(leaf.shape, sharding.spec):
            if axes is None:
                continue
            ways = int(np.prod([mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,))]))
            if dim % ways:
                name = "/".join(str(getattr(k, "key", k)) for k in path)
                raise ConfigError(
                    f"parameter {name} {tuple(leaf.shape)}: a dim of {dim} cannot be split "
                    f"{ways} ways over mesh axes {axes}; change the model size or the mesh "
                    f"(e.g. mesh.tensor / mesh.fsdp)")


def process_batch_rows(sharding: NamedSharding, global_batch: int) -> tuple[int, int]:
    """[start, stop) rows of a global batch that this process's devices hold under `sharding`.

    Each process feeds only these rows (`jax.make_array_from_process_local_data`). They must be
    one contiguous block, which holds for meshes built by `make_mesh` (devices in process order).
    """
    idx = sharding.addressable_devices_indices_map((global_batch,))
    spans = sorted({(s[0].start or 0, global_batch if s[0].stop is None else s[0].stop)
                    for s in idx.values()})
    start, stop = spans[0][0], spans[-1][1]
    covered = sum(b - a for a, b in spans)
    if covered != stop - start:
        raise ConfigError(f"this process's devices hold non-contiguous batch rows {spans}; "
                          f"order the mesh so each process's devices are adjacent on 'data'")
    return start, stop
