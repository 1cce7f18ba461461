"""pruning.fit_predictor_steps: the predictor fitted to each prompt's own activation scores
before joint training.

The targets are checked against the training-path Decoder's own activations (flax
capture_intermediates, as in test_init_scores), row by row; the fit against what a static mask
can reach on rows it never saw. Through the training loop (a fresh start fits, a resume does
not, a chained stage does; sharded = unsharded): test_init_scores.py, beside the activation
initialisation the fit follows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifp_jax import sharding as shd
from ifp_jax.config import ConfigError, apply_overrides, replace
from ifp_jax.data import pipeline, tasks
from ifp_jax.train import fit_predictor, init_scores
from ifp_jax.train.optim import make_optimizer
from ifp_jax.train.state import build_model, create_state, state_layout
from tests.helpers import tiny_config
from tests.test_init_scores import _reference_mean_abs, _stacked, padded_rows

FIT_STEPS = 100


def test_row_scores_are_each_rows_own_activation_scores():
    cfg, params, tokens, lengths = padded_rows()
    scores = fit_predictor.row_scores(_stacked(dict(params), cfg.n_layers), cfg,
                                      jnp.asarray(tokens), jnp.asarray(lengths), 3.0)
    assert scores.shape == (3, cfg.n_layers, cfg.d_ffn)
    for row in range(3):  # the row alone, its padding left out
        alone = _reference_mean_abs(params, cfg, tokens[row:row + 1], lengths[row:row + 1])
        expected = init_scores.scores_from_activations(alone, 3.0)
        np.testing.assert_allclose(np.asarray(scores[row]), np.asarray(expected), atol=2e-4)
    assert not np.allclose(scores[0], scores[1], atol=0.1)  # rows differ


def test_topk_agreement_counts_shared_units():
    a = jnp.asarray([[[4.0, 3.0, 2.0, 1.0]]])
    assert float(fit_predictor.topk_agreement(a, a, 2)) == 1.0
    assert float(fit_predictor.topk_agreement(a, -a, 2)) == 0.0
    assert float(fit_predictor.topk_agreement(a, jnp.asarray([[[4.0, 0.0, 3.0, 1.0]]]), 2)) == 0.5


def _fresh(cfg):
    mesh = shd.make_mesh(cfg.mesh)
    model = build_model(cfg)
    tx = make_optimizer(cfg.optimizer, cfg.train.steps)
    state = create_state(model, cfg, tx, layout=state_layout(model, cfg, tx, mesh), mesh=mesh)
    return state, model, mesh


def test_the_fitted_predictor_beats_every_static_mask_on_unseen_rows():
    """After the activation init the predictor's masks are one static mask; fitted, they agree
    with each unseen row's own units more than the best static mask for those rows does (the
    top-k of their mean scores), and the LLM and the data order are untouched."""
    cfg = tiny_config(steps=5, mixture="ifp_multiskill")
    cfg = replace(cfg, pruning=replace(cfg.pruning, init_scores="activation",
                                       fit_predictor_steps=FIT_STEPS))
    tasks.register_all(cfg.data, cfg.predictor.max_prompt_len)
    state, model, mesh = _fresh(cfg)
    batches = pipeline.make_train_batches(cfg.data, cfg.predictor.max_prompt_len)
    to_global = lambda host: {k: jnp.asarray(host[k]) for k in fit_predictor.FIT_KEYS}
    state = init_scores.initialise_scores(state, cfg, mesh, jnp.float32, batches, to_global)
    first = next(pipeline.make_train_batches(cfg.data, cfg.predictor.max_prompt_len))
    fitted = fit_predictor.fit_predictor(state, cfg, model, mesh, batches, to_global)

    after = next(batches)  # rewound: joint training reads the same data as without the fit
    for key in first:
        np.testing.assert_array_equal(after[key], first[key])
    jax.tree.map(np.testing.assert_array_equal, fitted.params["decoder"], state.params["decoder"])
    np.testing.assert_array_equal(fitted.params["static_scores"], state.params["static_scores"])

    for _ in range(FIT_STEPS - 1):  # past every batch the fit read
        next(batches)
    unseen = [to_global(next(batches)) for _ in range(4)]
    predict = lambda st, b: model.apply({"params": st.params}, b["predictor_tokens"],
                                        method=lambda m, t: m.predictor(t))
    targets = [fit_predictor.row_scores(
        state.params["decoder"], cfg.model, b["decoder_input_tokens"],
        init_scores.batch_lengths(b["decoder_loss_weights"]), cfg.pruning.init_scores_scale)
        for b in unseen]
    best_static = jnp.concatenate(targets).mean(0)  # the top-k of the rows' mean scores
    agreement = lambda scores: np.mean([float(fit_predictor.topk_agreement(
        scores(b, t), t, cfg.pruning.keep_k)) for b, t in zip(unseen, targets)])
    static = agreement(lambda b, t: jnp.broadcast_to(best_static, t.shape))
    before = agreement(lambda b, t: predict(state, b))
    fit = agreement(lambda b, t: predict(fitted, b))
    assert fit > static + 0.01 and fit > before + 0.02, (fit, static, before)


@pytest.mark.parametrize("mode, fits", [("soft", True), ("hard", True), ("static", False),
                                        ("dense", False)])
def test_only_modes_with_a_predictor_fit_it(mode, fits):
    reason = fit_predictor.skip_reason(tiny_config(mode=mode))
    assert (reason is None) == fits
    assert fits or reason == f"pruning.mode={mode} has no predictor to fit"


def test_a_negative_step_count_gets_one_line():
    with pytest.raises(ConfigError) as err:
        apply_overrides(tiny_config(), ["pruning.fit_predictor_steps=-1"])
    assert "pruning.fit_predictor_steps" in str(err.value) and "\n" not in str(err.value)
