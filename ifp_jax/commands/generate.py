"""`ifp generate`: stream the continuation of one prompt, from a trained run or an exported model.

    ifp generate (--workdir DIR | --model DIR) --prompt TEXT [--chat] [--max-new-tokens N]
        [--temperature T] [--top-p P] [--seed S] [--eval-mask hard|lambda] [--verbose]

--model takes an `ifp export` output (or its orbax/) or an `ifp import-hf` directory.

What the model reads (the prompt formatted as in training, the mask chosen once) is
ifp_jax/serve/generator.py; this module checks the flags, streams the text and reports timing.
"""

from __future__ import annotations

import argparse
import math
import sys
import time


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
                          "folded into its weights (an imported model has none)")


def run(args) -> None:
    from ifp_jax.infer.generate import stream
    from ifp_jax.hf.import_layout import is_import_dir
    from ifp_jax.serve.generator import from_exported, from_import, from_workdir

    check_settings(args)
    if args.workdir:
        g = from_workdir(args.workdir, args.prompt, args.eval_mask, args.chat)
    elif is_import_dir(args.model):
        g = from_import(args.model, args.prompt, args.chat)
    else:
        g = from_exported(args.model, args.prompt, args.chat)
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
    src.add_argument("--model", help="an exported model directory or an `ifp import-hf` "
                                     "directory")
    g.add_argument("--prompt", required=True)
    g.add_argument("--chat", action="store_true",
                   help="write the prompt as a user message with the tokenizer's chat template "
                        "(implied for a run trained with data.chat_template)")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--eval-mask", choices=["hard", "lambda"], default=None,
                   help="override the run's pruning.eval_mask (--workdir only)")
    g.add_argument("--verbose", action="store_true",
                   help="mask choice and prefill / decode timing on stderr")
    g.set_defaults(fn=run)
    return g
