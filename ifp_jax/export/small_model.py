"""The small dense model of a selection: the kept FFN rows/columns gathered out of the big one.

With the lambda mask the scales are folded into the rows of W_down, so
    small(x) == masked_big(x, mask = scale at keep_idx)   (up to float rounding)
and the small model is an ordinary Llama with intermediate size k.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ifp_jax.config import ModelConfig
from ifp_jax.model.layers import gather_mlp_units


def gather_small_decoder(decoder_params: dict, cfg: ModelConfig, keep_idx, scale=None
                         ) -> tuple[dict, ModelConfig]:
    """Decoder params (scan-stacked or per-layer) + keep_idx [L, k] (+ scale [L, k]) ->
    (params of the dense decoder with d_ffn = k, its ModelConfig). Works on numpy or jax arrays
    (jitted callers pass jax arrays; the exporter passes host numpy, gathered by NumPy: eager
    JAX ops would compile a dozen tiny programs, half a second of `ifp export`)."""
    k = keep_idx.shape[1]
    small_cfg = dataclasses.replace(cfg, d_ffn=k)
    out = dict(decoder_params)
    if cfg.scan_layers:
        layers = dict(out["layers"])
        xp = np if isinstance(keep_idx, np.ndarray) else jnp
        per_layer = [gather_mlp_units(jax.tree_util.tree_map(lambda a, i=i: a[i], layers["mlp"]),
                                      keep_idx[i], None if scale is None else scale[i])
                     for i in range(cfg.n_layers)]
        layers["mlp"] = jax.tree_util.tree_map(lambda *xs: xp.stack(xs), *per_layer)
        out["layers"] = layers
    else:
        for i in range(cfg.n_layers):
            layer = dict(out[f"layers_{i}"])
            layer["mlp"] = gather_mlp_units(layer["mlp"], keep_idx[i],
                                            None if scale is None else scale[i])
            out[f"layers_{i}"] = layer
    return out, small_cfg


def to_host(tree) -> dict:
    """Any params tree -> the same tree of float32 numpy arrays."""
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x), np.float32), tree)
