"""KV-cache generation: logits equal the Decoder's full recomputation (f32, atol 1e-5) at every
step; greedy tokens equal the full-recompute reference; EOS, sampling, streaming, bucketing;
a gathered small model generates what the masked big model does.

XLA:CPU compiles dominate the run time, so tests share programs: every batch-of-3 generation
uses the same shapes and a mask (one program per sampling method).
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifp_jax.config import ModelConfig, PredictorConfig, PruningConfig
from ifp_jax.infer import generate as gen
from ifp_jax.infer.kv_decoder import (decode_step, fuse_mlp, gather_fused_mlp, griffin_scores,
                                      inference_params, prefill)
from ifp_jax.infer.sampling import sample, top_p_filter
from ifp_jax.model.decoder import Decoder
from ifp_jax.model.ifp import IFPModel
from ifp_jax.model.layers import gather_mlp_units
from ifp_jax.model.soft_topk import topk_indicator

ATOL = 1e-5  # f32: the cache path runs the Decoder's own ops, on fewer rows
CFG = ModelConfig(vocab_size=259, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  d_ffn=64, max_len=256, attention="xla")
K = 16
PROMPTS = [[5, 17, 99, 3, 42], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 200], [250, 1]]
LENGTHS = jnp.asarray([len(p) for p in PROMPTS])
STEPS = 6


@functools.lru_cache(maxsize=None)
def _params(cfg):
    return jax.jit(Decoder(cfg).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]


def _masks(kind, b=len(PROMPTS), seed=1):
    """[B, L, F] FFN masks, a different one per row: None, 0/1 top-k, or lambda * top-k."""
    if kind == "dense":
        return None
    scores = jax.random.normal(jax.random.key(seed), (b, CFG.n_layers, CFG.d_ffn))
    hard = topk_indicator(scores, K)
    if kind == "hard":
        return hard
    return hard * jax.random.uniform(jax.random.key(seed + 1), scores.shape, minval=0.2)


def _right_pad(rows, width):
    out = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return jnp.asarray(out)


@functools.partial(jax.jit, static_argnums=(0,))
def _cached_vs_full(cfg, params, fed, mask):
    """Feeds fed [B, STEPS] after PROMPTS through the cache and through the Decoder.

    Returns (cached, full) logits [STEPS + 1, B, V]: row b's logits for its last prompt token and
    for each fed token."""
    logits, cache = prefill(params, cfg, _right_pad(PROMPTS, 16), LENGTHS, mask=mask, cache_len=32)

    def step(cache, tok):
        logits, cache = decode_step(params, cfg, tok, cache, mask=mask)
        return cache, logits

    cache, steps = jax.lax.scan(step, cache, fed.T)
    seqs = jnp.zeros((len(PROMPTS), 24), jnp.int32)
    rows = jnp.arange(len(PROMPTS))
    pos = LENGTHS[:, None] + jnp.arange(STEPS)
    seqs = seqs.at[:, :16].set(_right_pad(PROMPTS, 16)).at[rows[:, None], pos].set(fed)
    full = Decoder(cfg).apply({"params": params}, seqs, mask)
    full = jnp.stack([full[rows, LENGTHS - 1 + s] for s in range(STEPS + 1)])
    return jnp.concatenate([logits[None], steps]), full, cache.lengths


CASES = {  # every option appears both ways across the cases
    "scan_gqa_untied_lambda": (CFG, "lambda"),
    "loop_mha_tied_hard": (dataclasses.replace(CFG, scan_layers=False, n_kv_heads=4,
                                               tie_embeddings=True), "hard"),
    "scan_mqa_tied_dense": (dataclasses.replace(CFG, n_kv_heads=1, tie_embeddings=True),
                            "dense"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cached_logits_equal_full_recomputation_at_every_step(case):
    cfg, kind = CASES[case]
    fed = jax.random.randint(jax.random.key(3), (len(PROMPTS), STEPS), 3, 259)
    cached, full, lengths = _cached_vs_full(cfg, _params(cfg), fed, _masks(kind))
    for s in range(STEPS + 1):
        np.testing.assert_allclose(cached[s], full[s], atol=ATOL, rtol=0, err_msg=f"step {s}")
    np.testing.assert_array_equal(lengths, LENGTHS + STEPS)


def test_generate_greedy_tokens_are_the_full_recompute_argmax():
    """Each greedy token, fed back, is the argmax of the Decoder's full-sequence logits."""
    params, mask = _params(CFG), _masks("lambda")
    tokens, lengths = gen.generate(params, CFG, PROMPTS, max_new_tokens=STEPS, eos_id=None,
                                   mask=mask)
    _, full, _ = _cached_vs_full(CFG, params, tokens, mask)
    np.testing.assert_array_equal(tokens, jnp.argmax(full[:STEPS], -1).T)
    np.testing.assert_array_equal(lengths, [STEPS] * 3)
    # (tokens [B, T], lengths) is the same request as the list of prompts
    again, _ = gen.generate(params, CFG, (_right_pad(PROMPTS, 11), LENGTHS),
                            max_new_tokens=STEPS, eos_id=None, mask=mask)
    np.testing.assert_array_equal(again, tokens)


def _eval_case():
    """(model, params, batch, num_steps) of the evaluator's tests: 4 rows, the last two of
    which reach position T - 1 while decoding."""
    model = IFPModel(CFG, PredictorConfig(backbone=dataclasses.replace(CFG, n_layers=1),
                                          head_hidden=16, max_prompt_len=16),
                     PruningConfig(mode="soft", keep_k=K, eval_mask="lambda"))
    t, b, num_steps = 24, 4, 8
    prompt_len = np.array([3, 9, 20, 23])
    seq = np.asarray(jax.random.randint(jax.random.key(5), (b, t), 3, 259))
    weights = (np.arange(t)[None] >= prompt_len[:, None]).astype(np.float32)
    batch = {"predictor_tokens": seq[:, :16], "decoder_input_tokens": seq,
             "decoder_loss_weights": weights}
    params = jax.jit(functools.partial(model.init, mode="soft", temperature=1.0))(
        jax.random.key(0), batch)["params"]
    return model, params, batch, num_steps


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _reference_and_cached(model, params, batch, num_steps, eos_id, prompt_len=None):
    """The evaluator's path (IFPModel.select, then greedy_continuation on the decoder params)
    and the one it replaced (the whole IFPModel per token, mask given, no early stop)."""
    mask, _, _ = model.apply({"params": params}, batch, mode="soft", temperature=0.1,
                             train=False, method=IFPModel.select)
    inputs, start = gen.prompt_only_inputs(batch["decoder_input_tokens"],
                                           batch["decoder_loss_weights"])

    def logits_fn(tokens):
        return model.apply({"params": params}, dict(batch, decoder_input_tokens=tokens),
                           mode="given", given_mask=mask, train=False).logits

    return (gen.greedy_decode_full(logits_fn, inputs, start, num_steps),
            *gen.greedy_continuation(params["decoder"], CFG, inputs, start,
                                     num_steps=num_steps, mask=mask, eos_id=eos_id,
                                     prompt_len=prompt_len))


def test_eval_greedy_tokens_equal_the_full_recompute_reference():
    """Without an EOS: the same tokens as the reference; a row stops decoding once it reaches
    position T - 1 (from there both repeat the token read there)."""
    model, params, batch, num_steps = _eval_case()
    reference, cached, count = _reference_and_cached(model, params, batch, num_steps,
                                                     gen.NO_EOS)
    np.testing.assert_array_equal(cached, reference)
    assert len(np.unique(np.asarray(reference))) > 3  # a real continuation, not one token
    np.testing.assert_array_equal(count, [8, 8, 4, 1])  # min(num_steps, T - prompt length)
    # Prefilling only the longest prompt (rows 0-2: 21 of 24 positions) changes no token.
    sub = {k: v[:3] for k, v in batch.items()}
    _, trimmed, _ = _reference_and_cached(model, params, sub, num_steps, gen.NO_EOS, 21)
    np.testing.assert_array_equal(trimmed, np.asarray(reference)[:3])


def test_eval_stops_every_row_at_its_eos_with_the_same_predictions():
    """With an EOS each row's prediction (its tokens up to the EOS) is the reference's, pad 0
    follows, and the loop ends once every row has stopped: fewer steps than num_steps."""
    model, params, batch, num_steps = _eval_case()
    reference, _, _ = _reference_and_cached(model, params, batch, num_steps, gen.NO_EOS)
    reference = np.asarray(reference)
    rows = [0, 2, 3]  # rows 2 and 3 stop at T - 1, row 0 at its second token (the EOS)
    eos = int(reference[0, 1])
    assert eos not in reference[0, :1] and eos not in reference[2:, :4]
    sub = {k: v[rows] for k, v in batch.items()}
    _, cached, count = _reference_and_cached(model, params, sub, num_steps, eos)
    cached = np.asarray(cached)

    def prediction(row):
        row = list(row)
        return row[:row.index(eos)] if eos in row else row

    for i, r in enumerate(rows):
        assert prediction(cached[i]) == prediction(reference[r])
    np.testing.assert_array_equal(cached[0], [reference[0, 0], eos] + [0] * (num_steps - 2))
    np.testing.assert_array_equal(count, [2, 4, 1])
    assert int(np.max(count)) < num_steps  # the loop's step count: it ended early


def _generate(**kw):
    """A batch-of-3 masked generation (one program per sampling method across the tests)."""
    out = gen.generate(_params(CFG), CFG, PROMPTS, max_new_tokens=12, mask=_masks("lambda"),
                       **{"eos_id": None, **kw})
    return np.asarray(out[0]), np.asarray(out[1])


def test_eos_stops_a_row_and_pads_after_it():
    free, _ = _generate()
    eos = int(free[0, 2])  # row 0's third token plays EOS
    tokens, lengths = _generate(eos_id=eos)
    for row, n in enumerate(lengths):
        hits = np.flatnonzero(free[row] == eos)
        assert n == (int(hits[0]) + 1 if hits.size else 12), (row, n)
        np.testing.assert_array_equal(tokens[row, :n], free[row, :n])
        assert (tokens[row, n:] == 0).all()
    assert lengths[0] <= 3


def test_temperature_zero_and_tiny_top_p_are_greedy():
    greedy, _ = _generate()
    np.testing.assert_array_equal(_generate(temperature=0.0, top_p=0.5, seed=7)[0], greedy)
    np.testing.assert_array_equal(_generate(temperature=1.0, top_p=1e-6, seed=7)[0], greedy)


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_sampling_is_reproducible_and_seeds_differ(top_p):
    run = lambda seed: _generate(temperature=1.0, top_p=top_p, seed=seed)[0]
    np.testing.assert_array_equal(run(3), run(3))
    assert (run(3) != run(4)).any()
    assert (run(3) != _generate()[0]).any()  # and it is not greedy


def test_top_p_keeps_the_nucleus_only():
    logits = jnp.log(jnp.asarray([[0.05, 0.5, 0.15, 0.3]]))
    kept = lambda p: np.flatnonzero(np.isfinite(np.asarray(top_p_filter(logits, p))[0])).tolist()
    assert kept(0.5) == [1]  # 0.5 reached by the top token alone
    assert kept(0.6) == [1, 3]
    assert kept(0.81) == [1, 2, 3]
    assert kept(1.0) == [0, 1, 2, 3]
    keys = jax.random.split(jax.random.key(0), 200)
    draws = jax.jit(jax.vmap(lambda k: sample(logits, k, "top_p", 1.0, 0.6)))(keys)
    assert set(np.unique(np.asarray(draws))) == {1, 3}


SAMPLED = dict(temperature=1.0, top_p=0.9, seed=11)


def test_stream_yields_what_generate_returns():
    params = _params(CFG)
    tokens, _ = gen.generate(params, CFG, PROMPTS[:1], max_new_tokens=12, eos_id=None, **SAMPLED)
    streamed = list(gen.stream(params, CFG, PROMPTS[0], max_new_tokens=12, eos_id=None,
                               **SAMPLED))
    assert streamed == np.asarray(tokens)[0].tolist()
    eos = streamed[4]
    assert list(gen.stream(params, CFG, PROMPTS[0], max_new_tokens=12, eos_id=eos,
                           **SAMPLED)) == streamed[:streamed.index(eos)]


def test_host_params_are_put_on_device_once_not_copied_every_step():
    """A restored export holds numpy arrays; a jitted step would copy each one in per call
    (at 135M, 220 MB a token). inference_params hands the step device arrays only, and the
    tokens do not change."""
    host = jax.tree.map(np.asarray, nn.meta.unbox(_params(CFG)))
    p = inference_params(host, CFG)
    leaves = jax.tree.leaves(p)
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)
    assert (list(gen.stream(host, CFG, PROMPTS[0], max_new_tokens=8, eos_id=None))
            == list(gen.stream(_params(CFG), CFG, PROMPTS[0], max_new_tokens=8, eos_id=None)))


def test_prompts_and_steps_in_one_bucket_share_one_program():
    params = _params(CFG)
    gen.generate(params, CFG, [[5, 6, 7]], max_new_tokens=3, eos_id=1, **SAMPLED)
    before = gen._decode_loop_jit._cache_size()
    gen.generate(params, CFG, [list(range(3, 60))], max_new_tokens=40, eos_id=2,
                 temperature=0.7, top_p=0.5, seed=1)
    assert gen._decode_loop_jit._cache_size() == before
    with pytest.raises(ValueError, match="1..T tokens"):
        gen.generate(params, CFG, [[5], []], max_new_tokens=3, eos_id=1)


def _gathered(params, cfg, mask_row, scale):
    """A dense model with d_ffn = k: per layer, the units kept by mask_row [L, F] (0/1), W_down
    rows scaled by `scale` [L, F] (lambda) if given."""
    raw = nn.meta.unbox(params)  # the Decoder's own (scanned, unfused) layout
    small = {k: v for k, v in raw.items() if k != "layers"}
    for i in range(cfg.n_layers):
        lp = jax.tree.map(lambda a, i=i: a[i], raw["layers"])
        keep = jnp.nonzero(mask_row[i], size=K)[0]
        small[f"layers_{i}"] = dict(lp, mlp=gather_mlp_units(
            lp["mlp"], keep, None if scale is None else scale[i, keep]))
    return small, dataclasses.replace(cfg, d_ffn=K, scan_layers=False)


def test_griffin_scores_match_the_decoders_own_activations():
    """GRIFFIN's statistic from the inference path == the same formula in NumPy over the
    training Decoder's captured gate/up outputs, each row over its own prompt tokens only."""
    cfg = dataclasses.replace(CFG, scan_layers=False)
    params = _params(cfg)
    tokens, lengths = gen.pad_prompts(PROMPTS)
    got = np.asarray(jax.jit(griffin_scores, static_argnums=1)(params, cfg, tokens, lengths))
    assert got.shape == (len(PROMPTS), cfg.n_layers, cfg.d_ffn)
    _, state = Decoder(cfg).apply({"params": params}, tokens, None, capture_intermediates=True,
                                  mutable=["intermediates"])
    for layer in range(cfg.n_layers):
        mlp = state["intermediates"][f"layers_{layer}"]["mlp"]
        hidden = np.asarray(jax.nn.silu(mlp["gate_proj"]["__call__"][0])
                            * mlp["up_proj"]["__call__"][0])  # [B, T, F]
        for b, n in enumerate(lengths):
            z = hidden[b, :n] / np.linalg.norm(hidden[b, :n], axis=-1, keepdims=True)
            np.testing.assert_allclose(got[b, layer], np.sqrt((z * z).sum(0)), rtol=1e-4,
                                       atol=1e-6, err_msg=f"row {b} layer {layer}")


def test_gathering_a_fused_mlp_equals_fusing_the_gathered_one():
    """Serving gathers from the fused gate/up kernel: same columns and scaled rows as the
    model's own gather_mlp_units followed by fusion."""
    keys = jax.random.split(jax.random.key(3), 3)
    mlp = {"gate_proj": {"kernel": jax.random.normal(keys[0], (6, 10))},
           "up_proj": {"kernel": jax.random.normal(keys[1], (6, 10))},
           "down_proj": {"kernel": jax.random.normal(keys[2], (10, 6))}}
    idx, scale = jnp.array([1, 4, 9]), jnp.array([0.5, 1.0, 0.25])
    for s in (None, scale):
        got = gather_fused_mlp(fuse_mlp(mlp), idx, s)
        want = fuse_mlp(gather_mlp_units(mlp, idx, s))
        jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.parametrize("kind", ["hard", "lambda"])
def test_gathered_small_models_generate_what_the_masked_model_does(kind):
    """Row r of a masked batch == the model gathered from row r's mask, run alone."""
    params, mask = _params(CFG), _masks(kind)
    big, _ = gen.generate(params, CFG, PROMPTS, max_new_tokens=12, eos_id=None, mask=mask)
    for r, prompt in enumerate(PROMPTS):
        small, small_cfg = _gathered(params, CFG, (mask[r] > 0).astype(jnp.float32),
                                     None if kind == "hard" else mask[r])
        alone, _ = gen.generate(small, small_cfg, [prompt], max_new_tokens=12, eos_id=None)
        np.testing.assert_array_equal(alone[0], big[r], err_msg=f"row {r}")


def test_cli_streams_the_decoded_continuation(monkeypatch, capsys):
    """`ifp generate --model DIR` with the exported-model loader stubbed by a random model (the
    sampled programs of the stream test are reused)."""
    import argparse
    import sys
    import types

    from ifp_jax.config import ConfigError
    from ifp_jax.vocab.seqio_vocab import get_vocabulary
    from ifp_jax.commands.generate import add_parser

    stub = types.ModuleType("ifp_jax.export.orbax_io")
    stub.load_exported = lambda path: (CFG, _params(CFG), "byte")
    monkeypatch.setitem(sys.modules, "ifp_jax.export.orbax_io", stub)
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    run = lambda *argv: (lambda a: a.fn(a))(parser.parse_args(["generate", *argv]))

    run("--model", "m", "--prompt", "héllo", "--max-new-tokens", "12", "--temperature", "1.0",
        "--top-p", "0.9", "--seed", "11", "--verbose")
    vocab = get_vocabulary("byte")
    ids = list(gen.stream(_params(CFG), CFG, [0] + vocab.encode("héllo"), max_new_tokens=12,
                          eos_id=vocab.eos_id, **SAMPLED))
    out = capsys.readouterr()
    assert out.out == vocab.decode(ids) + "\n"
    assert "prefill: 7 tokens" in out.err
    with pytest.raises(ConfigError, match="--prompt is empty"):
        run("--model", "m", "--prompt", "")
