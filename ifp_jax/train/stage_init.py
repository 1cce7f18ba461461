"""Stage chaining: a run's LLM and/or predictor initialised from other runs (params only, no
optimizer state) or from `ifp import-hf` dirs; also how a distillation teacher is read."""

from __future__ import annotations

from typing import Any

import jax

from ifp_jax.config import ConfigError, ExperimentConfig
from ifp_jax.hf import imported
from ifp_jax.train.runs import open_run
from ifp_jax.train.metrics import print_primary


def _graft(params: dict, source: dict, key: str, origin: str) -> dict:
    """Returns params with sub-tree `key` taken from `source`, after checking shapes match."""
    mine = jax.tree_util.tree_map(lambda x: x.shape, params[key])
    theirs = jax.tree_util.tree_map(lambda x: x.shape, source[key])
    if mine != theirs:
        raise ConfigError(f"{origin}: its '{key}' parameters have other shapes than this "
                          f"experiment's; use a source run with the same {key} config")
    return {**params, key: source[key]}


def source_params(workdir: str, mesh, like: Any = None) -> dict:
    """Params only (no optimizer state) of another run's latest checkpoint, on `mesh`; for an
    `ifp import-hf` dir, its decoder params placed like the decoder tree `like`."""
    if imported.is_import_dir(workdir):
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
        return imported.restore_import_params(workdir, abstract)
    return open_run(workdir, mesh=mesh, hint="train that stage first").params


def stage_init(cfg: ExperimentConfig, mesh):
    """params_override for create_state: LLM and/or predictor from other runs (params only)
    or from import dirs (the LLM, or the predictor's backbone; its head stays fresh)."""
    if not (cfg.train.init_llm_from or cfg.train.init_predictor_from):
        return None

    def override(params):
        if cfg.train.init_llm_from:
            path, origin = cfg.train.init_llm_from, f"train.init_llm_from={cfg.train.init_llm_from}"
            src = ({"decoder": source_params(path, mesh, params["decoder"])}
                   if imported.is_import_dir(path) else source_params(path, mesh))
            params = _graft(params, src, "decoder", origin)
            print_primary(f"[ifp] LLM initialised from {path}")
        if cfg.train.init_predictor_from:
            path = cfg.train.init_predictor_from
            origin = f"train.init_predictor_from={path}"
            if imported.is_import_dir(path):
                backbone = source_params(path, mesh, params["predictor"]["backbone"])
                params = {**params, "predictor": _graft(params["predictor"],
                                                        {"backbone": backbone}, "backbone", origin)}
            else:
                src = source_params(path, mesh)
                params = _graft(params, src, "predictor", origin)
                params = _graft(params, src, "static_scores", origin)
            print_primary(f"[ifp] predictor initialised from {path}")
        return params

    # The sub-trees the override replaces: create_state never materialises their random init
    # (at 135M the LLM's random weights were a second copy beside the restored ones).
    override.replaces = replaced_paths(cfg)
    return override


def replaced_paths(cfg: ExperimentConfig) -> tuple[tuple[str, ...], ...]:
    """Paths (key tuples) of the params sub-trees `stage_init`'s override replaces."""
    found = [("decoder",)] if cfg.train.init_llm_from else []
    if imported.is_import_dir(cfg.train.init_predictor_from):
        found.append(("predictor", "backbone"))
    elif cfg.train.init_predictor_from:
        found += [("predictor",), ("static_scores",)]
    return tuple(found)
