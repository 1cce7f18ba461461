"""`ifp data inspect`: what training will see, per task: counts, token statistics, truncation,
and examples decoded as text (the LLM's prompt and response, the predictor's view, the loss
mask), from memory (SeqIO) or from a prepared directory."""

from __future__ import annotations

import numpy as np

from ifp_jax.config import DataConfig
from ifp_jax.data import prepared, tasks
from ifp_jax.vocab.seqio_vocab import get_vocabulary

STATS_SAMPLE = 10_000  # statistics over at most this many examples per task, evenly spaced


def _split(data_cfg: DataConfig, predictor_len: int, task: str, split: str, manifest):
    if manifest is not None:
        return prepared.PreparedSplit(data_cfg.prepared_dir, task, split, predictor_len,
                                      data_cfg.seq_len, manifest)
    from ifp_jax.data.pipeline import _contract_arrays
    return prepared.InMemorySplit(_contract_arrays(task, split, predictor_len, data_cfg))


def _text(vocab, ids: np.ndarray) -> str:
    return vocab.decode([int(i) for i in ids if i != 0])


def inspect(data_cfg: DataConfig, predictor_len: int, split: str = "train",
            examples: int = 2) -> str:
    """A plain-text report of every task of data_cfg.mixture (see the module doc)."""
    manifest = None
    if data_cfg.prepared_dir:
        manifest = prepared.load_manifest(data_cfg.prepared_dir)
        prepared.check_fingerprint(data_cfg.prepared_dir, manifest,
                                   tasks.mixture_fingerprint(data_cfg, predictor_len))
    tasks.register_all(data_cfg, predictor_len)
    llm, pred = get_vocabulary(data_cfg.vocabulary), get_vocabulary(data_cfg.predictor_vocabulary)
    source = f"prepared {data_cfg.prepared_dir}" if manifest else "in memory (SeqIO)"
    lines = [f"mixture {data_cfg.mixture}, split {split}, {source}; seq_len "
             f"{data_cfg.seq_len}, predictor prompt {predictor_len}"]
    for task, rate in tasks.mixture_rates(data_cfg).items():
        data = _split(data_cfg, predictor_len, task, split, manifest)
        n = len(data)
        sample = np.unique(np.linspace(0, n - 1, min(n, STATS_SAMPLE)).astype(np.int64))
        rows = data.read(sample)
        weights = rows["decoder_loss_weights"]
        length = (rows["decoder_target_tokens"] != 0).sum(1)
        share = f"of a sample of {len(sample):,}" if len(sample) < n else "of all"
        lines += ["", f"== {task}: {n:,} examples, rate {rate:g}",
                  f"   tokens per example {length.mean():.1f} mean / {length.max()} max, loss "
                  f"tokens {weights.sum(1).mean():.1f} mean; truncated {share}: decoder "
                  f"{int(rows['decoder_truncated'].sum())}, predictor "
                  f"{int(rows['predictor_truncated'].sum())}"]
        for i in range(min(examples, n)):
            w = weights[i] > 0
            targets = rows["decoder_target_tokens"][i]
            lines += [f"   [{int(sample[i])}] prompt    {_text(llm, targets[~w])!r}",
                      f"       response  {_text(llm, targets[w])!r}",
                      f"       predictor {_text(pred, rows['predictor_tokens'][i])!r}",
                      f"       loss mask {''.join('1' if x else '.' for x in w)}"]
    return "\n".join(lines)
