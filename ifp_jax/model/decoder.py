"""The Llama-family decoder: embeddings, N masked-FFN blocks (scanned, optionally remat), LM head."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ifp_jax.config import ModelConfig
from ifp_jax.model.attention import causal_segment_mask
from ifp_jax.model.layers import DecoderBlock, Projection, RMSNorm, rope_cos_sin

_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def scan_unroll(cfg: ModelConfig, platform: str | None = None) -> int:
    """Layers per iteration of the layer scan: cfg.scan_unroll, or for 0 (auto) every layer on
    CPU without remat and 1 otherwise (`platform` defaults to this process's backend).

    Remat keeps the loop rolled: unrolled, XLA:CPU schedules the recomputation so that it saves
    little (4 layers, d 256, batch 8 x 256, remat 'full': 109 MB of temporaries rolled, 341 MB
    unrolled, 366 MB without remat)."""
    if cfg.scan_unroll:
        return min(cfg.scan_unroll, cfg.n_layers)
    cpu = (platform or jax.default_backend()) == "cpu"
    return cfg.n_layers if cpu and cfg.remat_policy == "none" else 1


def _block_class(cfg: ModelConfig):
    if cfg.remat_policy == "none":
        return DecoderBlock
    return nn.remat(DecoderBlock, policy=_REMAT_POLICIES[cfg.remat_policy],
                    prevent_cse=not cfg.scan_layers)


class Decoder(nn.Module):
    """tokens [B, T] (+ FFN mask [B, L, F]) -> logits [B, T, V] f32, or final hidden [B, T, D]."""

    cfg: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, mask: jax.Array | None = None,
                 positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 return_hidden: bool = False) -> jax.Array:
        c = self.cfg
        b, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        embed = nn.Embed(c.padded_vocab_size, c.d_model, dtype=self.dtype, param_dtype=jnp.float32,
                         embedding_init=nn.with_logical_partitioning(
                             nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
                         name="embed_tokens")
        x = embed(tokens)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        cos, sin = rope_cos_sin(positions, c.head_dim, c.rope_theta)
        # The xla kernel takes a [B, 1, T, T] mask, built once for all layers; splash takes ids.
        attn_mask = None if c.attention == "splash" else causal_segment_mask(segment_ids)
        if mask is not None:
            mask = nn.with_logical_constraint(mask, ("batch", "layers", "mlp"))
        block = _block_class(c)
        if c.scan_layers:
            # The mask's layer axis is scanned with the layer params; a None mask is broadcast.
            layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                             in_axes=(0 if mask is not None else nn.broadcast, nn.broadcast,
                                      nn.broadcast, nn.broadcast, nn.broadcast),
                             length=c.n_layers, unroll=scan_unroll(c),
                             metadata_params={nn.PARTITION_NAME: "layers"})
            layer_mask = None if mask is None else jnp.swapaxes(mask, 0, 1)  # [L, B, F]
            x, _ = layers(c, self.dtype, name="layers")(x, layer_mask, cos, sin, segment_ids,
                                                        attn_mask)
        else:
            for i in range(c.n_layers):
                row = None if mask is None else mask[:, i]
                x, _ = block(c, self.dtype, name=f"layers_{i}")(x, row, cos, sin, segment_ids,
                                                                attn_mask)
        x = RMSNorm(c.norm_eps, self.dtype, name="norm")(x)
        if return_hidden:
            return x
        if c.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = Projection((c.padded_vocab_size,), ("embed", "vocab"), dtype=self.dtype,
                                init_std=c.init_std, name="lm_head")(x)
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        return logits[..., :c.vocab_size].astype(jnp.float32)
