"""`ifp smollm2`'s report: DIR/report.md (per-task table, decode speed, bars), report.json and
report.png (mean exact match per row)."""

from __future__ import annotations

import json
import os


def format_markdown(report: dict) -> str:
    rows, lcpp = report["rows"], report.get("llama_cpp", {})
    tasks = list(next(iter(rows.values()))["per_task"])
    short = [t.replace("ifp_skill_", "") for t in tasks]
    f = report["d_ffn"]
    lines = [f"# SmolLM2-135M-Instruct pruned per task (F = {f})"
             + (" — REDUCED run (pipeline check, not figures)" if report["reduced"] else ""),
             "", "Held-out exact match per task.", "",
             "| model | " + " | ".join(short) + " | mean |", "|---|" + "---|" * (len(tasks) + 1)]
    for label, r in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{r['per_task'][t]:.3f}" for t in tasks)
                     + f" | **{r['mean']:.3f}** |")
    if "decode_tokens_per_s" not in report:  # written after each arm: serving comes later
        return "\n".join(lines + ["", "(in progress: export, llama.cpp and bars follow)"])
    if lcpp:
        cells = [f"{lcpp[t]['exact_match']:.3f}" if t in lcpp else "-" for t in tasks]
        mean = sum(v["exact_match"] for v in lcpp.values()) / len(lcpp)
        kind = report.get("gguf_type", "")
        lines.append(f"| exported per-task {kind} GGUF in llama.cpp, k = F/2 | "
                     + " | ".join(cells)
                     + f" | **{mean:.3f}** ({len(lcpp)} tasks) |")
        worst = max(report["agreement"].values())
        lines += ["", f"llama.cpp vs the masked model per task: largest difference {worst:.3f} "
                      f"(target <= 0.01: {'met' if report['agreement_met'] else 'NOT met'})."]
        if "quantised" in report:
            q = report["quantised"]
            sizes = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in q["file_bytes"].items())
            lines += ["", f"Quantised ({q['type']}) in llama.cpp, {q['task']}: exact match "
                          f"{q['exact_match']:.3f} (masked model {q['masked']:.3f}); GGUF sizes: "
                          f"{sizes}."]
    else:
        lines += ["", "llama.cpp: not run (llama-cpp-python not installed, or --no-llama-cpp)."]
    lines += ["", "| decode at batch 1 | tokens/s |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in report["decode_tokens_per_s"].items()]
    lines += ["", "| bar (mean exact match) | figure | met? |", "|---|---|---|"]
    lines += [f"| {b['bar']} | {b['figure']:+.3f} | {'yes' if b['met'] else 'no'} |"
              for b in report["bars"]]
    lines += _seed_lines(report)
    lines += ["", "| stage | steps | tokens | seconds |", "|---|---|---|---|"]
    lines += [f"| {name} | {s['steps']} | {s['tokens']:,} | {s['seconds']:.0f} |"
              for name, s in report["stages"].items()]
    return "\n".join(lines)


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (sample std, ddof 1, over sqrt(n); 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    se = (sum((x - mean) ** 2 for x in values) / (n - 1) / n) ** 0.5 if n > 1 else 0.0
    return mean, se


def _seed_lines(report: dict) -> list[str]:
    """The bars' rows per seed and the bars on the mean over seeds (with --seeds N > 1)."""
    if "bars_over_seeds" not in report:
        return []
    rows = {k: r["seed_means"] for k, r in report["rows"].items() if len(r["seed_means"]) > 1}
    n = len(next(iter(rows.values())))
    lines = ["", f"Over {n} seeds (seed 0 is the run above; the bars' arms repeated with "
                 f"train.seed = data.seed = 1..{n - 1}), mean exact match:", "",
             "| model | " + " | ".join(f"seed {i}" for i in range(n)) + " | mean ± SE |",
             "|---|" + "---|" * (n + 1)]
    for label, means in rows.items():
        m, se = mean_and_se(means)
        lines.append(f"| {label} | " + " | ".join(f"{x:.3f}" for x in means)
                     + f" | **{m:.3f} ± {se:.3f}** |")
    lines += ["", "| bar, mean over seeds of the paired difference | per seed | figure ± SE "
                  "| met? |", "|---|---|---|---|"]
    lines += [f"| {b['bar']} | " + ", ".join(f"{d:+.3f}" for d in b["per_seed"])
              + f" | {b['figure']:+.3f} ± {b['se']:.3f} | {'yes' if b['met'] else 'no'} |"
              for b in report["bars_over_seeds"]]
    return lines


def plot(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(report["rows"])
    means = [report["rows"][k]["mean"] for k in labels]
    if report.get("llama_cpp"):
        labels.append("per-task GGUF in llama.cpp, k = F/2")
        means.append(sum(v["exact_match"] for v in report["llama_cpp"].values())
                     / len(report["llama_cpp"]))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh(labels[::-1], means[::-1], color="tab:blue", label="seed 0")
    several = [(i, r["seed_means"]) for i, r in enumerate(report["rows"].values())
               if len(r.get("seed_means", [])) > 1]
    for i, seed_means in several:  # every seed's mean on the bar's row
        y = len(labels) - 1 - i
        ax.plot(seed_means, [y] * len(seed_means), "k.",
                label="each seed" if i == several[0][0] else None)
    if several:
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("held-out exact match (mean over tasks)")
    ax.set_xlim(0, 1)
    ax.set_title(f"SmolLM2-135M-Instruct, F = {report['d_ffn']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(workdir: str, report: dict, log=print) -> None:
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    text = format_markdown(report)
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write(text + "\n")
    plot(report, os.path.join(workdir, "report.png"))
    log(text)
