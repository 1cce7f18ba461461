"""Opening a trained run: `open_run(dir) -> Run(cfg, model, mesh, params, step)`, for every reader
of a workdir (`ifp eval`, `ifp export`, `ifp generate`, `ifp train` chaining from an earlier
stage, the distillation teacher). Params only: no optimizer state is read.

Before the restore, the newest checkpoint's stored shapes (orbax metadata: no array is read) are
compared with the params the config describes. Without this, an edited config.json or checkpoints
copied from another run made every step "unreadable" and ended in "no checkpoint", with orbax's
noise.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ifp_jax import workdir as workdir_lib
from ifp_jax.config import ConfigError, ExperimentConfig, load_workdir_config
from ifp_jax.storage import paths


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run, ready to use: its config, model, mesh and latest params."""

    cfg: ExperimentConfig
    model: Any  # IFPModel
    mesh: Any  # jax.sharding.Mesh
    params: Any  # IFPModel params, placed on `mesh`
    step: int  # the checkpoint they come from


def open_run(workdir: str, *, cfg: ExperimentConfig | None = None, mesh: Any = None,
             hint: str = "run `ifp train` there first") -> Run:
    """The run in `workdir` at its latest readable checkpoint. cfg: the workdir's config.json
    unless given (e.g. with another eval mask); mesh: from cfg.mesh unless given. A missing
    config or checkpoint, or a config the checkpoints do not match, is a one-line ConfigError
    (`hint` names the fix for a missing checkpoint)."""
    from ifp_jax import sharding as shd
    from ifp_jax.train.state import build_model, params_layout
    cfg = cfg or load_workdir_config(workdir)
    mesh = mesh or shd.make_mesh(cfg.mesh)
    model = build_model(cfg)
    step, params = restore_params(workdir, params_layout(model, cfg, mesh), hint)
    return Run(cfg=cfg, model=model, mesh=mesh, params=params, step=step)


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
    """The saved steps in a checkpoints directory, newest first."""
    return sorted((int(n) for n in paths.listdir(directory) if n.isdigit()), reverse=True)


def check_matches_config(workdir: str, abstract_params: Any) -> None:
    """One-line ConfigError if the newest checkpoint with readable metadata lacks a parameter
    the workdir's config.json describes, or holds it with another shape."""
    directory = workdir_lib.checkpoints_dir(workdir)
    steps = _steps(directory)
    want = {k: tuple(v.shape) for k, v in _flat(abstract_params).items()}
    for step in steps:
        stored = _stored_params(paths.join(directory, str(step), "state"))
        if stored is None:
            continue
        fix = (f"{workdir_lib.config_path(workdir)} does not match the checkpoints (edited, "
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
    directory = workdir_lib.checkpoints_dir(workdir)
    if not _steps(directory):  # before orbax, which would create the directory
        raise ConfigError(f"no checkpoint in {directory}: {hint}")
    check_matches_config(workdir, abstract_params)
    return ckpt_lib.restore_latest_params(workdir, abstract_params, hint)
