"""pruning.init_scores='activation': selection scores start from the LLM's FFN activations.

The reference activations come from the training-path Decoder's own gate/up projections
(flax capture_intermediates), not from the KV prefill the implementation probes. A synthetic
"pretrained" LLM whose FFNs have a known dead half checks what the first masks keep and what
they cost."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifp_jax import sharding as shd
from ifp_jax.config import ConfigError, apply_overrides, replace
from ifp_jax.data import pipeline, tasks
from ifp_jax.model.decoder import Decoder
from ifp_jax.train import init_scores
from ifp_jax.train.loop import train
from ifp_jax.train.optim import make_optimizer
from ifp_jax.train.state import build_model, create_state, state_layout
from tests.helpers import TINY_MODEL, tiny_config


def _reference_mean_abs(params, cfg, tokens, lengths):
    """[L, F] mean |silu(gate) * up| over real tokens, from the Decoder's intermediates."""
    cfg = dataclasses.replace(cfg, scan_layers=False)
    _, inter = Decoder(cfg).apply({"params": params}, tokens, capture_intermediates=True,
                                  mutable=["intermediates"])
    valid = (np.arange(tokens.shape[1])[None, :] < lengths[:, None])[..., None]
    out = []
    for i in range(cfg.n_layers):
        mlp = inter["intermediates"][f"layers_{i}"]["mlp"]
        gate, up = mlp["gate_proj"]["__call__"][0], mlp["up_proj"]["__call__"][0]
        h = np.abs(np.asarray(jax.nn.silu(gate) * up))
        out.append((h * valid).sum((0, 1)) / valid.sum())
    return np.stack(out)


def _stacked(params, n_layers):
    """layers_0..layers_{L-1} -> one scanned 'layers' tree (what the train state holds)."""
    layers = [params.pop(f"layers_{i}") for i in range(n_layers)]
    return {**params, "layers": jax.tree.map(lambda *a: jnp.stack(a), *layers)}


def padded_rows():
    """(unscanned tiny decoder config, its params as numpy, tokens [3, 12] right-padded with 0,
    lengths [3])."""
    cfg = dataclasses.replace(TINY_MODEL, scan_layers=False)
    params = Decoder(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    params = jax.tree.map(np.asarray, params)
    tokens = np.array(jax.random.randint(jax.random.key(1), (3, 12), 3, cfg.vocab_size))
    lengths = np.array([12, 5, 1])
    tokens[1, 5:] = 0
    tokens[2, 1:] = 0
    return cfg, params, tokens, lengths


def test_activation_sums_equal_the_decoders_own_activations():
    cfg, params, tokens, lengths = padded_rows()
    expected = _reference_mean_abs(params, cfg, tokens, lengths)
    sums = init_scores.activation_sums(_stacked(dict(params), cfg.n_layers), cfg,
                                       jnp.asarray(tokens), jnp.asarray(lengths))
    np.testing.assert_allclose(np.asarray(sums) / lengths.sum(), expected, rtol=2e-5, atol=1e-7)


def test_scores_are_a_scaled_per_layer_zscore_of_the_log():
    rng = np.random.default_rng(0)
    mean_abs = np.exp(rng.normal(size=(3, 64)) * [[1.0], [4.0], [0.0]])  # layer 2: all alike
    scores = init_scores.scores_from_activations(mean_abs, 3.0)
    np.testing.assert_allclose(scores[:2].mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(scores[:2].std(-1), 3.0, rtol=1e-5)
    np.testing.assert_array_equal(scores[2], 0)
    for layer in range(2):  # the same order as the activations
        np.testing.assert_array_equal(np.argsort(scores[layer]), np.argsort(mean_abs[layer]))


def test_batch_lengths_end_at_the_last_loss_position():
    weights = np.array([[1, 1, 1, 1], [0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(init_scores.batch_lengths(jnp.asarray(weights)), [4, 3, 3, 0])


def _dead_half_state(cfg, seed=0):
    """A fresh train state whose LLM has a random half of every layer's FFN units silenced
    (up_proj columns x 1e-4); returns (state, live [L, F] bool, model, mesh)."""
    mesh = shd.make_mesh(cfg.mesh)
    model = build_model(cfg)
    tx = make_optimizer(cfg.optimizer, cfg.train.steps)
    layout = state_layout(model, cfg, tx, mesh)
    state = create_state(model, cfg, tx, layout=layout, mesh=mesh)
    rng = np.random.default_rng(seed)
    live = np.stack([rng.permutation(cfg.model.d_ffn) < cfg.model.d_ffn // 2
                     for _ in range(cfg.model.n_layers)])
    params = jax.device_get(state.params)
    up = params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"]  # [L, D, F]
    params["decoder"]["layers"]["mlp"]["up_proj"]["kernel"] = up * np.where(live, 1.0, 1e-4)[
        :, None, :]
    state = state.replace(params=jax.device_put(params, layout.shardings.params))
    return state, live, model, mesh


def _first_batch(cfg):
    return next(pipeline.make_train_batches(cfg.data, cfg.predictor.max_prompt_len))


def test_first_masks_keep_the_used_units_and_the_data_is_rewound():
    cfg = tiny_config(steps=5)
    cfg = replace(cfg, model=replace(cfg.model, d_ffn=64),
                  pruning=replace(cfg.pruning, keep_k=32, init_scores="activation"))
    tasks.register_all(cfg.data, cfg.predictor.max_prompt_len)
    state, live, model, mesh = _dead_half_state(cfg)
    batches = pipeline.make_train_batches(cfg.data, cfg.predictor.max_prompt_len)
    to_global = lambda host: {k: jnp.asarray(host[k]) for k in host}
    fresh = state
    state = init_scores.initialise_scores(state, cfg, mesh, jnp.float32, batches, to_global)

    # Training reads the same data as without the initialisation.
    first = _first_batch(cfg)
    after = next(batches)
    for key in first:
        np.testing.assert_array_equal(after[key], first[key])

    # The scores rank the units the LLM uses above the silenced ones, in every layer.
    batch = {k: jnp.asarray(v) for k, v in first.items()}
    static = np.asarray(state.params["static_scores"])
    for layer in range(cfg.model.n_layers):
        assert set(np.argsort(-static[layer])[:32]) == set(np.flatnonzero(live[layer])), layer

    def step0(st, mode):
        out = model.apply({"params": st.params}, batch, mode=mode,
                          temperature=cfg.pruning.temperature_start, train=True)
        logp = jax.nn.log_softmax(out.logits)
        nll = -jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
        w = batch["decoder_loss_weights"]
        return float((nll * w).sum() / w.sum()), out.mask

    dense, _ = step0(state, "dense")
    for mode in ("soft", "static"):  # the predictor's first masks, and the static ones
        loss, mask = step0(state, mode)
        kept = np.asarray(mask) > 0  # [B, L, F]
        assert (kept == live[None]).all(), mode
        random_loss, _ = step0(fresh, mode)
        assert abs(loss - dense) < 0.2 * abs(random_loss - dense), (mode, loss, random_loss, dense)


def test_a_fresh_run_initialises_and_its_resume_does_not(tmp_path, capsys):
    """Also pruning.fit_predictor_steps (test_fit_predictor.py), after the initialisation."""
    cfg = tiny_config(steps=2)
    cfg = replace(cfg, pruning=replace(cfg.pruning, init_scores="activation",
                                       fit_predictor_steps=3),
                  checkpoint=replace(cfg.checkpoint, every_steps=1))
    workdir = str(tmp_path / "run")
    train(cfg, workdir)
    out = capsys.readouterr().out
    assert "selection scores initialised from the LLM's FFN activations" in out
    assert "step 3/3" in out and "predictor fitted in 3 steps" in out
    assert out.index("selection scores initialised") < out.index("predictor fitted")
    train(replace(cfg, train=replace(cfg.train, steps=3)), workdir)
    out = capsys.readouterr().out
    assert "resumed" in out and "selection scores initialised" not in out
    assert "fitted" not in out

    # A stage whose predictor comes from that run keeps the run's scores, and fits them (e.g.
    # the CPT stage's predictor fitted to SFT prompts).
    chained = replace(cfg, train=replace(cfg.train, init_llm_from=workdir,
                                         init_predictor_from=workdir, steps=1))
    train(chained, str(tmp_path / "chained"))
    out = capsys.readouterr().out
    assert "pruning.init_scores=activation left unused: the predictor and static scores come " \
           "from" in out
    assert "predictor fitted in 3 steps" in out


@pytest.mark.parametrize("override, fix", [
    ("pruning.init_scores=weights", "activation"),
    ("pruning.init_scores_scale=0", "pruning.init_scores_scale"),
    ("pruning.init_scores_tokens=0", "pruning.init_scores_tokens"),
])
def test_bad_values_get_one_line(override, fix):
    with pytest.raises(ConfigError) as err:
        apply_overrides(tiny_config(), [override])
    assert fix in str(err.value) and "\n" not in str(err.value)



def test_sharded_initialisation_and_fit_equal_unsharded(tmp_path):
    """Through the loop (train.steps=0): on a data x fsdp x tensor mesh of 8 devices the scores
    are those of one device (the sums run over the global batch, each device its rows), and so
    is the predictor fitted after them (pruning.fit_predictor_steps), on the shardings the
    compiled train step takes."""
    from ifp_jax.config import MeshConfig
    cfg = tiny_config(steps=0)
    cfg = replace(cfg, pruning=replace(cfg.pruning, init_scores="activation",
                                       init_scores_tokens=2048, fit_predictor_steps=4))
    one = train(cfg, str(tmp_path / "one"))
    cfg8 = replace(cfg, mesh=MeshConfig(data=2, fsdp=2, tensor=2))
    eight = train(cfg8, str(tmp_path / "eight"))
    assert len(eight.params["static_scores"].sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(eight.params["static_scores"]),
                               np.asarray(one.params["static_scores"]), rtol=1e-4, atol=1e-4)
    assert np.asarray(one.params["static_scores"]).std() > 1.0  # set, not the 0.01 init
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4,
                                                         atol=1e-4),
                 one.params["predictor"], eight.params["predictor"])
    tx = make_optimizer(cfg8.optimizer, cfg8.train.steps)
    layout = state_layout(build_model(cfg8), cfg8, tx, shd.make_mesh(cfg8.mesh))
    for x, s in zip(jax.tree.leaves(eight.params["predictor"]),
                    jax.tree.leaves(layout.shardings.params["predictor"])):
        assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)
    # The fit moved the head's kernel, which the initialisation leaves at its random init.
    fresh = create_state(build_model(cfg), cfg, tx, layout=state_layout(
        build_model(cfg), cfg, tx, shd.make_mesh(cfg.mesh)), mesh=shd.make_mesh(cfg.mesh))
    kernel = lambda st: np.asarray(st.params["predictor"]["head_out"]["kernel"])
    assert not np.allclose(kernel(one), kernel(fresh), atol=1e-3)
