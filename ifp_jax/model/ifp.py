"""IFPModel: predictor -> SoftTopK -> masked decoder, in one Flax module.

Parameters: {'decoder': LLM, 'predictor': sparsity predictor, 'static_scores': [L, F]}.
`static_scores` are the static-pruning baseline's learned, input-independent scores; they are
always created so that every mode shares one parameter tree (stages chain by sub-tree).

Modes (PruningConfig.mode, or overridden per call):
  dense   no mask (the source model; also what 'k = F' means)
  soft    predictor scores -> SoftTopK; train mask lambda * TopK, eval mask per `eval_mask`
  hard    predictor scores -> 0/1 TopK of the scores (no gradient to the predictor)
  static  static_scores broadcast over the batch -> SoftTopK, like soft
  given   `given_mask` [B, L, F] supplied by the caller (e.g. the mask chosen once per prompt)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ifp_jax.config import ModelConfig, PredictorConfig, PruningConfig
from ifp_jax.model.decoder import Decoder
from ifp_jax.model.predictor import Predictor
from ifp_jax.model.soft_topk import compute_mask, topk_indicator

MODES = ("dense", "soft", "hard", "static", "given")


class IFPOutput(NamedTuple):
    logits: jax.Array  # [B, T, V] f32
    mask: jax.Array | None  # [B, L, F] the mask the decoder used (None in dense mode)
    lam: jax.Array | None  # [B, L, F] SoftTopK lambda (soft / static only)
    scores: jax.Array | None  # [B, L, F] selection scores (soft / hard / static)
    hidden: jax.Array | None = None  # [B, T, D] final-norm hidden (return_hidden=True; no logits)


class IFPModel(nn.Module):
    model_cfg: ModelConfig
    predictor_cfg: PredictorConfig
    pruning_cfg: PruningConfig
    dtype: Any = jnp.float32

    def setup(self):
        c = self.model_cfg
        self.decoder = Decoder(c, self.dtype)
        self.predictor = Predictor(self.predictor_cfg, c.n_layers, c.d_ffn, self.dtype)
        self.static_scores = self.param(
            "static_scores",
            nn.with_logical_partitioning(nn.initializers.normal(0.01), ("layers", "mlp")),
            (c.n_layers, c.d_ffn), jnp.float32)

    def select(self, batch: dict, *, mode: str, temperature, train: bool):
        """Returns (mask, lam, scores) for the batch's prompts; mask None in dense mode."""
        p = self.pruning_cfg
        if mode == "dense":
            return None, None, None
        if mode == "hard":
            scores = self.predictor(batch["predictor_tokens"])
            return topk_indicator(jax.lax.stop_gradient(scores), p.keep_k), None, scores
        if mode == "soft":
            scores = self.predictor(batch["predictor_tokens"])
        elif mode == "static":
            b = batch["decoder_input_tokens"].shape[0]
            scores = jnp.broadcast_to(self.static_scores, (b,) + self.static_scores.shape)
        else:
            raise ValueError(f"unknown mask mode {mode!r}; expected one of {MODES}")
        hard = (not train) and p.eval_mask == "hard"
        mask, lam = compute_mask(scores, p.keep_k, temperature, p.bisection_iters, hard)
        return mask, lam, scores

    def __call__(self, batch: dict, *, mode: str, temperature=1.0, train: bool = False,
                 given_mask: jax.Array | None = None, return_hidden: bool = False) -> IFPOutput:
        """batch: predictor_tokens [B, P], decoder_input_tokens [B, T] (+ optional
        decoder_positions / decoder_segment_ids [B, T] for packing).

        `return_hidden=True` returns the final hidden states instead of logits (the loss then
        projects them chunk by chunk: train/loss.py)."""
        if self.is_initializing():  # create every sub-tree whatever the mode
            self.predictor(batch["predictor_tokens"])
        if mode == "given":
            if given_mask is None:
                raise ValueError("mode='given' needs given_mask [B, L, F]")
            mask, lam, scores = given_mask, None, None
        else:
            mask, lam, scores = self.select(batch, mode=mode, temperature=temperature,
                                            train=train)
        out = self.decoder(batch["decoder_input_tokens"], mask, batch.get("decoder_positions"),
                           batch.get("decoder_segment_ids"), return_hidden=return_hidden)
        if return_hidden:
            return IFPOutput(logits=None, mask=mask, lam=lam, scores=scores, hidden=out)
        return IFPOutput(logits=out, mask=mask, lam=lam, scores=scores)
