"""Experiment name + overrides -> ExperimentConfig, for every command that takes an experiment."""

from __future__ import annotations

# Hardware families with registered per-experiment defaults (`--hardware`).
HARDWARE = ("v5p", "v5e", "v4", "v6e", "gpu")


def registered(experiment: str, overrides: list[str], hardware: str | None = None):
    """Experiment config -> its defaults for `hardware` (if registered) -> the user's overrides."""
    from ifp_jax import experiments
    from ifp_jax.config import apply_overrides
    return apply_overrides(experiments.get(experiment, hardware=hardware), overrides)


def resolve(experiment: str, overrides: list[str], hardware: str | None = None):
    """`registered`, then the architecture of an imported HF model named by train.init_*_from
    (hf/imported.py): the config a run trains with."""
    cfg = registered(experiment, overrides, hardware)
    if cfg.train.init_llm_from or cfg.train.init_predictor_from:
        from ifp_jax.hf.imported import adopt_imports  # JAX/orbax only when a source is named
        cfg = adopt_imports(cfg)
    return cfg


def optional_name(name: str | None, overrides: list[str], default: str | None = None):
    """(name, overrides) of a command whose first positional (an experiment or comparison) is
    optional: with only overrides given, argparse puts the first of them in the name's slot."""
    if name is not None and "=" in name:
        return default, [name] + list(overrides)
    return (default if name is None else name), list(overrides)


def this_hardware(flag: str | None) -> str | None:
    """The hardware family to take defaults for: the flag, else the first device's (starts JAX)."""
    if flag:
        return flag
    import jax
    from ifp_jax.hardware import family_of_device
    return family_of_device(jax.devices()[0])
