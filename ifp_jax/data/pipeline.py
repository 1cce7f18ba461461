"""Host-side batches for the trainer and evaluator, in the batch contract (numpy).

Each task's split is tokenized once by SeqIO (its own preprocessors), materialised as fixed-shape
numpy arrays and cached per process. Training order comes from grain `MapDataset`s over example
indices: per task shuffled (seeded) and repeated, then mixed by rate. Because a MapDataset is
random-access, the global batch at step s is a pure function of (config, s): the only state to
checkpoint is the step, and resuming reproduces an uninterrupted run exactly.

Batch contract (T = DataConfig.seq_len, P = predictor max prompt length). The decoder reads
seq = prefix + prompt + response (+EOS), where prefix is the vocabulary's
(vocab/decoder_prefix.py: (0,) for 'byte' and SentencePiece, the tokenizer's BOS when its
post-processor adds one, () when it adds none or under a chat template):
  predictor_tokens [B,P] int32      prompt in the predictor vocabulary, right-padded with 0; a
                                    longer prompt keeps its LAST P tokens (predictor_truncated=1)
  decoder_input_tokens [B,T] int32  window[:-1], window = seq right-padded with 0 to T + 1 (=
                                    the targets shifted right by one, seq[0] first)
  decoder_target_tokens [B,T] int32 window[1:]
  decoder_loss_weights [B,T] f32    1 on response (+EOS) targets only
  task_id [B] int32                 index into TrainBatches.task_names
  predictor_truncated / decoder_truncated [B] int32; when seq exceeds T + 1 tokens the prompt
                                    loses tokens from the left first (the prefix stays), then
                                    the response from the right.
With prefix (0,) this is seqio's layout: targets = prompt + response, inputs = [0] + targets[:-1].
With an empty prefix the prompt's first token is read, never predicted (so is a response's with
an empty prompt).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import grain

from ifp_jax.config import DataConfig
from ifp_jax.data import prepared, tasks
from ifp_jax.data.batching import BatchAssembler
from ifp_jax.errors import DataError
from ifp_jax.tf_import import seqio, tf  # TensorFlow imported quietly, once
from ifp_jax.selection.prompt import kept_window, predictor_tokens
from ifp_jax.vocab.seqio_vocab import get_vocabulary

_FEATURES = ("predictor_tokens", "inputs", "targets")
_TF_BATCH = 4096
_ENDLESS = 2 ** 40  # steps a worker pipeline is built for (it stops when training does)
# (task, split, fingerprint) -> list of 1-D token arrays per feature.
_TOKENIZED_CACHE: dict[tuple, dict[str, list[np.ndarray]]] = {}


def tokenized_batches(task_name: str, split: str, shard: tuple[int, int] | None = None,
                      skip: int = 0, limit: int | None = None):
    """Yields a registered task's split tokenized by SeqIO, as {feature: Ragged} per up to 4096
    examples; `shard=(index, count)` keeps SeqIO's shard `index` of `count` (disjoint,
    covering), `skip` drops that many examples first, `limit` stops after that many."""
    task = seqio.get_mixture_or_task(task_name)
    info = seqio.ShardInfo(*shard) if shard and shard[1] > 1 else None
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False,
                          num_epochs=1, shard_info=info)
    if skip:
        ds = ds.skip(skip)
    if limit is not None:
        ds = ds.take(limit)  # a corpus's split is read only as far as needed
    ds = ds.map(lambda ex: {k: ex[k] for k in _FEATURES})
    # Ragged batches: one numpy conversion per 4096 examples, no per-example op or padding.
    for b in ds.ragged_batch(_TF_BATCH):
        yield {k: Ragged.from_batch(b[k]) for k in _FEATURES}


class Ragged(NamedTuple):
    """Rows of different lengths: row i is values[splits[i]:splits[i + 1]]."""
    values: np.ndarray
    splits: np.ndarray

    @classmethod
    def of(cls, rows: list[np.ndarray]) -> "Ragged":
        rows = list(rows)
        lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
        values = np.concatenate(rows) if len(rows) else np.zeros((0,), np.int32)
        return cls(values, np.concatenate([[0], np.cumsum(lengths)]))

    @classmethod
    def from_batch(cls, batch) -> "Ragged":
        """From tf.data's ragged_batch output: a tf.RaggedTensor, or a dense [n, L] tf.Tensor
        when every row has the same static length."""
        if isinstance(batch, tf.RaggedTensor):
            return cls(batch.values.numpy(), batch.row_splits.numpy().astype(np.int64))
        dense = batch.numpy()
        n, length = dense.shape
        return cls(dense.reshape(-1), np.arange(n + 1, dtype=np.int64) * length)

    def rows(self) -> list[np.ndarray]:
        return [self.values[a:b] for a, b in zip(self.splits[:-1], self.splits[1:])]

    def __len__(self) -> int:
        return len(self.splits) - 1


def tokenized_examples(task_name: str, split: str,
                       limit: int | None = None) -> dict[str, list[np.ndarray]]:
    """All (or the first `limit`) examples of a registered task's split, tokenized by SeqIO
    (cached per process)."""
    key = (task_name, split, tasks.task_fingerprint(task_name), limit)
    if key not in _TOKENIZED_CACHE:
        out = {k: [] for k in _FEATURES}
        for batch in tokenized_batches(task_name, split, limit=limit):
            for k in _FEATURES:
                out[k].extend(batch[k].rows())
        if not out["targets"]:
            raise DataError(f"task '{task_name}' has no '{split}' examples")
        _TOKENIZED_CACHE[key] = out
    return _TOKENIZED_CACHE[key]


def _place(out: np.ndarray, source: Ragged, starts: np.ndarray, counts: np.ndarray,
           columns: np.ndarray) -> None:
    """out[i, columns[i] : columns[i] + counts[i]] = row i of `source` from starts[i] on."""
    n = len(counts)
    rows = np.repeat(np.arange(n), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    out[rows, columns[rows] + within] = source.values[source.splits[rows] + starts[rows] + within]


def to_contract(examples: dict, predictor_max_len: int, seq_len: int,
                prefix: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Tokenized prompts/targets ({feature: Ragged or list of 1-D arrays}) -> fixed-shape arrays
    of the batch contract (no task_id), vectorised over the examples. `prefix`: the decoder's
    (vocab/decoder_prefix.py), put before every prompt."""
    pred, prompt, resp = (examples[k] if isinstance(examples[k], Ragged) else
                          Ragged.of(examples[k]) for k in _FEATURES)
    n, p, t = len(resp), predictor_max_len, seq_len
    lp, li, lt = (np.diff(r.splits) for r in (pred, prompt, resp))
    out = {"predictor_tokens": np.zeros((n, p), np.int32)}
    # The predictor keeps a prompt's LAST p tokens: it reads the last one.
    start, kept = kept_window(lp, p)
    _place(out["predictor_tokens"], pred, start, kept, np.zeros(n, np.int64))
    # seq = prefix + prompt + response in a window of T + 1 tokens (inputs its first T, targets
    # its last T). Over-long: the prompt loses tokens from the left first, then the response
    # from the right; the prefix stays.
    b = len(prefix)
    if b > t:
        raise DataError(f"the decoder's prefix {list(prefix)} leaves no room in data.seq_len={t}"
                        f"; raise data.seq_len")
    room = t + 1 - b
    kr = np.minimum(lt, room)
    kp = np.minimum(li, room - kr)
    seq = np.zeros((n, t + 1), np.int32)
    seq[:, :b] = np.asarray(prefix, np.int32)
    _place(seq, prompt, li - kp, kp, np.full(n, b, np.int64))
    _place(seq, resp, np.zeros(n, np.int64), kr, b + kp)
    out["decoder_input_tokens"] = seq[:, :-1].copy()
    out["decoder_target_tokens"] = seq[:, 1:].copy()
    positions = np.arange(t) + 1  # target j is seq[j + 1]
    out["decoder_loss_weights"] = ((positions >= (b + kp)[:, None]) &
                                   (positions < (b + kp + kr)[:, None])).astype(np.float32)
    out["predictor_truncated"] = (lp > p).astype(np.int32)
    out["decoder_truncated"] = (li + lt > room).astype(np.int32)
    return out


def _contract_arrays(task_name: str, split: str, predictor_max_len: int,
                     data_cfg: DataConfig) -> dict:
    prefix = tasks.task_decoder_prefix(task_name, data_cfg)
    key = ("contract", task_name, split, tasks.task_fingerprint(task_name), predictor_max_len,
           data_cfg.seq_len, prefix)
    if key not in _TOKENIZED_CACHE:
        _TOKENIZED_CACHE[key] = to_contract(tokenized_examples(task_name, split),
                                            predictor_max_len, data_cfg.seq_len, prefix)
    return _TOKENIZED_CACHE[key]


class TrainBatches:
    """Iterator of this host's share of each global batch; resumable via get/set_state.

    Host h of H takes rows [h*B/H, (h+1)*B/H) of global batch s (or the explicit `rows`
    [start, stop) its devices hold: `sharding.process_batch_rows`); concatenating the hosts'
    rows gives the single-process global batch. Examples come from memory (each task's split
    tokenized by SeqIO at start-up) or, with data.prepared_dir, from ArrayRecord files read on
    demand (data/prepared.py), and with data.num_workers > 0 whole batches are assembled ahead
    in grain worker processes; every way gives the same batch at the same step.
    """

    def __init__(self, data_cfg: DataConfig, predictor_max_len: int, process_index: int = 0,
                 process_count: int = 1, rows: tuple[int, int] | None = None):
        if data_cfg.global_batch_size % process_count:
            raise DataError(f"data.global_batch_size={data_cfg.global_batch_size} must be "
                            f"divisible by the number of processes ({process_count})")
        if not 0 <= process_index < process_count:
            raise DataError(f"process_index={process_index} out of range 0..{process_count - 1}")
        if rows is None:
            size = data_cfg.global_batch_size // process_count
            rows = (process_index * size, (process_index + 1) * size)
        tasks.register_all(data_cfg, predictor_max_len)
        rates = tasks.mixture_rates(data_cfg)
        self.task_names: list[str] = list(rates)
        self.rates = rates
        self.host_batch_size = rows[1] - rows[0]
        self._step = 0
        self._workers, self._prefetch = data_cfg.num_workers, data_cfg.prefetch
        self._iterator = None
        splits = _train_splits(self.task_names, rates, data_cfg, predictor_max_len)
        instruction_tokens = (
            _instruction_tokens(self.task_names, data_cfg, predictor_max_len)
            if data_cfg.predictor_instruction_rate > 0 else [None] * len(self.task_names))
        self._assemble = BatchAssembler(
            splits, [rates[n] for n in self.task_names], seed=data_cfg.seed,
            global_batch_size=data_cfg.global_batch_size, rows=rows,
            instruction_rate=data_cfg.predictor_instruction_rate,
            instruction_tokens=instruction_tokens)

    def __iter__(self):
        return self

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """This host's rows of global batch `step` (pure function of config and step)."""
        return self._assemble(step)

    def __next__(self) -> dict[str, np.ndarray]:
        if self._workers == 0:
            batch = self.batch_at(self._step)
        else:
            if self._iterator is None:
                self._iterator = _prefetched(self._assemble, self._step, self._workers,
                                             self._prefetch)
            batch = next(self._iterator)
        self._step += 1
        return batch

    def get_state(self) -> dict:
        """JSON-serialisable position (the next step to produce)."""
        return {"step": self._step}

    def set_state(self, state: dict) -> None:
        self._step = int(state["step"])
        self.close()

    def close(self) -> None:
        """Stops the worker processes (if any); iteration restarts them at the current step."""
        if self._iterator is not None:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()
            self._iterator = None


def _prefetched(assemble: BatchAssembler, start: int, workers: int, buffer: int):
    """Batches start, start+1, ... assembled in `workers` grain processes, in step order."""
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain reads absl flags; ifp's CLI is argparse
        flags.FLAGS.mark_as_parsed()
    steps = grain.MapDataset.range(start, start + _ENDLESS).map(assemble)
    return iter(steps.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=buffer)))


def _train_splits(task_names: list[str], rates: dict, data_cfg: DataConfig,
                  predictor_max_len: int) -> list:
    """Per task: its train split in memory or prepared on disk (None for rate 0)."""
    if data_cfg.prepared_dir:
        manifest = prepared.load_manifest(data_cfg.prepared_dir)
        prepared.check_fingerprint(data_cfg.prepared_dir, manifest,
                                   tasks.mixture_fingerprint(data_cfg, predictor_max_len))
    out = []
    for name in task_names:
        if rates[name] <= 0:
            out.append(None)
        elif data_cfg.prepared_dir:
            split = prepared.PreparedSplit(data_cfg.prepared_dir, name, "train",
                                           predictor_max_len, data_cfg.seq_len, manifest,
                                           data_cfg.bad_files)
            if split.skipped_files:
                print(f"[ifp] warning: {name}: skipped {len(split.skipped_files)} damaged "
                      f"prepared file(s) (data.bad_files=skip): "
                      f"{'; '.join(split.skipped_files)}")
            out.append(split)
        else:
            out.append(prepared.InMemorySplit(_contract_arrays(name, "train", predictor_max_len,
                                                               data_cfg)))
    return out


def _instruction_tokens(task_names: list[str], data_cfg: DataConfig,
                        predictor_max_len: int) -> list[np.ndarray | None]:
    """Per task: its instruction text as predictor tokens [P], or None if it has none."""
    from ifp_jax.config import ConfigError
    from ifp_jax.data.skills import task_instruction
    vocab = get_vocabulary(data_cfg.predictor_vocabulary)
    out = []
    for name in task_names:
        try:
            text = task_instruction(name, data_cfg.jsonl_path)
        except (ConfigError, DataError):  # text tasks, ifp_jsonl, user tasks without one
            out.append(None)
            continue
        out.append(predictor_tokens(vocab, text, predictor_max_len)[0])
    return out


def make_train_batches(data_cfg: DataConfig, predictor_max_len: int, process_index: int = 0,
                       process_count: int = 1, rows: tuple[int, int] | None = None
                       ) -> TrainBatches:
    return TrainBatches(data_cfg, predictor_max_len, process_index, process_count, rows)


def eval_task_names(data_cfg: DataConfig, text: bool = False) -> list[str]:
    """Tasks of the mixture (any rate) that define a metric, i.e. can be scored by exact match;
    with `text=True` the others instead (text / CPT tasks, `metric_fns=[]`), which evaluation
    scores by perplexity."""
    tasks.register_all(data_cfg)
    return [name for name in tasks.mixture_rates(data_cfg)
            if bool(seqio.get_mixture_or_task(name).metric_fns) != text]


def make_eval_examples(data_cfg: DataConfig, predictor_max_len: int, task_name: str,
                       n: int, split: str = "validation") -> dict:
    """The first `n` examples of one task's `split` (default the held-out 'validation'), in the
    batch contract, plus 'prompt_text' and 'target_text' (response without EOS) decoded with the
    LLM vocabulary. A split the task does not have is a one-line ConfigError naming its splits."""
    from ifp_jax.config import ConfigError
    tasks.register_all(data_cfg, predictor_max_len)
    if task_name not in seqio.TaskRegistry.names():
        raise DataError(f"unknown task '{task_name}': "
                        f"{tasks.closest_name(task_name, list(seqio.TaskRegistry.names()))}")
    splits = list(seqio.get_mixture_or_task(task_name).splits)
    if split not in splits:
        raise ConfigError(f"task '{task_name}' has no split {split!r}; use one of "
                          f"{', '.join(splits)}")
    examples = tokenized_examples(task_name, split, limit=n)
    out = to_contract(examples, predictor_max_len, data_cfg.seq_len,
                      tasks.task_decoder_prefix(task_name, data_cfg))
    out["task_id"] = np.zeros((len(examples["targets"]),), np.int32)  # one task: id 0
    vocab = get_vocabulary(data_cfg.vocabulary)
    eos = vocab.eos_id
    out["prompt_text"] = [vocab.decode(p.tolist()) for p in examples["inputs"]]
    out["target_text"] = [vocab.decode([i for i in r.tolist() if i != eos])
                          for r in examples["targets"]]
    return out
