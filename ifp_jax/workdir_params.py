"""A trained run's params for the commands that read a workdir (`ifp eval`, `ifp export`,
`ifp generate`, and `ifp train` chaining from an earlier stage), checked against the workdir's
config.json first.

The newest checkpoint's stored shapes (orbax metadata: no array is read) are compared with the
params the config describes. Without this, an edited config.json or checkpoints copied from
another run made every step "unreadable" and ended in "no checkpoint", with orbax's noise.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ifp_jax.config import WORKDIR_CONFIG, ConfigError


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}/").items()}
    return {prefix.rstrip("/"): tree}


def _stored_params(state_dir: str) -> dict[str, tuple] | None:
    """{path: shape} of a checkpoint's params, or None if its metadata cannot be read (the
    restore then reports the step and tries an older one)."""
    import orbax.checkpoint as ocp
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns that a state item has no step metadata file
    try:
        tree = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata.tree
        return {k: tuple(v.shape) for k, v in _flat(tree["params"]).items()}
    except Exception:  # noqa: BLE001 - any unreadable metadata is the restore's to report
        return None
    finally:
        absl.setLevel(level)


def _steps(directory: str) -> list[int]:
    """The saved steps under DIR/checkpoints, newest first."""
    if not os.path.isdir(directory):
        return []
    return sorted((int(n) for n in os.listdir(directory) if n.isdigit()), reverse=True)


def check_matches_config(workdir: str, abstract_params: Any) -> None:
    """One-line ConfigError if the newest checkpoint with readable metadata lacks a parameter
    the workdir's config.json describes, or holds it with another shape."""
    directory = os.path.join(workdir, "checkpoints")
    steps = _steps(directory)
    want = {k: tuple(v.shape) for k, v in _flat(abstract_params).items()}
    for step in steps:
        stored = _stored_params(os.path.join(directory, str(step), "state"))
        if stored is None:
            continue
        fix = (f"{os.path.join(workdir, WORKDIR_CONFIG)} does not match the checkpoints (edited, "
               f"or checkpoints of another run); restore the config the run was trained with")
        missing = [k for k in want if k not in stored]
        if missing:
            raise ConfigError(f"checkpoint step {step} in {directory} has no parameter "
                              f"{missing[0]}: {fix}")
        wrong = [k for k in want if stored[k] != want[k]]
        if wrong:
            raise ConfigError(f"checkpoint step {step} in {directory} holds {wrong[0]} with shape "
                              f"{stored[wrong[0]]}, the config needs {want[wrong[0]]}: {fix}")
        return


def restore_params(workdir: str, abstract_params: Any,
                   hint: str = "run `ifp train` there first") -> tuple[int, Any]:
    """(step, params) of the workdir's latest readable checkpoint, after check_matches_config."""
    from ifp_jax.train import checkpoint as ckpt_lib
    directory = os.path.join(workdir, "checkpoints")
    if not _steps(directory):  # before orbax, which would create the directory
        raise ConfigError(f"no checkpoint in {directory}: {hint}")
    check_matches_config(workdir, abstract_params)
    return ckpt_lib.restore_latest_params(workdir, abstract_params, hint)
