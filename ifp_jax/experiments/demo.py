"""`ifp demo`: the embedded end-to-end pipeline on CPU.

  1. dense source   (tiny_multiskill_dense)  skills + stdlib text, all FFN units
  2. IFP CPT        (tiny_multiskill_cpt)    LLM from 1, fresh predictor, chunk rule on text
  3. IFP SFT        (tiny_multiskill)        LLM + predictor from 2, skill mixture
  4. held-out exact match per task: dense source vs IFP (k = F/4, per-input masks, both the
     lambda-scaled and the 0/1 eval mask) -> table, DIR/demo_results.json, DIR/demo_results.png

Each stage lives in its own sub-directory and resumes like `ifp train`; rerunning the demo picks
up where it stopped.
"""

from __future__ import annotations

import json
import os
import time

import jax

from ifp_jax import experiments
from ifp_jax.config import apply_overrides, replace
from ifp_jax.eval.run import evaluate_workdir
from ifp_jax.train.loop import train

STAGES = (("dense", "tiny_multiskill_dense"), ("ifp_cpt", "tiny_multiskill_cpt"),
          ("ifp_sft", "tiny_multiskill"))


def _stage_config(name: str, workdir: str, overrides: list[str]):
    cfg = apply_overrides(experiments.get(name), overrides)
    t = cfg.train
    if name == "tiny_multiskill_cpt":
        t = replace(t, init_llm_from=os.path.join(workdir, "dense"))
    elif name == "tiny_multiskill":
        t = replace(t, init_llm_from=os.path.join(workdir, "ifp_cpt"),
                    init_predictor_from=os.path.join(workdir, "ifp_cpt"))
    return replace(cfg, train=t)


def _plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results["dense_source"]["per_task"])
    short = [n.replace("ifp_skill_", "") for n in names]
    arms = [("dense_source", "dense source (F)"), ("ifp_lambda", "IFP k=F/4, λ mask"),
            ("ifp_hard", "IFP k=F/4, 0/1 mask")]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.9), 4))
    for i, (key, label) in enumerate(arms):
        ax.bar(x + (i - 1) * 0.27, [results[key]["per_task"][n] for n in names], 0.27, label=label)
    ax.set_xticks(x, short, rotation=30, ha="right")
    ax.set_ylabel("held-out exact match")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"ifp demo: IFP/dense = {results['ifp_over_dense']:.2f}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(workdir: str, overrides: list[str] | None = None) -> dict:
    overrides = list(overrides or [])
    t0 = time.time()
    for sub, name in STAGES:
        cfg = _stage_config(name, workdir, overrides)
        print(f"\n=== {name} -> {os.path.join(workdir, sub)} ===", flush=True)
        train(cfg, os.path.join(workdir, sub))  # no eval hook: evaluated side by side below
    train_secs = time.time() - t0

    print("\n=== held-out evaluation ===", flush=True)
    _, dense = evaluate_workdir(os.path.join(workdir, "dense"), verbose=False)
    _, ifp_lam = evaluate_workdir(os.path.join(workdir, "ifp_sft"), eval_mask="lambda",
                                  verbose=False)
    _, ifp_hard = evaluate_workdir(os.path.join(workdir, "ifp_sft"), eval_mask="hard",
                                   verbose=False)
    ratio = ifp_lam.mean / dense.mean if dense.mean > 0 else float("nan")
    results = {
        "dense_source": {"per_task": dense.per_task, "mean": dense.mean},
        "ifp_lambda": {"per_task": ifp_lam.per_task, "mean": ifp_lam.mean,
                       "mask_stats": ifp_lam.mask_stats},
        "ifp_hard": {"per_task": ifp_hard.per_task, "mean": ifp_hard.mean,
                     "mask_stats": ifp_hard.mask_stats},
        "ifp_over_dense": ratio,
        "train_seconds": train_secs,
        "total_seconds": time.time() - t0,
    }
    if jax.process_index() == 0:
        width = max(len(n) for n in dense.per_task) + 2
        print(f"\n{'task':{width}s} {'dense':>7s} {'IFP λ':>7s} {'IFP 0/1':>7s}")
        for n in dense.per_task:
            print(f"{n:{width}s} {dense.per_task[n]:7.3f} {ifp_lam.per_task[n]:7.3f} "
                  f"{ifp_hard.per_task[n]:7.3f}")
        print(f"{'mean':{width}s} {dense.mean:7.3f} {ifp_lam.mean:7.3f} {ifp_hard.mean:7.3f}")
        print(f"IFP (k=F/4, λ mask) / dense source = {ratio:.3f}; mask overlap within task "
              f"{ifp_lam.mask_stats.get('mask/overlap_within_task', float('nan')):.2f} vs across "
              f"{ifp_lam.mask_stats.get('mask/overlap_across_tasks', float('nan')):.2f}; "
              f"{results['total_seconds'] / 60:.1f} min")
        with open(os.path.join(workdir, "demo_results.json"), "w") as f:
            json.dump(results, f, indent=2)
        _plot(results, os.path.join(workdir, "demo_results.png"))
        print(f"wrote {os.path.join(workdir, 'demo_results.json')} and demo_results.png")
    return results
