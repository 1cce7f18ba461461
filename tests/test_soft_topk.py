"""SoftTopK: the constraint, exact-k masks, implicit gradient vs finite differences, invariances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifp_jax.model.soft_topk import balance_loss, compute_mask, soft_topk, topk_indicator

F, K = 512, 128


def _scores(seed, shape=(3, 2, F), scale=1.0):
    return scale * jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("temperature", [1.0, 0.1, 0.01])
@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_sum_is_k_and_lambda_in_unit_interval(temperature, scale):
    lam = soft_topk(_scores(0, scale=scale), K, temperature, 40)
    assert lam.dtype == jnp.float32
    np.testing.assert_allclose(lam.sum(-1), K, atol=1e-4 * K / 128 + 1e-4)
    assert float(lam.min()) >= 0.0 and float(lam.max()) <= 1.0


@pytest.mark.parametrize("hard", [False, True])
def test_mask_has_exactly_k_nonzeros_at_the_top_scores(hard):
    z = _scores(1)
    mask, lam = compute_mask(z, K, 0.1, 40, hard=hard)
    np.testing.assert_array_equal((mask > 0).sum(-1), K)
    # The kept units are the k highest scores (lambda is monotone in the score).
    top = jax.lax.top_k(z, K)[1]
    np.testing.assert_array_equal(np.sort(np.asarray(jnp.nonzero(mask[0, 0])[0])),
                                  np.sort(np.asarray(top[0, 0])))
    if hard:
        assert set(np.unique(np.asarray(mask))) == {0.0, 1.0}
    else:
        np.testing.assert_allclose(mask, lam * (mask > 0))


def test_topk_indicator_exactly_k_even_with_ties():
    ind = topk_indicator(jnp.zeros((4, F)), K)
    np.testing.assert_array_equal(ind.sum(-1), K)


def test_shift_invariance_of_values_and_gradient():
    z = _scores(2)
    lam = soft_topk(z, K, 0.5, 40)
    np.testing.assert_allclose(soft_topk(z + 3.7, K, 0.5, 40), lam, atol=2e-5)
    # Adding a constant to a row changes nothing, so the gradient sums to zero along each row.
    w = jax.random.normal(jax.random.key(3), z.shape)
    g = jax.grad(lambda s: (soft_topk(s, K, 0.5, 40) * w).sum())(z)
    np.testing.assert_allclose(g.sum(-1), 0.0, atol=1e-4)


def test_k_equal_to_f_keeps_everything():
    np.testing.assert_array_equal(soft_topk(_scores(4, (2, 16)), 16, 0.1, 40), 1.0)


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_gradient_matches_finite_differences(temperature):
    with jax.enable_x64(True):
        z = jax.random.normal(jax.random.key(5), (2, 64), jnp.float64)
        u = jax.random.normal(jax.random.key(6), z.shape, jnp.float64)  # output cotangent
        v = jax.random.normal(jax.random.key(7), z.shape, jnp.float64)  # input direction
        # The implementation computes in f32; this checks the analytic formula in f64.
        f = lambda s: _lam64(s, 16, temperature)
        g = jax.grad(lambda s: (f(s) * u).sum())(z)
        h = 1e-5
        fd = ((f(z + h * v) - f(z - h * v)) * u).sum() / (2 * h)
        np.testing.assert_allclose(float((g * v).sum()), float(fd), rtol=1e-6, atol=1e-8)
        # And the f32 implementation's vjp agrees with the f64 one.
        g32 = jax.grad(lambda s: (soft_topk(s, 16, temperature, 60) * u.astype(jnp.float32)).sum())(
            z.astype(jnp.float32))
        np.testing.assert_allclose(g32, g, atol=2e-4)


def _lam64(z, k, eps):
    """f64 sigmoid SoftTopK with an exact (bisection to machine precision) threshold, using the
    same custom_vjp rule via soft_topk's backward on f64 residuals."""
    from ifp_jax.model import soft_topk as st

    @jax.custom_vjp
    def lam_fn(s):
        return _fwd(s)[0]

    def _fwd(s):
        lo, hi = s.min(-1, keepdims=True) - 50.0, s.max(-1, keepdims=True) + 50.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            big = jax.nn.sigmoid((s - mid) / eps).sum(-1, keepdims=True) > k
            lo, hi = jnp.where(big, mid, lo), jnp.where(big, hi, mid)
        lam = jax.nn.sigmoid((s - 0.5 * (lo + hi)) / eps)
        return lam, (lam, jnp.asarray(eps, s.dtype))

    def _bwd(res, cot):
        return (st._soft_topk_bwd(k, 0, res, cot)[0],)

    lam_fn.defvjp(_fwd, _bwd)
    return lam_fn(z)


def test_balance_loss_is_one_when_balanced_and_larger_when_collapsed():
    b, l = 4, 2
    balanced = jnp.zeros((b, l, F)).at[jnp.arange(b)[:, None], :,
                                       jnp.arange(b)[:, None] * K + jnp.arange(K)].set(1.0)
    np.testing.assert_allclose(balance_loss(balanced, K), 1.0, rtol=1e-6)
    collapsed = jnp.zeros((b, l, F)).at[:, :, :K].set(1.0)
    np.testing.assert_allclose(balance_loss(collapsed, K), F / K, rtol=1e-6)
