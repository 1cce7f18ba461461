"""The Pallas splash kernel (TPU's attention) computes what the xla path computes: run here in the
Pallas interpreter on CPU, causal GQA with two packed segments, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np

from ifp_jax.model.attention import causal_segment_mask, splash_local, xla_attention

B, T, H, HKV, D = 1, 128, 4, 2, 64


def test_splash_matches_xla_attention_values_and_gradients():
    r = np.random.RandomState(0)
    q, k, v = (jnp.asarray(r.randn(B, T, n, D).astype(np.float32)) for n in (H, HKV, HKV))
    seg = jnp.asarray(np.r_[np.ones(80), np.full(48, 2)].astype(np.int32))[None]  # 2 segments
    tr = lambda a: jnp.swapaxes(a, 1, 2)

    def via_xla(q, k, v):
        return xla_attention(q, k, v, causal_segment_mask(seg))

    def via_splash(q, k, v):
        return tr(splash_local(tr(q), tr(k), tr(v), seg, interpret=True))

    np.testing.assert_allclose(via_splash(q, k, v), via_xla(q, k, v), atol=2e-5, rtol=1e-5)
    w = jnp.asarray(r.randn(B, T, H, D).astype(np.float32))
    grads = [jax.grad(lambda *a: (f(*a) * w).sum(), argnums=(0, 1, 2))(q, k, v)
             for f in (via_splash, via_xla)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
