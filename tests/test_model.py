"""Model: masked FFN == gathered FFN, predictor ignores padding, causality, modes, remat."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifp_jax.config import PruningConfig
from ifp_jax.model.decoder import Decoder
from ifp_jax.model.ifp import IFPModel
from ifp_jax.model.layers import MaskedMLP, gather_mlp_units
from ifp_jax.model.predictor import Predictor
from tests.helpers import TINY_MODEL, TINY_PREDICTOR

B, T, P, K = 3, 12, 16, 16


@functools.lru_cache(maxsize=None)
def jit(module, method="apply"):
    """Jitted module.apply / module.init (eager Flax dispatch is slow on CPU)."""
    return jax.jit(getattr(module, method), static_argnames=("mode", "train", "return_hidden"))


def _tokens(seed, shape, low=3):
    return jax.random.randint(jax.random.key(seed), shape, low, 259)


def _model(mode="soft", eval_mask="lambda", model_cfg=TINY_MODEL):
    return IFPModel(model_cfg, TINY_PREDICTOR,
                    PruningConfig(mode=mode, keep_k=K, eval_mask=eval_mask))


def _batch(seed=0):
    return {"predictor_tokens": _tokens(seed, (B, P)),
            "decoder_input_tokens": _tokens(seed + 1, (B, T))}


@pytest.fixture(scope="module")
def params():
    return nn.meta.unbox(jit(_model(), "init")(jax.random.key(0), _batch(), mode="soft")["params"])


@pytest.mark.parametrize("use_lambda", [False, True])
def test_hard_masked_ffn_equals_ffn_on_gathered_units(use_lambda):
    d, f = 32, 64
    x = jax.random.normal(jax.random.key(1), (1, T, d))
    mlp = MaskedMLP(f)
    p = nn.meta.unbox(mlp.init(jax.random.key(2), x, None)["params"])
    keep = jax.random.permutation(jax.random.key(3), f)[:K]
    scale = jax.random.uniform(jax.random.key(4), (K,), minval=0.2) if use_lambda else None
    mask = jnp.zeros((1, f)).at[0, keep].set(1.0 if scale is None else scale)
    masked = jit(mlp)({"params": p}, x, mask)
    small = jit(MaskedMLP(K))({"params": gather_mlp_units(p, keep, scale)}, x, None)
    np.testing.assert_allclose(masked, small, atol=1e-6, rtol=1e-5)
    # A wrong index set gives a different answer (the test can fail).
    wrong = jit(MaskedMLP(K))({"params": gather_mlp_units(p, (keep + 1) % f, scale)}, x, None)
    assert np.abs(np.asarray(masked - wrong)).max() > 1e-3


def test_whole_decoder_with_hard_mask_equals_pruned_dense_decoder(params):
    dec = params["decoder"]
    tokens = _tokens(5, (1, T))
    keep = [jax.random.permutation(jax.random.key(10 + i), TINY_MODEL.d_ffn)[:K]
            for i in range(TINY_MODEL.n_layers)]
    mask = jnp.stack([jnp.zeros(TINY_MODEL.d_ffn).at[k].set(1.0) for k in keep])[None]
    masked = jit(Decoder(TINY_MODEL))({"params": dec}, tokens, mask)
    mlp = dec["layers"]["mlp"]
    per_layer = [gather_mlp_units(jax.tree_util.tree_map(lambda a, i=i: a[i], mlp), keep[i])
                 for i in range(TINY_MODEL.n_layers)]
    pruned = dict(dec, layers=dict(dec["layers"], mlp=jax.tree_util.tree_map(
        lambda *a: jnp.stack(a), *per_layer)))
    small_cfg = dataclasses.replace(TINY_MODEL, d_ffn=K)
    dense_small = jit(Decoder(small_cfg))({"params": pruned}, tokens)
    np.testing.assert_allclose(masked, dense_small, atol=1e-5, rtol=1e-5)


def test_predictor_scores_ignore_padding():
    pred = Predictor(TINY_PREDICTOR, TINY_MODEL.n_layers, TINY_MODEL.d_ffn)
    prompt = _tokens(6, (2, 9))
    short = jnp.pad(prompt, ((0, 0), (0, 3)))
    p = nn.meta.unbox(jit(pred, "init")(jax.random.key(0), short)["params"])
    s_short = jit(pred)({"params": p}, short)
    s_right = jit(pred)({"params": p}, jnp.pad(prompt, ((0, 0), (0, 30))))
    s_left = jit(pred)({"params": p}, jnp.pad(prompt, ((0, 0), (7, 3))))
    np.testing.assert_allclose(s_right, s_short, atol=1e-5)
    np.testing.assert_allclose(s_left, s_short, atol=1e-5)
    # Rows padded to different lengths in one batch still read their own last real token.
    ragged = jnp.stack([jnp.pad(prompt[0], (0, 7)), jnp.pad(prompt[1, :5], (0, 11))])
    s_ragged = jit(pred)({"params": p}, ragged)
    np.testing.assert_allclose(s_ragged[0], s_short[0], atol=1e-5)
    s_five = jit(pred)({"params": p}, prompt[1:, :5])
    np.testing.assert_allclose(s_ragged[1], s_five[0], atol=1e-5)
    # ... and the scores do depend on the prompt.
    other = jit(pred)({"params": p}, short.at[:, 2].set(7))
    assert np.abs(np.asarray(other - s_short)).max() > 1e-4


def test_decoder_is_causal(params):
    batch = _batch()
    out = jit(_model())({"params": params}, batch, mode="soft", temperature=0.5)
    changed = dict(batch, decoder_input_tokens=batch["decoder_input_tokens"].at[:, 7].set(3))
    out2 = jit(_model())({"params": params}, changed, mode="soft", temperature=0.5)
    np.testing.assert_allclose(out2.logits[:, :7], out.logits[:, :7], atol=1e-6)
    assert np.abs(np.asarray(out2.logits[:, 7:] - out.logits[:, 7:])).max() > 1e-4


def test_modes(params):
    batch = _batch()
    m = _model()
    dense = jit(m)({"params": params}, batch, mode="dense")
    assert dense.mask is None
    ones = jnp.ones((B, TINY_MODEL.n_layers, TINY_MODEL.d_ffn))
    given = jit(m)({"params": params}, batch, mode="given", given_mask=ones)
    np.testing.assert_allclose(given.logits, dense.logits, atol=1e-6)

    soft = jit(m)({"params": params}, batch, mode="soft", temperature=0.5, train=True)
    np.testing.assert_array_equal((soft.mask > 0).sum(-1), K)
    np.testing.assert_allclose(soft.lam.sum(-1), K, atol=1e-4)
    np.testing.assert_allclose(soft.mask, soft.lam * (soft.mask > 0))
    assert np.abs(np.asarray(soft.logits - dense.logits)).max() > 1e-4

    hard_eval = jit(_model(eval_mask="hard"))({"params": params}, batch, mode="soft",
                                               temperature=0.5, train=False)
    np.testing.assert_array_equal(hard_eval.mask, (soft.mask > 0).astype(jnp.float32))
    hard = jit(m)({"params": params}, batch, mode="hard")
    np.testing.assert_array_equal(hard.mask, hard_eval.mask)  # same top-k as the scores'

    static = jit(m)({"params": params}, batch, mode="static", temperature=0.5, train=True)
    np.testing.assert_array_equal(static.mask[0], static.mask[1])  # input-independent
    with pytest.raises(ValueError, match="given_mask"):
        jit(m)({"params": params}, batch, mode="given")


def norm(tree) -> float:
    return float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(tree))))


def test_gradients_reach_the_predictor_only_through_soft_masks(params):
    batch = _batch()

    def loss(p, mode):
        return jit(_model())({"params": p}, batch, mode=mode, temperature=0.5,
                              train=True).logits.sum()

    soft = jax.grad(loss)(params, "soft")
    hard = jax.grad(loss)(params, "hard")
    static = jax.grad(loss)(params, "static")
    assert norm(soft["predictor"]) > 0 and norm(soft["decoder"]) > 0
    assert norm(hard["predictor"]) == 0
    assert norm(static["static_scores"]) > 0 and norm(static["predictor"]) == 0


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_policies_change_memory_not_results(params, policy):
    batch = _batch()
    cfg = dataclasses.replace(TINY_MODEL, remat_policy=policy)

    def loss(p, model):
        return jit(model)({"params": p}, batch, mode="soft", temperature=0.5,
                           train=True).logits.std()

    g0 = jax.grad(loss)(params, _model())
    g1 = jax.grad(loss)(params, _model(model_cfg=cfg))
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)


def test_layer_loop_unrolling_changes_the_program_not_results(params):
    """scan_unroll: a rolled and a fully unrolled layer loop give the same gradients, and the
    unrolled program has fewer loops (the other loops: SoftTopK's bisection, the predictor's).
    0 (auto) resolves to every layer on CPU, 1 on TPU/GPU and with remat."""
    from ifp_jax.model.decoder import scan_unroll
    n = TINY_MODEL.n_layers
    assert scan_unroll(TINY_MODEL, "cpu") == n and scan_unroll(TINY_MODEL, "tpu") == 1
    assert scan_unroll(dataclasses.replace(TINY_MODEL, scan_unroll=99), "tpu") == n
    assert scan_unroll(dataclasses.replace(TINY_MODEL, remat_policy="full"), "cpu") == 1
    batch = _batch()

    def loss(p, model):
        return jit(model)({"params": p}, batch, mode="soft", temperature=0.5,
                           train=True).logits.std()

    grads, loops = {}, {}
    for unroll in (1, n):
        model = _model(model_cfg=dataclasses.replace(TINY_MODEL, scan_unroll=unroll))
        hlo = jax.jit(jax.grad(loss), static_argnums=1).lower(params, model).as_text()
        loops[unroll] = hlo.count("stablehlo.while")
        grads[unroll] = jax.grad(loss)(params, model)
    assert loops[n] < loops[1], loops
    for a, b in zip(jax.tree_util.tree_leaves(grads[1]), jax.tree_util.tree_leaves(grads[n])):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)


def test_unscanned_layers_match_scanned(params):
    cfg = dataclasses.replace(TINY_MODEL, scan_layers=False)
    dec = params["decoder"]
    unstacked = {k: v for k, v in dec.items() if k != "layers"}
    for i in range(TINY_MODEL.n_layers):
        unstacked[f"layers_{i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], dec["layers"])
    tokens = _tokens(8, (2, T))
    mask = jax.random.uniform(jax.random.key(9), (2, TINY_MODEL.n_layers, TINY_MODEL.d_ffn))
    np.testing.assert_allclose(jit(Decoder(cfg))({"params": unstacked}, tokens, mask),
                               jit(Decoder(TINY_MODEL))({"params": dec}, tokens, mask),
                               atol=1e-5, rtol=1e-5)


def test_init_std_sets_every_projection_kernels_scale():
    wide = dataclasses.replace(TINY_MODEL, init_std=0.2)
    init = lambda cfg: nn.meta.unbox(jit(_model(model_cfg=cfg), "init")(
        jax.random.key(0), _batch(), mode="soft")["params"]["decoder"])
    for cfg in (TINY_MODEL, wide):
        kernels = [np.asarray(v) for path, v in
                   jax.tree_util.tree_flatten_with_path(init(cfg))[0]
                   if "kernel" in jax.tree_util.keystr(path)]
        assert len(kernels) >= 8  # q, k, v, o, gate, up, down, lm_head
        for kernel in kernels:
            assert abs(kernel.std() / cfg.init_std - 1) < 0.15
