"""The sparsity predictor: a small decoder reads the prompt; an MLP head scores every FFN unit.

The score comes from the final hidden state of the LAST REAL prompt token. Prompts are right-
padded with 0; positions count real tokens only and padding sits in its own attention segment,
so adding padding anywhere never changes the scores (a predictor that reads padding silently
ignores the prompt: docs/method.md#known-pitfalls).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ifp_jax.config import PredictorConfig
from ifp_jax.model.decoder import Decoder

_ACTIVATIONS = {"gelu": nn.gelu, "relu": nn.relu, "silu": nn.silu, "tanh": jnp.tanh}


class HeadOut(nn.Module):
    """h [B, H] -> scores [B, L, F] with kernel [H, L, F] and bias [L, F].

    The kernel is the predictor's largest tensor (H * L * F: 176M at H=128 for a 9B source), so
    its unit axis is 'head_mlp', sharded over fsdp x tensor rather than replicated.
    """

    n_layers: int
    d_ffn: int

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        hidden = h.shape[-1]
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.normal(stddev=hidden ** -0.5),
            ("predictor_hidden", "layers", "head_mlp")),
            (hidden, self.n_layers, self.d_ffn), jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(
            nn.initializers.zeros, ("layers", "mlp")), (self.n_layers, self.d_ffn), jnp.float32)
        return jnp.einsum("bh,hlf->blf", h, kernel) + bias


class Predictor(nn.Module):
    """prompt_tokens [B, P] (0 = padding) -> scores [B, n_layers_out, d_ffn_out] f32."""

    cfg: PredictorConfig
    n_layers_out: int
    d_ffn_out: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, prompt_tokens: jax.Array) -> jax.Array:
        real = (prompt_tokens != 0).astype(jnp.int32)  # [B, P]
        positions = jnp.maximum(jnp.cumsum(real, axis=1) - 1, 0)
        hidden = Decoder(self.cfg.backbone, self.dtype, name="backbone")(
            prompt_tokens, positions=positions, segment_ids=real, return_hidden=True)
        p = prompt_tokens.shape[1]
        last = (p - 1) - jnp.argmax(real[:, ::-1], axis=1)  # index of the last real token
        h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]  # [B, D]
        h = nn.Dense(self.cfg.head_hidden, dtype=jnp.float32, param_dtype=jnp.float32,
                     kernel_init=nn.with_logical_partitioning(
                         nn.initializers.lecun_normal(), ("embed", "predictor_hidden")),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                            ("predictor_hidden",)),
                     name="head_in")(h.astype(jnp.float32))
        h = _ACTIVATIONS[self.cfg.head_activation](h)
        head_out = HeadOut(self.n_layers_out, self.d_ffn_out, name="head_out")
        scores = head_out(h)
        return nn.with_logical_constraint(scores, ("batch", "layers", "mlp"))
