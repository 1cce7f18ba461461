"""Which units do tasks keep? Overlap heatmaps like the paper's Figure 3
(docs/method.md#mask-analysis), and collapse over steps.

overlap(a, b) = |kept(a) ∩ kept(b)| / k for two examples' masks in one layer. For tasks s, t the
heatmap cell is the mean over pairs of distinct examples (a in s, b in t): the diagonal is the
within-task overlap (1.0 for per-task masks), off-diagonal cells the across-task overlap; mask
collapse (docs/findings.md#mask-collapse) shows as off-diagonal cells as high as the diagonal.
Layer groups: first, middle, last and the mean over all layers.

Written by `ifp eval` for masked evaluations: DIR/masks_<mask>_<eval mask>/overlap.json,
overlap_<group>.png, and collapse.png from DIR/metrics.jsonl (the signals over training steps).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

from ifp_jax.storage import paths

COLLAPSE_SIGNALS = ("mask/overlap_within_task", "mask/overlap_across_tasks",
                    "mask/units_used_frac", "mask/lambda_kept_mean")


def layer_groups(n_layers: int) -> dict[str, list[int]]:
    return {"first": [0], "middle": [n_layers // 2], "last": [n_layers - 1],
            "all": list(range(n_layers))}


def overlap_matrices(masks: np.ndarray, task_of: np.ndarray, n_tasks: int) -> dict:
    """masks [N, L, F] (non-zero = kept, k per row and layer), task_of [N] -> {group: [T, T]}
    mean pairwise overlap of distinct examples, NaN where a task has no such pair."""
    kept = (np.asarray(masks) != 0).astype(np.float64)
    n, n_layers, _ = kept.shape
    k = kept[0, 0].sum()
    onehot = (np.asarray(task_of)[:, None] == np.arange(n_tasks)[None, :]).astype(np.float64)
    counts = onehot.sum(0)
    pairs = np.outer(counts, counts) - np.diag(counts)  # distinct (a, b) pairs per task pair
    out = {}
    for group, layers in layer_groups(n_layers).items():
        total = np.zeros((n_tasks, n_tasks))
        for layer in layers:
            gram = kept[:, layer] @ kept[:, layer].T  # [N, N] shared units
            np.fill_diagonal(gram, 0.0)
            total += onehot.T @ gram @ onehot
        with np.errstate(invalid="ignore", divide="ignore"):
            out[group] = total / (len(layers) * k * pairs)
    return out


def _plot_overlap(matrix: np.ndarray, names: list[str], title: str, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    size = 1.5 + 0.55 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if matrix[i, j] < 0.6 else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="kept-unit overlap")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_collapse_signals(metrics_path: str, path: str) -> bool:
    """The collapse signals of DIR/metrics.jsonl over training steps -> PNG; False if none."""
    series: dict[str, list[tuple[int, float]]] = {k: [] for k in COLLAPSE_SIGNALS}
    with io.StringIO(paths.read_text(metrics_path)) as f:
        for line in f:
            row = json.loads(line)
            for key in COLLAPSE_SIGNALS:
                if key in row and "step" in row:
                    series[key].append((row["step"], row[key]))
    series = {k: v for k, v in series.items() if v}
    if not series:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, label=key.split("/", 1)[1])
    ax.set_xlabel("step")
    ax.set_ylim(0.0, 1.05)
    ax.set_title("mask collapse signals (training batches)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_mask_report(out_dir: str, *, masks: np.ndarray, task_of: np.ndarray,
                      names: list[str], title: str, metrics_path: str | None = None) -> dict:
    """overlap.json + one heatmap per layer group (+ collapse.png) into out_dir; returns the
    JSON object (group -> {'matrix', 'within', 'across'}, plus 'tasks')."""
    os.makedirs(out_dir, exist_ok=True)
    mats = overlap_matrices(masks, task_of, len(names))
    report = {"tasks": names}
    off = ~np.eye(len(names), dtype=bool)
    for group, m in mats.items():
        report[group] = {"matrix": np.where(np.isfinite(m), m, None).tolist(),
                         "within": float(np.nanmean(np.diag(m))),
                         "across": float(np.nanmean(m[off])) if len(names) > 1 else None}
        _plot_overlap(m, names, f"{title}: {group} layer(s)",
                      os.path.join(out_dir, f"overlap_{group}.png"))
    with open(os.path.join(out_dir, "overlap.json"), "w") as f:
        json.dump(report, f, indent=2)
    if metrics_path and paths.exists(metrics_path):
        plot_collapse_signals(metrics_path, os.path.join(out_dir, "collapse.png"))
    return report
