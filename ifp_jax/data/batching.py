"""Assembling one host's rows of the global batch at step s, vectorised per task.

`BatchAssembler(step)` is a pure function of the config and `step`: the mixing order comes from
a grain MapDataset (random access), the rows from each task's split (in memory or prepared on
disk: data/prepared.py) read with one call per task, the instruction swap from a generator
seeded with (data.seed, step). It holds no TensorFlow or JAX object, so it pickles into grain
worker processes (`data.num_workers`), each of which assembles whole batches.
"""

from __future__ import annotations

from typing import Protocol

import grain
import numpy as np


class Split(Protocol):
    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...


class BatchAssembler:
    """step -> {contract arrays [n, ...], task_id [n]} for rows [offset, offset + n) of global
    batch `step` (n = host batch size)."""

    def __init__(self, splits: list[Split | None], rates: list[float], *, seed: int,
                 global_batch_size: int, rows: tuple[int, int], instruction_rate: float,
                 instruction_tokens: list[np.ndarray | None]):
        parts, weights = [], []
        for task_id, (split, rate) in enumerate(zip(splits, rates)):
            if split is None:  # rate 0: listed for stable task ids, never sampled nor loaded
                continue
            # Per-task seed: tasks do not share a permutation; each epoch is reshuffled.
            parts.append(grain.MapDataset.range(len(split)).shuffle(seed=seed * 1000 + task_id)
                         .repeat().map(lambda j, t=task_id: (t, j)))
            weights.append(rate)
        self._mixed = grain.MapDataset.mix(parts, weights=weights)
        self._splits = splits
        self._seed = seed
        self._global_batch_size = global_batch_size
        self._offset, self._n = rows[0], rows[1] - rows[0]
        self._instruction_rate = instruction_rate
        self._instruction_tokens = instruction_tokens

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        start = step * self._global_batch_size + self._offset
        picks = [self._mixed[i] for i in range(start, start + self._n)]
        task_ids = np.fromiter((t for t, _ in picks), np.int32, self._n)
        indices = np.fromiter((j for _, j in picks), np.int64, self._n)
        batch: dict[str, np.ndarray] = {}
        for task_id in np.unique(task_ids):
            rows = np.nonzero(task_ids == task_id)[0]
            part = self._splits[task_id].read(indices[rows])
            for key, value in part.items():
                if key not in batch:
                    batch[key] = np.empty((self._n,) + value.shape[1:], value.dtype)
                batch[key][rows] = value
        batch["task_id"] = task_ids
        if self._instruction_rate > 0:
            self._swap_in_instructions(batch, step)
        return batch

    def _swap_in_instructions(self, batch: dict[str, np.ndarray], step: int) -> None:
        """Replaces the predictor input of a seeded `instruction_rate` fraction of rows by their
        task's instruction text (the same draw on every host: drawn for the global batch, then
        sliced)."""
        draws = np.random.default_rng([self._seed, step]).random(self._global_batch_size)
        draws = draws[self._offset:self._offset + self._n]
        for row in np.nonzero(draws < self._instruction_rate)[0]:
            tokens = self._instruction_tokens[batch["task_id"][row]]
            if tokens is not None:
                batch["predictor_tokens"][row] = tokens
                batch["predictor_truncated"][row] = 0
