"""Named experiments: modules in this package register functions that return an ExperimentConfig.

    @register("tiny_multiskill")
    def tiny_multiskill() -> ExperimentConfig: ...

`get("name")` imports the config modules (`CONFIG_MODULES`) once, then looks the name up; an
unknown name fails with the closest registered one. The drivers beside them (`demo.py`,
`compare.py`, `random_hf_llama.py`) are programs that train and evaluate; they are imported only
by the commands that run them, so `ifp list` never pays for JAX or TensorFlow.

An experiment may carry per-hardware defaults, `register(name, hardware={"v5p": [overrides],
...})`: `get(name, hardware="v5p")` applies that family's `section.key=value` overrides to the
config (mesh shape, remat policy, micro-batching, compute dtype); the user's own CLI overrides
come after them, so every default stays overridable.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable

from ifp_jax.config import ConfigError, ExperimentConfig, apply_overrides

_REGISTRY: dict[str, Callable[[], ExperimentConfig]] = {}
_HARDWARE: dict[str, dict[str, list[str]]] = {}
_loaded = False
# The modules that register experiments (each imports only ifp_jax.config).
CONFIG_MODULES = ("tiny", "facts", "text", "paper", "smollm2")


def register(name: str, hardware: dict[str, list[str]] | None = None):
    def wrap(fn: Callable[[], ExperimentConfig]):
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"experiment '{name}' is registered twice")
        _REGISTRY[name] = fn
        _HARDWARE[name] = dict(hardware or {})
        return fn
    return wrap


def hardware_defaults(name: str) -> dict[str, list[str]]:
    """{family: overrides} registered with experiment `name` (empty if none)."""
    _load_all()
    return _HARDWARE.get(name, {})


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for name in CONFIG_MODULES:
            importlib.import_module(f"{__name__}.{name}")
        _loaded = True


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get(name: str, hardware: str | None = None) -> ExperimentConfig:
    """The experiment's config, with `hardware`'s registered defaults applied (if any)."""
    _load_all()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1, cutoff=0.4)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(sorted(_REGISTRY))}"
        raise ConfigError(f"unknown experiment '{name}': {hint}")
    cfg = _REGISTRY[name]()
    if cfg.name != name:
        raise ValueError(f"experiment '{name}' returned a config named '{cfg.name}'")
    if hardware and hardware in _HARDWARE[name]:
        cfg = apply_overrides(cfg, _HARDWARE[name][hardware])
    return cfg
