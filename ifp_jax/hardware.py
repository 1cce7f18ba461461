"""Accelerator facts: TPU slice names -> topologies, per-device HBM and peak FLOP/s, and which
hardware family a running process is on (for an experiment's per-hardware defaults).

Slice names follow Cloud TPU: v5p-N and v4-N count TensorCores (2 per chip), v5e-N (alias
v5litepod-N) and v6e-N count chips. `jax.experimental.topologies` exposes v5p, v5e and v6e
chips as one device each (v5p as a megacore) and v4 chips as two devices (one per core).
"""

from __future__ import annotations

import dataclasses
import difflib
import re

from ifp_jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Family:
    name: str  # hardware family key used by experiments' per-hardware defaults
    topology_prefix: str  # get_topology_desc name prefix, e.g. 'v5p'
    cores_per_unit: int  # slice-name units per chip (2 where the name counts TensorCores)
    devices_per_chip: int  # JAX devices per chip in the topology description
    hbm_gib_per_device: float
    peak_bf16_tflops_per_device: float
    # chips -> physical topology (chip grid) of the standard slice shapes
    shapes: dict[int, str]


_3D_SHAPES = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_V4_SHAPES = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x2x8", 64: "2x4x8", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_2D_SHAPES = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}

FAMILIES = {
    "v5p": Family("v5p", "v5p", 2, 1, 95.0, 459.0, _3D_SHAPES),
    "v5e": Family("v5e", "v5e", 1, 1, 16.0, 197.0, _2D_SHAPES),
    "v4": Family("v4", "v4", 2, 2, 16.0, 137.5, _V4_SHAPES),
    "v6e": Family("v6e", "v6e", 1, 1, 32.0, 918.0, _2D_SHAPES),
}
ALIASES = {"v5litepod": "v5e", "v6litepod": "v6e"}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A named TPU slice, e.g. v5p-128."""

    name: str
    family: Family
    chips: int

    @property
    def topology_name(self) -> str:
        return f"{self.family.topology_prefix}:{self.family.shapes[self.chips]}"

    @property
    def num_devices(self) -> int:
        return self.chips * self.family.devices_per_chip


def parse_slice(name: str) -> Slice:
    """'v5p-128' / 'v5e-256' / 'v5litepod-16' / 'v4-64' / 'v6e-8' -> Slice, or a one-line error."""
    m = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip().lower())
    known = sorted(f"{f}-{c * FAMILIES[f].cores_per_unit}" for f in FAMILIES
                   for c in FAMILIES[f].shapes)
    if not m:
        raise ConfigError(f"unknown topology {name!r}: use a slice name like v5p-128, v5e-256, "
                          f"v4-64 or v6e-16")
    fam_name = ALIASES.get(m.group(1), m.group(1))
    if fam_name not in FAMILIES:
        raise ConfigError(f"unknown TPU generation in {name!r}: one of {sorted(FAMILIES)} "
                          f"(e.g. v5p-128, v5e-256)")
    family = FAMILIES[fam_name]
    units = int(m.group(2))
    chips, rem = divmod(units, family.cores_per_unit)
    if rem or chips not in family.shapes:
        sizes = ", ".join(f"{fam_name}-{c * family.cores_per_unit}" for c in family.shapes)
        close = difflib.get_close_matches(name, known, n=1)
        raise ConfigError(f"no standard {fam_name} slice {name!r}"
                          f"{f' (did you mean {close[0]}?)' if close else ''}; sizes: {sizes}")
    return Slice(name=f"{fam_name}-{units}", family=family, chips=chips)


def family_of_device(device) -> str | None:
    """Hardware family ('v5p', 'v5e', 'v4', 'v6e', 'gpu') of a JAX device, None on CPU."""
    if device.platform == "gpu":
        return "gpu"
    if device.platform != "tpu":
        return None
    kind = device.device_kind.lower()
    for key, fam in (("v6 lite", "v6e"), ("v6e", "v6e"), ("v5 lite", "v5e"), ("v5e", "v5e"),
                     ("v5p", "v5p"), ("v5", "v5p"), ("v4", "v4")):
        if key in kind:
            return fam
    return None
