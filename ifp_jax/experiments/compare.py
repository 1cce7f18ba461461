"""`ifp compare`: IFP against the baselines at equal budgets after one shared dense source.

Per seed (train.seed = data.seed = s), in DIR/seed<s>/<arm>/<stage>:

  source       the dense source (the comparison's source experiment), shared by every arm
  dense_full   the source continued densely on the IFP stages' data (CPT, then SFT)
  ifp          IFP CPT + SFT from the source (the paper's method); evaluated per input and per
               task (one mask per task from its instruction text)
  ifp_instruction  the same stages, but the predictor reads each task's bare instruction text
               instead of the prompt (data.predictor_instruction_rate=1); evaluated per task
  static       the same stages with a learned input-independent mask (same SoftTopK, same k)
  static_distill  (with --distill-static) static plus top-k KL distillation from the source:
               the paper's prune+distill baseline
  dense_small  a dense model with d_ffn = k trained from scratch on the source's data and budget,
               then on the IFP stages' data: the source's steps + the IFP stages' steps
and training-free GRIFFIN selection (top-k units by the LLM's own activations on the prompt) on
the source and on dense_full. Every arm after the source sees the same batches (same stage
experiments, same seeds) for the same steps; the report states each arm's tokens and time.

Each stage resumes like `ifp train`, and a finished stage (DIR/.../<stage>/stage_done.json) or
evaluation (its eval_*.json) is not redone: rerunning the command only adds what is missing.
Writes DIR/report.md (a per-task table in the style of the paper's Table 1,
docs/method.md#results-the-paper-reports: mean and spread over seeds), the bars of issue 7
with their figures, and DIR/report.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import time

from ifp_jax import experiments
from ifp_jax.config import ConfigError, ExperimentConfig, apply_overrides, replace

# A comparison: its source, CPT and SFT stage experiments (registered names); a comparison whose
# mixture has no text has no CPT stage (None): every arm then goes from the source to SFT.
COMPARISONS = {"tiny_facts": ("tiny_facts_dense", None, "tiny_facts"),
               "tiny_multiskill": ("tiny_multiskill_dense", "tiny_multiskill_cpt",
                                   "tiny_multiskill")}
DEFAULT_COMPARISON = "tiny_facts"
STAGE_DONE = "stage_done.json"
K_BINDS_GAP = 0.05  # dense-full ahead of dense-small by this much: k binds


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # sub-directory of the arm
    role: str  # 'source', 'cpt' or 'sft': which stage experiment it runs
    mode: str  # pruning.mode
    init_llm: str = ""  # 'shared_source' or a stage name of the same arm
    init_predictor: str = ""
    small: bool = False  # model.d_ffn = k
    distill_from: str = ""  # a stage name (or 'shared_source') to distil from (distill.teacher)
    overrides: tuple[str, ...] = ()  # on top of the stage experiment's config and the user's


_INSTRUCTION = ("data.predictor_instruction_rate=1.0",)
ARMS = {
    "source": (Stage("source", "source", "dense"),),
    "dense_full": (Stage("cpt", "cpt", "dense", "shared_source"),
                   Stage("sft", "sft", "dense", "cpt")),
    "ifp": (Stage("cpt", "cpt", "soft", "shared_source"),
            Stage("sft", "sft", "soft", "cpt", "cpt")),
    "static": (Stage("cpt", "cpt", "static", "shared_source"),
               Stage("sft", "sft", "static", "cpt", "cpt")),
    # IFP whose predictor reads each task's bare instruction only
    # (docs/findings.md#what-the-predictor-reads): its masks are per task by construction,
    # evaluated per task.
    "ifp_instruction": (Stage("cpt", "cpt", "soft", "shared_source", overrides=_INSTRUCTION),
                        Stage("sft", "sft", "soft", "cpt", "cpt", overrides=_INSTRUCTION)),
    # The paper's prune+distill baseline: static, plus top-k KL distillation from the source.
    "static_distill": (Stage("cpt", "cpt", "static", "shared_source",
                             distill_from="shared_source"),
                       Stage("sft", "sft", "static", "cpt", "cpt", distill_from="shared_source")),
    "dense_small": (Stage("source", "source", "dense", small=True),
                    Stage("cpt", "cpt", "dense", "source", small=True),
                    Stage("sft", "sft", "dense", "cpt", small=True)),
}
OPTIONAL_ARMS = ("static_distill",)  # run only when asked for (ifp compare --distill-static)
# Report rows: (label, arm, ifp eval --mask, --eval-mask or None for the run's own).
EVALS = (
    ("dense source", "source", "dense", None),
    ("dense source + GRIFFIN", "source", "griffin", None),
    ("dense-full", "dense_full", "dense", None),
    ("dense-full + GRIFFIN", "dense_full", "griffin", None),
    ("dense-small (F = k)", "dense_small", "dense", None),
    ("static (lambda)", "static", "static", "lambda"),
    ("static (0/1)", "static", "static", "hard"),
    ("static, distilled from the source (lambda)", "static_distill", "static", "lambda"),
    ("IFP per-input (lambda)", "ifp", "per-input", "lambda"),
    ("IFP per-input (0/1)", "ifp", "per-input", "hard"),
    ("IFP per-task (lambda)", "ifp", "per-task", "lambda"),
    ("IFP per-task, instruction-trained (lambda)", "ifp_instruction", "per-task", "lambda"),
    ("IFP per-task, instruction-trained (0/1)", "ifp_instruction", "per-task", "hard"),
)


def _stage_experiments(comparison: str) -> dict[str, str | None]:
    """{'source'|'cpt'|'sft': registered experiment name (cpt may be None)}."""
    if comparison not in COMPARISONS:
        raise ConfigError(f"unknown comparison '{comparison}'; known: {', '.join(COMPARISONS)}")
    return dict(zip(("source", "cpt", "sft"), COMPARISONS[comparison]))


def arm_stages(comparison: str, arm: str) -> tuple[Stage, ...]:
    """The arm's stages in this comparison: without a CPT stage, what would have started from
    the CPT stage starts from what the CPT stage started from (a fresh predictor for IFP)."""
    if _stage_experiments(comparison)["cpt"] is not None:
        return ARMS[arm]
    removed = {st.name: st for st in ARMS[arm] if st.role == "cpt"}
    out = []
    for st in ARMS[arm]:
        if st.role == "cpt":
            continue
        llm = removed[st.init_llm].init_llm if st.init_llm in removed else st.init_llm
        pred = (removed[st.init_predictor].init_predictor if st.init_predictor in removed
                else st.init_predictor)
        out.append(dataclasses.replace(st, init_llm=llm, init_predictor=pred))
    return tuple(out)


def stage_config(comparison: str, stage: Stage, seed: int, overrides: list[str],
                 dirs: dict[str, str]) -> ExperimentConfig:
    """The stage's experiment + overrides, with its mode, seed, width and init sources."""
    names = _stage_experiments(comparison)
    cfg = apply_overrides(experiments.get(names[stage.role]), overrides + list(stage.overrides))
    k = cfg.pruning.keep_k
    cfg = replace(cfg, pruning=replace(cfg.pruning, mode=stage.mode),
                  data=replace(cfg.data, seed=seed),
                  train=replace(cfg.train, seed=seed,
                                init_llm_from=dirs.get(stage.init_llm, ""),
                                init_predictor_from=dirs.get(stage.init_predictor, "")),
                  distill=replace(cfg.distill, teacher=dirs.get(stage.distill_from, "")))
    if stage.small:
        cfg = replace(cfg, model=replace(cfg.model, d_ffn=k))
    return cfg


def config_digest(cfg: ExperimentConfig) -> str:
    """A short hash of the resolved config: a finished stage is reused only under the same one.
    Hashes only the fields that differ from the defaults, so a field added to the config system
    later (at its default) does not invalidate finished stages."""
    text = json.dumps(_non_defaults(dataclasses.asdict(cfg), dataclasses.asdict(
        ExperimentConfig())), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _non_defaults(values: dict, defaults: dict) -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            value = _non_defaults(value, defaults[key])
            if value:
                out[key] = value
        elif key not in defaults or defaults[key] != value:
            out[key] = value
    return out


def _train_stage(cfg: ExperimentConfig, workdir: str) -> dict:
    """Trains (or resumes) one stage unless it finished before; returns its record."""
    done = os.path.join(workdir, STAGE_DONE)
    if os.path.exists(done):
        with open(done) as f:
            record = json.load(f)
        if record.get("config_digest", config_digest(cfg)) != config_digest(cfg):
            raise ConfigError(f"{workdir} finished under another config (changed experiment or "
                              f"overrides); use a new --workdir or delete that stage")
        return record
    from ifp_jax.train.loop import train
    t0 = time.time()
    train(cfg, workdir)
    record = {"seconds": time.time() - t0, "steps": cfg.train.steps,
              "tokens": cfg.train.steps * cfg.data.global_batch_size * cfg.data.seq_len,
              "d_ffn": cfg.model.d_ffn, "keep_k": cfg.pruning.keep_k, "mode": cfg.pruning.mode,
              "config_digest": config_digest(cfg)}
    with open(done, "w") as f:
        json.dump(record, f)
    return record


def _evaluate(workdir: str, mask: str, eval_mask: str | None) -> dict:
    """An evaluation's record (eval/run.py's JSON), computed once."""
    from ifp_jax.config import load_workdir_config
    from ifp_jax.eval.run import evaluate_workdir, results_path
    run_eval_mask = eval_mask or load_workdir_config(workdir).pruning.eval_mask
    path = results_path(workdir, mask, run_eval_mask)
    if not os.path.exists(path):
        evaluate_workdir(workdir, mask=mask, eval_mask=eval_mask, verbose=False)
    with open(path) as f:
        return json.load(f)


def active_ffn_params(cfg: ExperimentConfig, units: int) -> int:
    """FFN weights one token uses: gate, up and down of `units` units in every layer."""
    return 3 * cfg.model.d_model * units * cfg.model.n_layers


def run_compare(workdir: str, comparison: str = DEFAULT_COMPARISON, seeds: int = 2,
                overrides: list[str] | None = None, *, log=print, distill_static: bool = False,
                jobs: int = 1, only_seed: int | None = None) -> dict | None:
    """Trains and evaluates every arm for seeds 0..seeds-1, then writes the report. With
    `jobs` > 1 the seeds run in that many `ifp compare --only-seed S` processes at once (on a
    CPU whose cores a tiny model cannot keep busy, two seeds side by side finish sooner than
    one after the other); `only_seed` runs that seed alone and writes no report."""
    overrides = list(overrides or [])
    arms = [a for a in ARMS if a not in OPTIONAL_ARMS or distill_static]
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if jobs > 1 and only_seed is None and seeds > 1:
        _seeds_in_processes(workdir, comparison, seeds, overrides,
                            distill_static=distill_static, jobs=jobs, log=log)
    runs: dict[int, dict] = {}
    for seed in range(seeds) if only_seed is None else [only_seed]:
        runs[seed] = _run_seed(workdir, comparison, seed, overrides, arms=arms, log=log)
    if only_seed is not None:
        return None
    source_cfg = stage_config(comparison, ARMS["source"][0], 0, overrides, {})
    report = summarize(runs, source_cfg)
    write_report(workdir, report)
    log(format_markdown(report))
    return report


def _run_seed(workdir: str, comparison: str, seed: int, overrides: list[str], *,
              arms: list[str], log) -> dict:
    """One seed: every arm's stages trained (or reused), then every evaluation."""
    base = os.path.join(workdir, f"seed{seed}")
    stages: dict[str, dict] = {}
    for arm in arms:
        dirs = {"shared_source": os.path.join(base, "source", "source")}
        stages[arm], chain = {}, arm_stages(comparison, arm)
        for stage in chain:
            dirs[stage.name] = os.path.join(base, arm, stage.name)
            cfg = stage_config(comparison, stage, seed, overrides, dirs)
            log(f"=== seed {seed} {arm}/{stage.name} ({cfg.name}, mode {stage.mode}"
                f"{', d_ffn ' + str(cfg.model.d_ffn) if stage.small else ''}) ===")
            stages[arm][stage.name] = _train_stage(cfg, dirs[stage.name])
        stages[arm]["final"] = dirs[chain[-1].name]
    evals = {}
    for label, arm, mask, eval_mask in EVALS:
        if arm not in arms:
            continue
        log(f"=== seed {seed} eval {label} ===")
        evals[label] = _evaluate(stages[arm]["final"], mask, eval_mask)
    return {"stages": stages, "evals": evals}


def _seeds_in_processes(workdir: str, comparison: str, seeds: int, overrides: list[str], *,
                        distill_static: bool, jobs: int, log) -> None:
    """Each seed in its own `ifp compare --only-seed S` process, `jobs` at a time; their output
    goes to DIR/seed<S>.log."""
    import subprocess
    import sys
    os.makedirs(workdir, exist_ok=True)
    pending, running = list(range(seeds)), []
    while pending or running:
        while pending and len(running) < jobs:
            seed = pending.pop(0)
            cmd = [sys.executable, "-m", "ifp_jax", "compare", comparison, "--workdir",
                   workdir, "--seeds", str(seeds), "--only-seed", str(seed), *overrides]
            cmd += ["--distill-static"] if distill_static else []
            out = open(os.path.join(workdir, f"seed{seed}.log"), "a")
            log(f"=== seed {seed}: a process of its own, log {out.name} ===")
            running.append((seed, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT),
                            out))
        time.sleep(1.0)
        for item in list(running):
            seed, proc, out = item
            if proc.poll() is not None:
                out.close()
                running.remove(item)
                if proc.returncode:
                    for _, other, _ in running:
                        other.terminate()
                    raise ConfigError(f"seed {seed} failed (exit {proc.returncode}); see "
                                      f"{out.name}; rerunning resumes")


def _mean_sd(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def summarize(runs: dict[int, dict], source_cfg: ExperimentConfig) -> dict:
    """Per row: per-task and overall exact match (mean, sd over seeds); budgets per arm."""
    f, k = source_cfg.model.d_ffn, source_cfg.pruning.keep_k
    rows = {}
    for label, arm, mask, _ in EVALS:
        if label not in next(iter(runs.values()))["evals"]:  # an optional arm not run
            continue
        per_seed = [run["evals"][label] for run in runs.values()]
        tasks = list(per_seed[0]["per_task"])
        units = f if (arm in ("source", "dense_full") and mask == "dense") else k
        run0 = next(iter(runs.values()))["stages"]
        own = {name: st["tokens"] for name, st in run0[arm].items() if name != "final"}
        shared = run0["source"]["source"]["tokens"]
        if arm == "source":
            total, after = shared, 0
        elif arm == "dense_small":  # its own source stage replaces the shared one
            total, after = sum(own.values()), sum(own.values()) - own["source"]
        else:
            total, after = shared + sum(own.values()), sum(own.values())
        seconds = [sum(st["seconds"] for name, st in run["stages"][arm].items()
                       if name != "final") for run in runs.values()]
        rows[label] = {
            "arm": arm, "mask": mask,
            "per_task": {t: _mean_sd([e["per_task"][t] for e in per_seed]) for t in tasks},
            "mean": _mean_sd([e["mean"] for e in per_seed]),
            "active_ffn_params": active_ffn_params(source_cfg, units),
            "train_tokens_total": total,
            "train_tokens_after_source": after,
            "train_seconds": statistics.fmean(seconds),
        }
    full, small = rows["dense-full"]["mean"]["mean"], rows["dense-small (F = k)"]["mean"]["mean"]
    return {"seeds": len(runs), "d_ffn": f, "keep_k": k, "rows": rows,
            "k_binds": {"dense_full_minus_dense_small": full - small},
            "bars": bars(rows)}


_IT = "IFP per-task, instruction-trained (lambda)"
# Issue 7's bars, each `a - b >= threshold` in mean exact match (differences of seed means).
BARS = (("IFP per-input (lambda)", "static (lambda)", 0.05),
        ("IFP per-input (lambda)", "dense-small (F = k)", 0.05),
        ("IFP per-input (lambda)", "dense source + GRIFFIN", 0.05),
        ("IFP per-input (lambda)", "dense-full + GRIFFIN", 0.05),
        ("IFP per-input (lambda)", "dense-full", -0.03),
        ("IFP per-task (lambda)", "IFP per-input (lambda)", -0.02),
        (_IT, "static (lambda)", 0.05),
        (_IT, "dense-small (F = k)", 0.05),
        (_IT, "dense source + GRIFFIN", 0.05),
        (_IT, "dense-full + GRIFFIN", 0.05),
        (_IT, "dense-full", -0.03))


def bars(rows: dict) -> list[dict]:
    """Each bar: its figure (a - b) and whether it is met."""
    out = []
    for a, b, threshold in BARS:
        diff = rows[a]["mean"]["mean"] - rows[b]["mean"]["mean"]
        out.append({"bar": f"{a} - {b} >= {threshold:+.2f}", "figure": diff,
                    "met": diff >= threshold})
    return out


def format_markdown(report: dict) -> str:
    rows = report["rows"]
    tasks = list(next(iter(rows.values()))["per_task"])
    short = [t.replace("ifp_skill_", "").replace("ifp_user_", "").replace("ifp_fact_", "")
             for t in tasks]
    cell = lambda m: f"{m['mean']:.3f} ± {m['sd']:.3f}" if m["n"] > 1 else f"{m['mean']:.3f}"
    lines = [f"# ifp compare: k = {report['keep_k']} of {report['d_ffn']} FFN units per layer, "
             f"{report['seeds']} seed(s)", "",
             "Held-out exact match (mean ± sd over seeds).", "",
             "| arm | " + " | ".join(short) + " | mean |",
             "|---|" + "---|" * (len(tasks) + 1)]
    for label, r in rows.items():
        lines.append(f"| {label} | " + " | ".join(cell(r["per_task"][t]) for t in tasks)
                     + f" | **{cell(r['mean'])}** |")
    lines += ["", "| arm | active FFN params | training tokens (total) | after the source | "
                  "train time (s, mean over seeds) |", "|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['active_ffn_params']:,} | {r['train_tokens_total']:,} | "
                     f"{r['train_tokens_after_source']:,} | {r['train_seconds']:.0f} |")
    lines += ["", "| bar (mean exact match) | figure | met? |", "|---|---|---|"]
    lines += [f"| {b['bar']} | {b['figure']:+.3f} | {'yes' if b['met'] else 'no'} |"
              for b in report["bars"]]
    gap = report["k_binds"]["dense_full_minus_dense_small"]
    verdict = ("yes: the FFN capacity that pruning removes matters on these tasks"
               if gap >= K_BINDS_GAP else
               f"no (below {K_BINDS_GAP:.2f}): at this budget the removed FFN capacity does not "
               f"decide these tasks, so the arms cannot be told apart by pruning quality")
    lines += ["", f"Does k bind? dense-full - dense-small = {gap:+.3f} mean exact match: "
                  f"{verdict}."]
    return "\n".join(lines)


def write_report(workdir: str, report: dict) -> None:
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write(format_markdown(report) + "\n")
