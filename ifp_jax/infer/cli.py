"""`ifp generate`: stream the continuation of one prompt, from a trained run or an exported model.

Registered on the `ifp` sub-parsers by ifp_jax/cli.py (add_parser):

    ifp generate (--workdir DIR | --model DIR) --prompt TEXT [--max-new-tokens N]
        [--temperature T] [--top-p P] [--seed S] [--eval-mask hard|lambda] [--verbose]

--workdir: the run's config and latest params; the predictor reads the prompt once and picks the
FFN mask in the run's pruning mode (none when dense), as evaluation and export do
(export/selection.py). --model: an exported model directory (dense, d_ffn = k, its mask folded
into the weights). The prompt is formatted as in training: the decoder reads [0] + prompt tokens
(targets shifted right), the predictor the last max_prompt_len prompt tokens in its own
vocabulary.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any, NamedTuple


class Generator(NamedTuple):
    """What `generate` needs: decoder params and config, an optional FFN mask, vocabulary."""

    params: Any
    model_cfg: Any  # ModelConfig
    mask: Any  # [1, L, F] or None
    vocab: Any  # vocab/light.py.LightVocabulary (no TensorFlow)
    prompt_ids: list[int]  # the decoder's prompt, formatted as in training
    dtype: Any
    note: str  # how the mask was chosen (for --verbose)


def _decoder_prompt(vocab, prompt: str) -> list[int]:
    # Training inputs are the targets shifted right with 0 first (data/pipeline.py).
    return [0] + list(vocab.encode(prompt))


def from_workdir(workdir: str, prompt: str, eval_mask: str | None) -> Generator:
    """Restores a run (params only) and selects the prompt's mask with its predictor."""
    from ifp_jax import sharding as shd
    from ifp_jax.vocab.light import get_light_vocabulary
    from ifp_jax.export.selection import Selector, predictor_tokens
    from ifp_jax.config import load_workdir_config
    from ifp_jax.train.state import build_model, params_layout
    from ifp_jax.workdir_params import restore_params

    cfg = load_workdir_config(workdir)
    mesh = shd.make_mesh(cfg.mesh)
    model = build_model(cfg)
    step, params = restore_params(workdir, params_layout(model, cfg, mesh))
    vocab = get_light_vocabulary(cfg.data.vocabulary)
    tokens = predictor_tokens(get_light_vocabulary(cfg.data.predictor_vocabulary), prompt,
                              cfg.predictor.max_prompt_len)
    sel = Selector(model, cfg, eval_mask)(params, tokens)
    note = f"{workdir} @ step {step}, mode={sel.mode}"
    mask = None
    if sel.mode != "dense":  # dense keeps every unit: no mask at all
        mask = sel.dense_mask(cfg.model.d_ffn)[None]
        note += f", eval_mask={sel.eval_mask}, k={cfg.pruning.keep_k}/{cfg.model.d_ffn}"
    return Generator(params["decoder"], model.model_cfg, mask, vocab,
                     _decoder_prompt(vocab, prompt), model.dtype, note)


def from_exported(model_dir: str, prompt: str) -> Generator:
    """An exported (already gathered, dense) model: no predictor, no mask."""
    import jax.numpy as jnp

    from ifp_jax.vocab.light import get_light_vocabulary
    from ifp_jax.export.orbax_io import load_exported

    model_cfg, params, vocab_spec = load_exported(model_dir)
    vocab = get_light_vocabulary(vocab_spec)
    if vocab.vocab_size > model_cfg.vocab_size:  # a larger id would be clamped silently
        from ifp_jax.config import ConfigError
        raise ConfigError(f"{model_dir}: its vocabulary has {vocab.vocab_size} ids but the "
                          f"model has vocab_size={model_cfg.vocab_size}; export the model again "
                          f"with the vocabulary it was trained with")
    return Generator(params, model_cfg, None, vocab, _decoder_prompt(vocab, prompt),
                     jnp.float32, f"{model_dir} (exported, d_ffn={model_cfg.d_ffn})")


def check_settings(args) -> None:
    """One-line ConfigError naming the flag and its valid range, before any model is read."""
    from ifp_jax.config import ConfigError

    if not args.prompt:
        raise ConfigError("--prompt is empty: give the text to continue")
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens={args.max_new_tokens} must be >= 1")
    # `not x >= 0` (rather than `x < 0`) also refuses NaN; inf would scale every logit to 0.
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):
        raise ConfigError(f"--temperature={args.temperature} must be a finite number >= 0 "
                          f"(0 = greedy)")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p={args.top_p} must be in (0, 1] (1 = the whole vocabulary)")
    if not 0 <= args.seed < 2**32:
        raise ConfigError(f"--seed={args.seed} must be in 0..{2**32 - 1}")
    if args.model and args.eval_mask:
        raise ConfigError("--eval-mask applies to --workdir runs; an exported model's mask is "
                          "folded into its weights")


def _cmd_generate(args) -> None:
    from ifp_jax.infer.generate import stream

    check_settings(args)
    g = (from_workdir(args.workdir, args.prompt, args.eval_mask) if args.workdir
         else from_exported(args.model, args.prompt))
    if args.verbose:
        print(f"[ifp] {g.note}; prompt {len(g.prompt_ids)} tokens", file=sys.stderr)
    ids, shown, stamps = [], "", [time.perf_counter()]
    for tok in stream(g.params, g.model_cfg, g.prompt_ids, max_new_tokens=args.max_new_tokens,
                      eos_id=g.vocab.eos_id, mask=g.mask, temperature=args.temperature,
                      top_p=args.top_p, seed=args.seed, dtype=g.dtype):
        stamps.append(time.perf_counter())
        ids.append(tok)
        # Re-decode the whole continuation: a multi-byte character (or a SentencePiece piece's
        # leading space) is only final once later tokens arrive; print what has become final.
        text = g.vocab.decode(ids)
        if text.startswith(shown) and not text.endswith("\ufffd"):
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
    text = g.vocab.decode(ids)
    sys.stdout.write((text[len(shown):] if text.startswith(shown) else "") + "\n")
    sys.stdout.flush()
    if args.verbose:
        _report_timing(stamps, len(g.prompt_ids))


def _report_timing(stamps: list[float], prompt_len: int) -> None:
    """stamps: start, then the wall time each token was yielded."""
    err = lambda s: print(f"[ifp] {s}", file=sys.stderr)
    if len(stamps) < 2:
        err("no token generated (EOS first)")
        return
    err(f"prefill: {prompt_len} tokens, first token after {stamps[1] - stamps[0]:.3f} s "
        f"(includes compiling prefill)")
    # The first decode step compiles; the rate is over the steps after it.
    if len(stamps) >= 4:
        n, dt = len(stamps) - 3, stamps[-1] - stamps[2]
        err(f"decode: {n / dt:.1f} tokens/s ({n} tokens in {dt:.3f} s, after the first step "
            f"which took {stamps[2] - stamps[1]:.3f} s with compilation)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `generate` on the `ifp` sub-parsers."""
    g = subparsers.add_parser(
        "generate", help="stream a continuation of a prompt (KV cache, mask chosen once)",
        description="Generates from a trained workdir (its predictor picks the FFN mask for the "
                    "prompt, as in evaluation) or an exported model directory, printing text "
                    "as tokens arrive. Greedy unless --temperature > 0.")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="an `ifp train` run directory")
    src.add_argument("--model", help="an exported model directory")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--eval-mask", choices=["hard", "lambda"], default=None,
                   help="override the run's pruning.eval_mask (--workdir only)")
    g.add_argument("--verbose", action="store_true",
                   help="mask choice and prefill / decode timing on stderr")
    g.set_defaults(fn=_cmd_generate)
    return g
