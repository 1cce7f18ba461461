"""Mask overlap heatmaps (docs/method.md#mask-analysis) against a brute-force count, and files."""

import json
import os

import numpy as np

from ifp_jax.eval.mask_analysis import overlap_matrices, plot_collapse_signals, write_mask_report


def _random_masks(rng, n, n_layers, f, k):
    masks = np.zeros((n, n_layers, f), np.float32)
    for i in range(n):
        for layer in range(n_layers):
            masks[i, layer, rng.choice(f, k, replace=False)] = rng.uniform(0.1, 1.0, k)
    return masks


def test_overlap_matrices_equal_a_brute_force_count():
    rng = np.random.default_rng(0)
    masks, task_of = _random_masks(rng, 9, 3, 12, 4), np.array([0, 1, 2, 0, 1, 2, 0, 0, 1])
    got = overlap_matrices(masks, task_of, 3)
    for group, layers in {"first": [0], "middle": [1], "last": [2], "all": [0, 1, 2]}.items():
        want = np.zeros((3, 3))
        for s in range(3):
            for t in range(3):
                vals = [np.mean([np.sum((masks[a, la] != 0) & (masks[b, la] != 0)) / 4
                                 for la in layers])
                        for a in range(9) for b in range(9)
                        if a != b and task_of[a] == s and task_of[b] == t]
                want[s, t] = np.mean(vals)
        np.testing.assert_allclose(got[group], want, err_msg=group)


def test_report_files_and_one_mask_per_task_gives_a_diagonal_of_one(tmp_path):
    rng = np.random.default_rng(1)
    per_task = _random_masks(rng, 3, 2, 16, 4)
    task_of = np.array([0, 0, 1, 1, 2, 2])
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "mask/overlap_within_task": 0.5,
                                           "mask/overlap_across_tasks": 0.2}) + "\n"
                               for s in (10, 20)))
    report = write_mask_report(str(tmp_path / "r"), masks=per_task[task_of], task_of=task_of,
                               names=["a", "b", "c"], title="test", metrics_path=str(metrics))
    assert report["all"]["within"] == 1.0 and report["all"]["across"] < 1.0
    for name in ("overlap.json", "overlap_first.png", "overlap_middle.png", "overlap_last.png",
                 "overlap_all.png", "collapse.png"):
        assert os.path.getsize(tmp_path / "r" / name) > 0, name
    (tmp_path / "empty.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    assert not plot_collapse_signals(str(tmp_path / "empty.jsonl"), str(tmp_path / "x.png"))
