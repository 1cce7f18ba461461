"""Generation with the mask selected once per prompt, over a KV cache (infer/kv_decoder.py).

IFPruning selects the sub-network once, before decoding
(docs/method.md#inference-selection-loading-generation): the predictor runs on the prompt and
every generated token uses that one FFN mask [B, L, F] (None = dense; an exported model is dense
with d_ffn = k).

  generate            batch generation; prefill + the whole token loop in one jit (a
                      lax.while_loop that ends when every row has emitted EOS)
  stream              one prompt, yields token ids as they are produced (interactive CLI)
  greedy_continuation the evaluator's contract (teacher-forcing inputs cut to the prompt)
  greedy_decode_full  the exactness reference: recomputes the whole sequence every token

Compile counts stay low by bucketing: prompts are right-padded to a multiple of BUCKET tokens and
the cache / output buffers to multiples of BUCKET too, while the number of steps, EOS id,
temperature and top-p are traced values; one program serves every prompt of a bucket (per batch
size, mask-or-dense and sampling method).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ifp_jax.config import ModelConfig
from ifp_jax.infer.kv_decoder import decode_step, inference_params, prefill
from ifp_jax.infer.sampling import method_for, sample

BUCKET = 64
NO_EOS = -1  # an id no token has: the row never stops early


def round_up(n: int, multiple: int = BUCKET) -> int:
    return max(-(-n // multiple) * multiple, multiple)


def pad_prompts(prompts: Sequence[Sequence[int]] | tuple[Any, Any]) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """list of token lists, or (tokens [B, T], lengths [B]) -> (tokens [B, round_up(T)] int32
    right-padded with 0, lengths [B] int32). Every prompt needs >= 1 token: its last token's
    logits give the first generated token."""
    if isinstance(prompts, tuple):
        tokens, lengths = np.asarray(prompts[0], np.int32), np.asarray(prompts[1], np.int32)
    else:
        lengths = np.asarray([len(p) for p in prompts], np.int32)
        tokens = np.zeros((len(prompts), int(lengths.max(initial=1))), np.int32)
        for i, p in enumerate(prompts):
            tokens[i, :len(p)] = p
    if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
        raise ValueError(f"prompts: tokens [B, T] and lengths [B], got {tokens.shape} and "
                         f"{lengths.shape}")
    if lengths.size == 0 or lengths.min() < 1 or lengths.max() > tokens.shape[1]:
        raise ValueError("every prompt needs 1..T tokens")
    padded = np.zeros((tokens.shape[0], round_up(tokens.shape[1])), np.int32)
    padded[:, :tokens.shape[1]] = np.where(np.arange(tokens.shape[1]) < lengths[:, None],
                                           tokens, 0)
    return padded, lengths


def decode_loop(params: Any, cfg: ModelConfig, tokens: jax.Array, lengths: jax.Array, *,
                mask: jax.Array | None, key: jax.Array, num_steps: jax.Array | int, eos_id,
                temperature, top_p, out_len: int, cache_len: int, method: str,
                dtype: Any = jnp.float32, row_limit: jax.Array | None = None
                ) -> tuple[jax.Array, jax.Array]:
    """Prefill + up to num_steps tokens (traceable; `generate` jits it, eval calls it in its jit).

    tokens [B, T] right-padded, lengths [B]; needs num_steps <= out_len and cache_len >=
    T + num_steps - 1. Token i is sampled with fold_in(key, i) (so `stream` reproduces it). A row
    that has emitted eos_id, or row_limit[b] tokens (row_limit [B] >= 1, optional), gets pad 0
    from then on; the loop stops when every row has, or after num_steps. Returns (tokens
    [B, out_len] int32, zeros from num_steps on; per-row count [B] of generated tokens including
    the EOS: its max is the number of tokens the loop ran for).
    """
    p = inference_params(params, cfg, dtype)  # outside the loop: stacked/cast once
    b = tokens.shape[0]
    choose = lambda logits, i: sample(logits, jax.random.fold_in(key, i), method, temperature,
                                      top_p)
    logits, cache = prefill(p, cfg, tokens, lengths, mask=mask, cache_len=cache_len, dtype=dtype)
    first = choose(logits, 0)
    out = jnp.zeros((b, out_len), jnp.int32).at[:, 0].set(first)
    ones = jnp.ones((b,), jnp.int32)
    full = (lambda count: False) if row_limit is None else (lambda count: count >= row_limit)
    carry = (jnp.int32(1), first, cache, (first == eos_id) | full(ones), out, ones)

    def cond(c):
        i, _, _, done, _, _ = c
        return (i < num_steps) & ~jnp.all(done)

    def body(c):
        i, tok, cache, done, out, count = c
        logits, cache = decode_step(p, cfg, tok, cache, mask=mask, dtype=dtype)
        nxt = jnp.where(done, 0, choose(logits, i))
        out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, i))
        count = count + (~done).astype(jnp.int32)
        return i + 1, nxt, cache, done | (nxt == eos_id) | full(count), out, count

    _, _, _, _, out, count = jax.lax.while_loop(cond, body, carry)
    return out, count


_decode_loop_jit = jax.jit(decode_loop,
                           static_argnames=("cfg", "out_len", "cache_len", "method", "dtype"))


def generate(params: Any, cfg: ModelConfig, prompts, *, max_new_tokens: int, eos_id: int | None,
             mask: jax.Array | None = None, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """Generates up to max_new_tokens per prompt, all rows in one batch.

    Args:
      params: Decoder params (the `decoder` subtree of IFPModel params, or an exported model's).
      prompts: list of token lists, or (tokens [B, T] right-padded, lengths [B]); different
        lengths are fine, each row's positions count from 0. Padded to a multiple of BUCKET.
      eos_id: a row stops after emitting it (None: never).
      mask: FFN mask [B, L, F] (a row per prompt) or None (dense).
      temperature: 0 = greedy; top_p < 1 = nucleus sampling; seed fixes the PRNG key.
    Returns: tokens [B, max_new_tokens] int32 (after a row's EOS: pad 0) and per-row lengths [B]
    (generated tokens including the EOS).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    tokens, lengths = pad_prompts(prompts)
    out_len = round_up(max_new_tokens)
    out, count = _decode_loop_jit(
        params, cfg, tokens, lengths, mask=mask, key=jax.random.key(seed),
        num_steps=max_new_tokens, eos_id=NO_EOS if eos_id is None else eos_id,
        temperature=temperature, top_p=top_p, out_len=out_len,
        cache_len=tokens.shape[1] + out_len, method=method_for(temperature, top_p), dtype=dtype)
    return out[:, :max_new_tokens], count


@functools.partial(jax.jit, static_argnames=("cfg", "cache_len", "method", "dtype"))
def _prefill_and_sample(params, cfg, tokens, lengths, *, mask, key, temperature, top_p,
                        cache_len, method, dtype):
    logits, cache = prefill(params, cfg, tokens, lengths, mask=mask, cache_len=cache_len,
                            dtype=dtype)
    return sample(logits, jax.random.fold_in(key, 0), method, temperature, top_p), cache


@functools.partial(jax.jit, static_argnames=("cfg", "method", "dtype"), donate_argnames=("cache",))
def _step_and_sample(params, cfg, token, cache, *, mask, key, i, temperature, top_p, method,
                     dtype):
    logits, cache = decode_step(params, cfg, token, cache, mask=mask, dtype=dtype)
    return sample(logits, jax.random.fold_in(key, i), method, temperature, top_p), cache


def stream(params: Any, cfg: ModelConfig, prompt: Sequence[int], *, max_new_tokens: int,
           eos_id: int | None, mask: jax.Array | None = None, temperature: float = 0.0,
           top_p: float = 1.0, seed: int = 0, dtype: Any = jnp.float32) -> Iterator[int]:
    """Yields the generated ids of one prompt as they are produced (EOS ends it, not yielded).

    One jitted decode step per token (Python between tokens, so a caller can print each);
    `generate` with the same arguments gives the same tokens. mask: [1, L, F] or None. The
    prompt is padded to a multiple of BUCKET and the cache to prompt bucket + a multiple of
    BUCKET, so the two programs are compiled once per bucket.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    tokens, lengths = pad_prompts([list(prompt)])
    method, key = method_for(temperature, top_p), jax.random.key(seed)
    p = inference_params(params, cfg, dtype)  # once, not per token
    tok, cache = _prefill_and_sample(p, cfg, tokens, lengths, mask=mask, key=key,
                                     temperature=temperature, top_p=top_p,
                                     cache_len=tokens.shape[1] + round_up(max_new_tokens),
                                     method=method, dtype=dtype)
    for i in range(max_new_tokens):
        if i:
            tok, cache = _step_and_sample(p, cfg, tok, cache, mask=mask, key=key, i=i,
                                          temperature=temperature, top_p=top_p, method=method,
                                          dtype=dtype)
        t = int(tok[0])
        if eos_id is not None and t == eos_id:
            return
        yield t


# ----------------------------------------------------------------------------- evaluation

def prompt_only_inputs(decoder_input_tokens: jax.Array, loss_weights: jax.Array):
    """Strips the response from teacher-forcing inputs.

    Inputs are seq[:-1] with seq = decoder prefix + prompt + response (data/pipeline.py), so
    the first loss position n holds the last prompt token (whose logits give the response's
    first). Returns (inputs with positions > n zeroed [B, T], n [B]).
    """
    t = decoder_input_tokens.shape[1]
    n = jnp.argmax(loss_weights > 0, axis=1).astype(jnp.int32)
    keep = jnp.arange(t)[None, :] <= n[:, None]
    return jnp.where(keep, decoder_input_tokens, 0), n


def greedy_continuation(params: Any, cfg: ModelConfig, inputs: jax.Array, start: jax.Array, *,
                        num_steps: int, mask: jax.Array | None, eos_id: int | jax.Array = NO_EOS,
                        prompt_len: int | None = None, dtype: Any = jnp.float32
                        ) -> tuple[jax.Array, jax.Array]:
    """`greedy_decode_full`'s contract and tokens up to each row's EOS, over the KV cache
    (traceable).

    inputs [B, T] from `prompt_only_inputs`, start [B] the last prompt position, num_steps
    static -> (tokens [B, num_steps], count [B] of tokens each row decoded). The reference cannot
    write past position T - 1: from there it repeats the token read at T - 1, and so does this
    (the cache itself has room for all steps). A row stops at its EOS (then pad 0: a prediction
    ends at its EOS either way) or once it reaches T - 1, and the loop when every row has.
    prompt_len (static; > every start): prefill only inputs[:, :prompt_len], not the T - 1 - start
    positions after each prompt that the decoding overwrites anyway.
    """
    t = inputs.shape[1]
    last = t - 1 - start  # the step whose logits come from position T - 1
    prompts = inputs[:, :prompt_len] if prompt_len else inputs
    out, count = decode_loop(params, cfg, prompts, start + 1, mask=mask, key=jax.random.key(0),
                             num_steps=num_steps, eos_id=eos_id, temperature=0.0, top_p=1.0,
                             out_len=num_steps, cache_len=prompts.shape[1] + num_steps,
                             method="greedy", dtype=dtype, row_limit=last + 1)
    clamped = jnp.minimum(jnp.arange(num_steps)[None], last[:, None])
    return jnp.take_along_axis(out, clamped, axis=1), count


def greedy_decode_full(logits_fn: Callable[[jax.Array], jax.Array], inputs: jax.Array,
                       start: jax.Array, num_steps: int) -> jax.Array:
    """Greedy continuation by full recomputation: the exactness reference for the KV cache.

    Runs the whole [B, T] sequence through `logits_fn` for every token (O(T) work per token);
    kept to check `greedy_continuation` / the cache against, not for use.

    Args:
      logits_fn: tokens [B, T] -> logits [B, T, V] (the mask is already fixed inside).
      inputs: [B, T] shifted-right prompt tokens (see `prompt_only_inputs`).
      start: [B] index of the last prompt position in `inputs` (its logits give token 1).
      num_steps: tokens to generate (static).
    Returns: [B, num_steps] generated token ids.
    """
    b, t = inputs.shape
    rows = jnp.arange(b)

    def body(i, carry):
        toks, out = carry
        logits = logits_fn(toks)
        pos = jnp.minimum(start + i, t - 1)
        nxt = jnp.argmax(logits[rows, pos], axis=-1).astype(toks.dtype)
        write = start + i + 1
        toks = toks.at[rows, jnp.minimum(write, t - 1)].set(
            jnp.where(write < t, nxt, toks[rows, t - 1]))
        return toks, out.at[:, i].set(nxt)

    _, out = jax.lax.fori_loop(0, num_steps, body,
                               (inputs, jnp.zeros((b, num_steps), inputs.dtype)))
    return out
