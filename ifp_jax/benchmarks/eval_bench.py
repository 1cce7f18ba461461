"""`ifp bench eval`: examples/s of the evaluation a run does at its end (exact match by greedy
KV-cache decoding over the mixture's instruction tasks), on random weights of the run's shape.

The same `evaluate` call twice in one process: the first compiles its program, the second is
what every later evaluation of the run (the periodic and the final one) costs. Loading the
examples (SeqIO, tokenizing) is timed on its own. Random weights never emit EOS, so every row
decodes until the response length or T - 1: the figure is the no-early-stop case; a trained
model that ends its answers stops sooner.

    ifp bench eval tiny_multiskill train.init_llm_from=IMPORT_DIR data.eval_examples_per_task=32
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np

from ifp_jax.config import ExperimentConfig


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def random_params(model, cfg: ExperimentConfig, mesh, seed: int = 0):
    """Params of the run's layout drawn on the host: N(0, 0.02) weights, unit norm scales."""
    from ifp_jax.train.state import params_layout
    rng = np.random.default_rng(seed)

    def draw(path, a):
        name = getattr(path[-1], "key", "")
        x = (np.ones(a.shape) if name == "scale" else np.zeros(a.shape) if name == "bias"
             else rng.normal(0.0, 0.02, a.shape))
        return jax.device_put(x.astype(a.dtype), a.sharding)

    return jax.tree_util.tree_map_with_path(draw, params_layout(model, cfg, mesh))


def run_eval_bench(cfg: ExperimentConfig, *, batch_size: int = 256, mask: str = "per-input"
                   ) -> dict:
    from ifp_jax import sharding as shd
    from ifp_jax.data import pipeline, tasks
    from ifp_jax.eval.evaluate import evaluate
    from ifp_jax.train.state import build_model

    tasks.register_all(cfg.data, cfg.predictor.max_prompt_len)
    names = pipeline.eval_task_names(cfg.data)
    mesh = shd.make_mesh(cfg.mesh)
    model = build_model(cfg)
    params = random_params(model, cfg, mesh)
    llm = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params["decoder"]))
    mode = "dense" if mask == "dense" else cfg.pruning.mode

    t0 = time.perf_counter()
    examples = [pipeline.make_eval_examples(cfg.data, cfg.predictor.max_prompt_len, n,
                                            cfg.data.eval_examples_per_task) for n in names]
    load_s = time.perf_counter() - t0
    total = sum(len(e["decoder_loss_weights"]) for e in examples)
    steps = int(max(e["decoder_loss_weights"].sum(1).max() for e in examples))
    _log(f"{len(names)} tasks, {total} examples, up to {steps} decoded tokens each; LLM "
         f"{llm / 1e6:.2f}M params, d_model {cfg.model.d_model}, {cfg.model.n_layers} layers, "
         f"vocab {cfg.model.vocab_size}; loading the examples took {load_s:.1f} s")
    calls = []
    for label in ("first (compiles)", "second"):
        t0 = time.perf_counter()
        result = evaluate(model, params, cfg, mesh, task_names=names, mode=mode,
                          batch_size=batch_size)
        calls.append(time.perf_counter() - t0)
        _log(f"{label}: {calls[-1]:.1f} s")
    return {"tasks": len(names), "examples": total, "max_decoded_tokens": steps,
            "llm_params": llm, "d_model": cfg.model.d_model, "n_layers": cfg.model.n_layers,
            "vocab_size": cfg.model.vocab_size, "seq_len": cfg.data.seq_len, "mode": mode,
            "batch_size": batch_size, "load_s": load_s, "first_s": calls[0],
            "second_s": calls[1], "examples_per_s": total / calls[1],
            "examples_per_s_first": total / calls[0], "mean_exact_match": result.mean,
            "backend": jax.default_backend()}


def format_report(r: dict) -> str:
    return "\n".join([
        f"ifp bench eval: {r['tasks']} tasks x {r['examples'] // max(r['tasks'], 1)} examples "
        f"(seq_len {r['seq_len']}, up to {r['max_decoded_tokens']} decoded tokens), LLM "
        f"{r['llm_params'] / 1e6:.1f}M params, mask {r['mode']}, batch {r['batch_size']}, "
        f"{r['backend']}",
        f"  loading the examples  {r['load_s']:8.1f} s",
        f"  first evaluation      {r['first_s']:8.1f} s  {r['examples_per_s_first']:7.2f} "
        f"examples/s (with compilation)",
        f"  second evaluation     {r['second_s']:8.1f} s  {r['examples_per_s']:7.2f} examples/s"])
