"""Which FFN units one text (a prompt, or a task's instruction) keeps: the predictor runs once.

`select_units` returns, per layer, the k kept unit indices (ascending) and their scales: 1 for
the 0/1 mask, lambda for the lambda mask (folded into the rows of W_down on export, so the small
dense model computes exactly what the masked model computes).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ifp_jax.config import ConfigError, ExperimentConfig
from ifp_jax.model.ifp import IFPModel


@dataclasses.dataclass(frozen=True)
class Selection:
    keep_idx: np.ndarray  # [L, k] int32, ascending per layer
    scale: np.ndarray  # [L, k] f32: 1 (hard mask) or lambda (lambda mask)
    mode: str  # the pruning mode that chose it (soft / hard / static / dense)
    eval_mask: str  # 'hard' or 'lambda'

    def dense_mask(self, d_ffn: int) -> np.ndarray:
        """[L, F] f32: scale at the kept units, 0 elsewhere (what the masked LLM multiplies by)."""
        out = np.zeros((self.keep_idx.shape[0], d_ffn), np.float32)
        np.put_along_axis(out, self.keep_idx, self.scale, axis=1)
        return out


class Selector:
    """The run's selection as one jitted function, compiled once and reused for every text."""

    def __init__(self, model: IFPModel, cfg: ExperimentConfig, eval_mask: str | None = None):
        self.cfg, self.mode = cfg, cfg.pruning.mode
        self.eval_mask = eval_mask or cfg.pruning.eval_mask
        if self.mode == "given":
            raise ConfigError("a run in pruning.mode=given has no selection of its own; export "
                              "a run trained in soft, hard or static mode")
        pruning = dataclasses.replace(cfg.pruning, eval_mask=self.eval_mask)
        sel_model = IFPModel(cfg.model, cfg.predictor, pruning, model.dtype)
        k, temperature = cfg.pruning.keep_k, cfg.pruning.temperature_end

        def run(params, tokens):
            batch = {"predictor_tokens": tokens,
                     "decoder_input_tokens": jnp.zeros((1, 1), jnp.int32)}
            mask, lam, scores = sel_model.apply({"params": params}, batch, mode=self.mode,
                                                temperature=temperature, train=False,
                                                method=IFPModel.select)
            # The kept units are the masked model's: the top k of lambda (soft / static; the
            # same top_k the mask was built from, so XLA computes it once) or of the scores
            # (hard). A kept unit whose lambda underflowed to 0 stays, with scale 0.
            _, idx = jax.lax.top_k((scores if lam is None else lam)[0], k)
            idx = jnp.sort(idx, axis=-1)
            return idx, jnp.take_along_axis(mask[0], idx, axis=-1)

        self._run = jax.jit(run)

    def __call__(self, params, tokens: np.ndarray) -> Selection:
        """params: IFPModel params; tokens [1, P] (`predictor_tokens`) -> Selection."""
        f, n_layers = self.cfg.model.d_ffn, self.cfg.model.n_layers
        if self.mode == "dense":  # the whole source model
            idx = np.broadcast_to(np.arange(f, dtype=np.int32), (n_layers, f)).copy()
            return Selection(idx, np.ones((n_layers, f), np.float32), self.mode, "hard")
        # NumPy straight into the jit: jnp.asarray first is a dispatch of its own (~0.1 ms).
        idx, scale = jax.device_get(self._run(params, np.asarray(tokens, np.int32)))
        return Selection(np.asarray(idx, np.int32), np.asarray(scale, np.float32), self.mode,
                         self.eval_mask)


def select_units(model: IFPModel, params, cfg: ExperimentConfig, tokens: np.ndarray,
                 eval_mask: str | None = None) -> Selection:
    """Runs the run's selection once on predictor `tokens` [1, P] -> Selection.

    Mode 'dense' keeps every unit (the whole source model is exported).
    """
    return Selector(model, cfg, eval_mask)(params, tokens)
