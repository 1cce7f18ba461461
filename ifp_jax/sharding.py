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
from jax.experimental import mesh_utils
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
    """A ('data', 'fsdp', 'tensor') mesh laid out on the hardware's physical topology.

    mesh.data / fsdp / tensor are sizes within one slice (one may be -1: fill with the rest).
    On TPU, `mesh_utils.create_device_mesh` maps them onto the torus (neighbouring chips on the
    innermost axes); elsewhere the device order is jax's. With mesh.dcn_data = S > 1 the devices
    form S slices (`create_hybrid_device_mesh`): 'data' becomes S x mesh.data, slice i holding
    data rows [i * mesh.data, (i + 1) * mesh.data), so only data-parallel reductions cross the
    slower data-centre network.
    """
    devices = list(jax.devices() if devices is None else devices)
    slices = _slices(devices, cfg.dcn_data)
    per_slice = len(slices[0])
    ici = _ici_sizes(cfg, per_slice)
    needed = int(np.prod(ici))
    if needed < per_slice:
        # Debugging on a subset (e.g. mesh.data=1 on a multi-device host) is allowed, but said.
        if jax.process_index() == 0:
            print(f"[ifp] mesh uses {needed * len(slices)} of {len(devices)} devices "
                  f"(set one mesh axis to -1 to use all)", file=sys.stderr)
        slices = [s[:needed] for s in slices]
    return Mesh(_device_array(ici, slices), MESH_AXES)


def _slices(devices: list, dcn_data: int) -> list[list]:
    """The devices grouped by TPU slice (`slice_index`; other platforms are one slice), checked
    against mesh.dcn_data."""
    by_slice: dict[int, list] = {}
    for d in devices:
        by_slice.setdefault(getattr(d, "slice_index", 0), []).append(d)
    found = len(by_slice)
    if dcn_data < 1 or found != dcn_data:
        raise ConfigError(f"mesh.dcn_data={dcn_data} but the {len(devices)} devices are in "
                          f"{found} slice(s); set mesh.dcn_data={found}")
    slices = [by_slice[k] for k in sorted(by_slice)]
    if len({len(s) for s in slices}) > 1:
        raise ConfigError(f"the slices hold {sorted({len(s) for s in slices})} devices; "
                          f"multislice needs slices of one size (same TPU type and topology)")
    return slices


def _ici_sizes(cfg: MeshConfig, per_slice: int) -> list[int]:
    """[data, fsdp, tensor] within one slice of `per_slice` devices, the -1 axis filled."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    where = " per slice" if cfg.dcn_data > 1 else ""
    if sizes.count(-1) > 1:
        raise ConfigError("at most one of mesh.data / mesh.fsdp / mesh.tensor may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if per_slice % known:
            raise ConfigError(f"{per_slice} devices{where} are not divisible by the fixed mesh "
                              f"axes (product {known}); change mesh.fsdp / mesh.tensor")
        sizes[sizes.index(-1)] = per_slice // known
    needed = int(np.prod(sizes))
    if needed > per_slice:
        raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {needed} devices{where} "
                          f"but {per_slice} are available; set one mesh axis to -1")
    return sizes


def _device_array(ici: list[int], slices: list[list]) -> np.ndarray:
    """Devices as an array [len(slices) * data, fsdp, tensor], in physical-topology order.

    allow_split_physical_axes: without it create_device_mesh refuses any axis size that is not
    a product of whole torus dimensions (e.g. fsdp=32 on v5p's 4x4x4); split axes cost some
    bandwidth but are still laid out on the torus. Where it cannot lay out the devices at all
    (v4's two devices per chip, a subset that is no cuboid), jax's device order is used.
    """
    try:
        if len(slices) == 1:
            return mesh_utils.create_device_mesh(ici, slices[0], allow_split_physical_axes=True)
        return mesh_utils.create_hybrid_device_mesh(
            ici, (len(slices), 1, 1), [d for s in slices for d in s],
            allow_split_physical_axes=True)
    except (AssertionError, NotImplementedError, ValueError) as e:
        if jax.process_index() == 0:
            reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
            print(f"[ifp] mesh in jax's device order (no topology-aware layout: {reason})",
                  file=sys.stderr)
        return np.concatenate([np.asarray(s).reshape(ici) for s in slices], axis=0)


def describe_mesh(mesh: Mesh, *, dcn_data: int = 1, first: int = 8) -> list[str]:
    """How `mesh` lies on the hardware, for `ifp compile`: axis sizes (dcn x ici with several
    slices), hosts and devices per host, and the first devices in mesh order with their
    physical coordinates (TPU) as id:(x,y,z)@host."""
    devices = list(mesh.devices.flat)
    sizes = " x ".join(f"{a} {n}" for a, n in mesh.shape.items())
    ici = (mesh.shape["data"] // dcn_data, mesh.shape["fsdp"], mesh.shape["tensor"])
    split = f" = dcn {(dcn_data, 1, 1)} x ici {ici}" if dcn_data > 1 else ""
    hosts: dict[int, int] = {}
    for d in devices:
        hosts[d.process_index] = hosts.get(d.process_index, 0) + 1
    per_host = sorted(set(hosts.values()))
    per_host_text = str(per_host[0]) if len(per_host) == 1 else str(per_host)
    lines = [f"mesh {sizes}{split}: {dcn_data} slice(s), {len(hosts)} host(s), "
             f"{per_host_text} devices per host"]

    def where(d) -> str:
        coords = getattr(d, "coords", None)
        at = "(" + ",".join(map(str, coords)) + ")" if coords is not None else ""
        return f"{d.id}:{at}@{d.process_index}"

    lines.append(f"devices in mesh order (id:(x,y,z)@host): "
                 f"{' '.join(where(d) for d in devices[:first])} ...")
    if dcn_data > 1:
        starts = [where(mesh.devices[i * ici[0], 0, 0]) for i in range(dcn_data)]
        lines.append(f"slice i starts at mesh[i * {ici[0]}, 0, 0]: {' '.join(starts)}")
    return lines


def logical_sharding(mesh: Mesh, logical_specs):
    """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_RULES)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharding of a host batch array: leading dim over ('data', 'fsdp'), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def check_batch_divisible(mesh: Mesh, global_batch: int) -> None:
    """Raises a one-line ConfigError if the batch rows do not split over ('data', 'fsdp'): e.g.
    256 sequences on 2 x v5e-256 with fsdp over each slice (512 shards)."""
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % ways:
        larger = -(-global_batch // ways) * ways
        raise ConfigError(f"data.global_batch_size={global_batch} does not split over mesh data x "
                          f"fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']}; use a multiple of "
                          f"{ways} (e.g. data.global_batch_size={larger}) or move devices to "
                          f"mesh.tensor")


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


def process_batch_rows(sharding: NamedSharding, global_batch: int,
                       process_index: int | None = None) -> tuple[int, int]:
    """[start, stop) rows of each global batch that this process feeds.

    Each process feeds one contiguous block of the pipeline's global batch, as many rows as its
    devices hold under `sharding`; `jax.make_array_from_process_local_data` places them on those
    devices. Where a process's devices hold one block of the batch (jax's device order, CPU,
    GPU) that block is the answer. A topology-aware TPU mesh can scatter a host's devices along
    the batch (v5p-128 with fsdp=64: host 0's four chips hold rows 0, 4, 16 and 20 of 64);
    the blocks then go to the processes in the order of their first row, so the device array
    holds the global batch's rows in another order: the same rows, the same mean loss and
    gradient. Processes whose devices hold the same rows (replicas) feed the same block.
    """
    me = jax.process_index() if process_index is None else process_index
    held: dict[int, set] = {}
    for device, index in sharding.devices_indices_map((global_batch,)).items():
        rows = range(*index[0].indices(global_batch))
        held.setdefault(device.process_index, set()).update(rows)
    groups = sorted({frozenset(rows) for rows in held.values()}, key=min)
    if sum(map(len, groups)) != len(frozenset().union(*groups)):
        raise ConfigError(f"processes hold overlapping but different batch rows under mesh "
                          f"{dict(sharding.mesh.shape)}; change mesh.tensor so that the "
                          f"replicas of a batch shard are whole processes")
    mine = frozenset(held[me])
    start = sum(len(g) for g in groups[:groups.index(mine)])
    return start, start + len(mine)
