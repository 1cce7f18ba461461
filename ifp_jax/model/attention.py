"""Causal, segment-masked grouped-query attention kernels.

  xla     jax.nn.dot_product_attention with a [B, 1, T, T] mask: any backend; materialises the
          [B, H, T, T] scores (fine at short T; 1 GiB per example at T=4096, H=16, f32).
  splash  Pallas splash attention (TPU only): block-sparse causal kernel that never holds
          [T, T]; run per shard under jax.shard_map (batch over ('data','fsdp'), heads over
          'tensor'), GQA as the MQA kernel vmapped over KV heads.
`ModelConfig.attention='auto'` picks splash on TPU when the sequence tiles into its blocks and
xla elsewhere (train/state.py `build_model` resolves it for the target platform).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

SPLASH_BLOCK = 512


def causal_segment_mask(segment_ids: jax.Array) -> jax.Array:
    """[B, T] segment ids -> [B, 1, T, T] bool: causal and within-segment only."""
    t = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))[None]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (causal & same)[:, None]


def splash_supported(seq_len: int) -> bool:
    return seq_len % 128 == 0 and seq_len >= 128


def xla_attention(q, k, v, mask):
    """q [B, T, H, hd], k/v [B, T, Hkv, hd], mask [B, 1, T, T] -> [B, T, H, hd]."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


@functools.lru_cache(maxsize=None)
def _splash_kernel(seq_len: int, group: int, interpret: bool = False):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
    mask = sm.MultiHeadMask([sm.CausalMask((seq_len, seq_len)) for _ in range(group)])
    b = min(SPLASH_BLOCK, seq_len)
    sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                          block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    return sk.make_splash_mqa(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret)


def splash_local(q, k, v, segment_ids, interpret: bool = False):
    """One shard: q [B, H, T, hd], k/v [B, Hkv, T, hd], segment_ids [B, T] -> [B, H, T, hd].

    `interpret=True` runs the Pallas kernel in the interpreter (any backend; tests use it to
    check the kernel against the xla path on CPU)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    b, h, t, d = q.shape
    hkv = k.shape[1]
    kernel = _splash_kernel(t, h // hkv, interpret)
    q = (q * (d ** -0.5)).reshape(b, hkv, h // hkv, t, d)

    def one_example(qe, ke, ve, se):  # qe [Hkv, G, T, hd], ke/ve [Hkv, T, hd]
        seg = sk.SegmentIds(q=se, kv=se)
        return jax.vmap(lambda qq, kk, vv: kernel(qq, kk, vv, seg))(qe, ke, ve)

    return jax.vmap(one_example)(q, k, v, segment_ids).reshape(b, h, t, d)


def splash_attention(q, k, v, segment_ids):
    """q [B, T, H, hd], k/v [B, T, Hkv, hd], segment_ids [B, T] -> [B, T, H, hd] (TPU)."""
    mesh = jax.sharding.get_abstract_mesh()
    tr = lambda a: jnp.swapaxes(a, 1, 2)
    if mesh.empty:  # shape-only tracing outside a mesh (parameter init): any kernel will do
        return xla_attention(q, k, v, causal_segment_mask(segment_ids))
    spec = PartitionSpec(("data", "fsdp"), "tensor", None, None)
    local = jax.shard_map(splash_local, mesh=mesh, in_specs=(spec, spec, spec,
                                                              PartitionSpec(("data", "fsdp"), None)),
                          out_specs=spec, check_vma=False)
    return tr(local(tr(q), tr(k), tr(v), segment_ids.astype(jnp.int32)))
