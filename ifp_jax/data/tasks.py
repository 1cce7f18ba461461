"""SeqIO registrations: one task per embedded skill or fact table, CPT over any text, user JSONL,
mixtures ('ifp_multiskill', 'ifp_facts', ...).

A user's JSONL (data.jsonl_path) is one task, 'ifp_jsonl', or, as a directory of task files or
lines with a 'task' field, one task per user task in the mixture 'ifp_user' (user_tasks.py).

Every task emits the same three output features, which the pipeline turns into the batch contract:
  'predictor_tokens'  the prompt in the PREDICTOR's vocabulary (each vocabulary tokenizes the text),
  'inputs'            the prompt in the LLM vocabulary (no EOS),
  'targets'           the part the LLM is trained on (instruction tasks: response + EOS).
CPT fits the same mould (docs/method.md#training-continued-pre-training-then-sft): 'inputs' =
chunks 1..k, 'targets' = chunk k+1 (no EOS), 'predictor_tokens' = chunk k.

Registration is idempotent: `register_all` with unchanged settings is a no-op; with other settings
it removes and re-adds each task, so a process can switch vocabularies or chunk sizes.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import sysconfig
from typing import Callable, Iterable, Optional, Sequence

from ifp_jax.config import DataConfig
from ifp_jax.data import facts, skills, text_datasets, text_files
from ifp_jax.errors import DataError
from ifp_jax.tf_import import seqio, tf  # TensorFlow imported quietly, once
from ifp_jax.data.user_tasks import (USER_MIXTURE, is_multitask, read_jsonl, read_user_tasks,
                                     source_stats)
from ifp_jax.vocab.decoder_prefix import SEQIO_START, decoder_prefix
from ifp_jax.vocab.seqio_vocab import get_vocabulary

SKILL_PREFIX = skills.SKILL_PREFIX
CPT_STDLIB = "ifp_cpt_stdlib"
TEXT_FILES_TASK = "ifp_text"  # CPT over data.text_files + data.text_datasets; also a mixture name
JSONL_TASK = "ifp_jsonl"
MIXTURES = ("ifp_multiskill", "ifp_cpt", "ifp_multiskill_cpt", "ifp_facts")

# The embedded skill data is a fixed data set (like a downloaded one): its generation seed is a
# constant; DataConfig.seed only shuffles. 10k train examples per skill is about one epoch of the
# demo (1500 steps x 64 / 11 skills), so the model must generalise to the held-out inputs.
SKILL_EXAMPLES = {"train": 10_000, "validation": 1_000}
SKILL_GENERATION_SEED = 0
# CPT on the stdlib: bytes of source read per split (keeps loading well under a few seconds).
CPT_STDLIB_MAX_BYTES = {"train": 1_000_000, "validation": 100_000}
# JSONL: example i (0-based, blank lines skipped) is held out iff i % 20 == 19.
JSONL_HELD_OUT_EVERY = 20

# name -> settings the task was registered with (used for idempotence and as a cache key).
_FINGERPRINTS: dict[str, str] = {}
# Tasks registered with data.chat_template (their texts carry the template's own BOS).
_CHAT_TASKS: set[str] = set()


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict:
    """{'exact_match': fraction in 0..1} of predictions equal to their target string."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    hits = sum(t == p for t, p in zip(targets, predictions))
    return {"exact_match": hits / max(len(targets), 1)}


def mixture_fingerprint(data_cfg: DataConfig, predictor_max_len: int) -> dict:
    """Every choice that changes the prepared examples of the mixture (not rates, seeds or batch
    sizes, which only change how they are drawn): what `ifp data prepare` records and a
    prepared directory's reader checks."""
    register_all(data_cfg, predictor_max_len)
    names = mixture_rates(dataclasses.replace(data_cfg, rates={}))
    out = {"mixture": data_cfg.mixture, "seq_len": data_cfg.seq_len,
           "predictor_max_len": predictor_max_len, "vocabulary": data_cfg.vocabulary,
           "predictor_vocabulary": data_cfg.predictor_vocabulary,
           "tasks": {name: task_fingerprint(name) for name in names}}
    prefixes = {name: list(task_decoder_prefix(name, data_cfg)) for name in names}
    if any(tuple(v) != SEQIO_START for v in prefixes.values()):  # absent: seqio's 0, as before
        out["decoder_prefix"] = prefixes
    return out


def task_decoder_prefix(name: str, data_cfg: DataConfig) -> tuple[int, ...]:
    """The decoder's prefix for task `name`'s examples (vocab/decoder_prefix.py): () when its
    examples were formatted with the chat template (data.chat_template), which writes its own."""
    return decoder_prefix(data_cfg.vocabulary, name in _CHAT_TASKS)


def task_fingerprint(name: str) -> str:
    """A string that changes whenever task `name` is re-registered with other settings."""
    if name in _FINGERPRINTS:
        return _FINGERPRINTS[name]
    return f"external:{id(seqio.get_mixture_or_task(name))}"


def _features(data_cfg: DataConfig, targets_eos: bool) -> dict:
    llm = get_vocabulary(data_cfg.vocabulary)
    return {"predictor_tokens": seqio.Feature(get_vocabulary(data_cfg.predictor_vocabulary),
                                              add_eos=False),
            "inputs": seqio.Feature(llm, add_eos=False),
            "targets": seqio.Feature(llm, add_eos=targets_eos)}


def _fingerprint(data_cfg: DataConfig, **settings) -> str:
    """A task's fingerprint: its vocabularies and named settings (JSON; the prepared-data check
    names the first one that differs)."""
    return json.dumps({"vocabulary": data_cfg.vocabulary,
                       "predictor_vocabulary": data_cfg.predictor_vocabulary, **settings})


def chat_template_fingerprint(vocabulary: str) -> str:
    """The chat template's source (a changed template re-prepares the data)."""
    from ifp_jax.vocab.chat_template import template_source
    return template_source(vocabulary)


def _add_task(name: str, fingerprint: str, **kwargs) -> None:
    if _FINGERPRINTS.get(name) == fingerprint and name in seqio.TaskRegistry.names():
        return
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, **kwargs)
    _FINGERPRINTS[name] = fingerprint


def _add_mixture(name: str, tasks: list) -> None:
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, tasks)


# ----------------------------------------------------------------------------- prompt/response

def _prompt_response_dataset(examples: list[dict]) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(
        {"prompt": tf.constant([e["prompt"] for e in examples], tf.string),
         "response": tf.constant([e["response"] for e in examples], tf.string)})


_PROMPT_RESPONSE_PREPROCESSORS = [
    # Both vocabularies tokenize the same prompt text; 'targets' is the response.
    functools.partial(seqio.preprocessors.rekey, key_map={
        "predictor_tokens": "prompt", "inputs": "prompt", "targets": "response"}),
    seqio.preprocessors.tokenize,
    seqio.preprocessors.append_eos_after_trim,
]


def _register_prompt_response(name: str, fingerprint: str, data_cfg: DataConfig,
                              dataset_fn: Callable) -> None:
    if data_cfg.chat_template:
        from ifp_jax.data.chat_examples import chat_formatted
        fingerprint = json.dumps([fingerprint, {"chat_template": chat_template_fingerprint(
            data_cfg.vocabulary)}])
        dataset_fn = chat_formatted(dataset_fn, data_cfg.vocabulary)
        _CHAT_TASKS.add(name)
    else:
        _CHAT_TASKS.discard(name)
    _add_task(name, fingerprint,
              source=seqio.FunctionDataSource(dataset_fn, splits=skills.SPLITS,
                                              caching_permitted=False),
              output_features=_features(data_cfg, targets_eos=True),
              preprocessors=_PROMPT_RESPONSE_PREPROCESSORS,
              metric_fns=[exact_match])


_GENERATORS = {"skill": skills.generate, "fact": facts.generate}


@functools.lru_cache(maxsize=None)
def _generated_examples(kind: str, name: str, split: str) -> tuple:
    return tuple(_GENERATORS[kind](name, split, SKILL_EXAMPLES[split], SKILL_GENERATION_SEED))


def _register_generated(kind: str, prefix: str, names, data_cfg: DataConfig) -> list[str]:
    """Registers `prefix + name` for every embedded generated task; returns the task names."""
    out = []
    for bare in names:
        def dataset_fn(split, shuffle_files=False, seed=None, bare=bare):
            del shuffle_files, seed  # a fixed data set; the pipeline shuffles
            return _prompt_response_dataset(list(_generated_examples(kind, bare, split)))
        fingerprint = _fingerprint(data_cfg, examples=SKILL_EXAMPLES,
                                   generation_seed=SKILL_GENERATION_SEED)
        _register_prompt_response(prefix + bare, fingerprint, data_cfg, dataset_fn)
        out.append(prefix + bare)
    return out


def register_skill_tasks(data_cfg: DataConfig) -> list[str]:
    """Registers `ifp_skill_<name>` for every embedded skill; returns the task names."""
    return _register_generated("skill", SKILL_PREFIX, skills.SKILLS, data_cfg)


def register_fact_tasks(data_cfg: DataConfig) -> list[str]:
    """Registers `ifp_fact_<name>` for every embedded fact table (facts.py)."""
    return _register_generated("fact", facts.FACT_PREFIX, facts.FACT_TASKS, data_cfg)


# ----------------------------------------------------------------------------- JSONL

def _held_out_splits(examples) -> dict:
    return {"train": [e for i, e in enumerate(examples) if i % JSONL_HELD_OUT_EVERY != 19],
            "validation": [e for i, e in enumerate(examples) if i % JSONL_HELD_OUT_EVERY == 19]}


def register_user_tasks(path: str, data_cfg: DataConfig) -> list[tuple[str, float]]:
    """One task per user task of a multi-task data.jsonl_path (user_tasks.py), each with its
    own held-out split (every 20th example); returns [(task name, manifest rate)]."""
    out = []
    for task in read_user_tasks(path):
        splits = _held_out_splits(task.examples)
        if not splits["validation"]:
            raise DataError(f"user task '{task.name}' has {len(task.examples)} examples; it needs "
                            f"at least {JSONL_HELD_OUT_EVERY} (every 20th is held out)")

        def dataset_fn(split, shuffle_files=False, seed=None, splits=splits):
            del shuffle_files, seed
            return _prompt_response_dataset(splits[split])

        fingerprint = _fingerprint(data_cfg, source_files=source_stats(path))
        _register_prompt_response(task.name, fingerprint, data_cfg, dataset_fn)
        out.append((task.name, task.rate))
    return out


def register_jsonl_task(name: str, path: str, data_cfg: DataConfig) -> None:
    """A task over a user's JSONL file; validated eagerly so errors surface at registration.

    Held out for 'validation': every 20th example (i % 20 == 19, blank lines not counted).
    """
    fingerprint = None
    if os.path.isfile(path):  # (a missing file is read_jsonl's one-line error below)
        stat = os.stat(path)
        fingerprint = _fingerprint(data_cfg, source_file=[os.path.abspath(path),
                                                          stat.st_mtime_ns, stat.st_size])
        if _FINGERPRINTS.get(name) == fingerprint and name in seqio.TaskRegistry.names():
            return  # registered from this very file already (`ifp train` checks, then trains)
    splits = _held_out_splits(read_jsonl(path))

    def dataset_fn(split, shuffle_files=False, seed=None):
        del shuffle_files, seed
        return _prompt_response_dataset(splits[split])

    _register_prompt_response(name, fingerprint, data_cfg, dataset_fn)


# ----------------------------------------------------------------------------- CPT

def cpt_chunk_preprocessor(dataset: tf.data.Dataset, chunk_len: int, num_chunks: int,
                           llm_vocab: seqio.Vocabulary,
                           predictor_vocab: seqio.Vocabulary) -> tf.data.Dataset:
    """{'text'} documents -> K-1 examples per window of K*chunk_len LLM tokens
    (docs/method.md#training-continued-pre-training-then-sft).

    Chunking is done in LLM tokens (for the byte vocabulary: bytes), windows never cross
    documents and a document's tail shorter than a window is dropped. For example k (1-based,
    k < K): 'inputs' = chunks 1..k, 'targets' = chunk k+1, and the predictor reads chunk k: with
    one vocabulary for both, its tokens as they are; with two, detokenized to text and
    re-tokenized with the predictor vocabulary.
    """
    window = chunk_len * num_chunks

    def windows(ex):
        ids = llm_vocab.encode_tf(ex["text"])
        n = tf.size(ids) // window
        return tf.reshape(ids[:n * window], [n, window])

    if llm_vocab == predictor_vocab:
        # Every example of a document at once (sliced from its [n, window] tokens): no
        # per-example op, several times faster than a map per example.
        def examples_of(ex, k):
            w = windows(ex)
            return tf.data.Dataset.from_tensor_slices({
                "predictor_tokens": w[:, (k - 1) * chunk_len:k * chunk_len],
                "inputs": w[:, :k * chunk_len],
                "targets": w[:, k * chunk_len:(k + 1) * chunk_len]})

        per_k = [dataset.flat_map(functools.partial(examples_of, k=k))
                 for k in range(1, num_chunks)]
    else:
        def example(w, k):
            chunk = w[(k - 1) * chunk_len:k * chunk_len]
            return {"predictor_tokens": predictor_vocab.encode_tf(llm_vocab.decode_tf(chunk)),
                    "inputs": w[:k * chunk_len],
                    "targets": w[k * chunk_len:(k + 1) * chunk_len]}

        wins = dataset.flat_map(lambda ex: tf.data.Dataset.from_tensor_slices(windows(ex)))
        per_k = [wins.map(functools.partial(example, k=k), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True) for k in range(1, num_chunks)]
    # One flat pass per k (a nested dataset per window is ~5x slower); the pipeline shuffles.
    return functools.reduce(tf.data.Dataset.concatenate, per_k)


def register_cpt_task(name: str, text_fn: Callable[[str], Iterable[str]], data_cfg: DataConfig,
                      source_id: str = "", streaming: bool = False) -> None:
    """CPT task over any text: `text_fn(split)` yields the documents of 'train'/'validation'.

    `source_id` should change when the text does (it keys the registration's idempotence).
    `streaming=True` reads the documents as tf.data pulls them (a corpus larger than memory)
    instead of materialising them first.
    """
    llm = get_vocabulary(data_cfg.vocabulary)
    pred = get_vocabulary(data_cfg.predictor_vocabulary)

    def dataset_fn(split, shuffle_files=False, seed=None):
        del shuffle_files, seed
        if streaming:
            return tf.data.Dataset.from_generator(
                lambda: ({"text": doc} for doc in text_fn(split)),
                output_signature={"text": tf.TensorSpec((), tf.string)})
        docs = list(text_fn(split))
        return tf.data.Dataset.from_tensor_slices({"text": tf.constant(docs, tf.string)})

    fingerprint = _fingerprint(data_cfg, cpt_chunk_len=data_cfg.cpt_chunk_len,
                               cpt_num_chunks=data_cfg.cpt_num_chunks, source=source_id)
    _add_task(name, fingerprint,
              source=seqio.FunctionDataSource(dataset_fn, splits=skills.SPLITS,
                                              caching_permitted=False),
              output_features=_features(data_cfg, targets_eos=False),
              preprocessors=[functools.partial(
                  cpt_chunk_preprocessor, chunk_len=data_cfg.cpt_chunk_len,
                  num_chunks=data_cfg.cpt_num_chunks, llm_vocab=llm, predictor_vocab=pred)],
              metric_fns=[])


def _text_documents(files: tuple[str, ...], sources: tuple, data_cfg: DataConfig, split: str):
    return text_files.documents(list(files), split, data_cfg.skip_bad_lines, data_cfg.text_field,
                                sources, data_cfg.tfds_data_dir)


_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


@functools.lru_cache(maxsize=None)
def stdlib_texts(split: str, max_bytes: Optional[int] = None) -> tuple[str, ...]:
    """The Python standard library's own .py sources: a real text present on every machine.

    Files are sorted by path; test directories and third-party packages are skipped; every 20th
    file is held out for 'validation'. Reading stops after `max_bytes` per split.
    """
    max_bytes = CPT_STDLIB_MAX_BYTES[split] if max_bytes is None else max_bytes
    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        paths.extend(os.path.join(dirpath, f) for f in filenames
                     if f.endswith(".py") and not f.startswith("test_"))
    paths.sort()
    texts, total = [], 0
    for i, path in enumerate(paths):
        if (i % 20 == 19) != (split == "validation"):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        texts.append(text[:max_bytes - total])
        total += len(texts[-1])
        if total >= max_bytes:
            break
    return tuple(texts)


# ----------------------------------------------------------------------------- all + mixtures

def register_all(data_cfg: DataConfig, predictor_max_len: Optional[int] = None) -> None:
    """Registers every ifp_* task and mixture for `data_cfg` (idempotent).

    `predictor_max_len` is accepted for the trainer's call signature; the registered tasks do not
    depend on it (prompt truncation to the predictor's length happens in the pipeline).
    """
    del predictor_max_len
    skill_tasks = register_skill_tasks(data_cfg)
    fact_tasks = register_fact_tasks(data_cfg)
    register_cpt_task(CPT_STDLIB, stdlib_texts, data_cfg,
                      source_id=f"stdlib:{sysconfig.get_paths()['stdlib']}:"
                                f"{json.dumps(CPT_STDLIB_MAX_BYTES)}")
    if data_cfg.text_files or data_cfg.text_datasets:
        files = text_files.resolve_files(data_cfg.text_files) if data_cfg.text_files else []
        sources = tuple(text_datasets.parse_sources(data_cfg.text_datasets))
        source_id = json.dumps({
            "files": [[f, os.stat(f).st_mtime_ns, os.stat(f).st_size] for f in files],
            "datasets": [text_datasets.identity(s, data_cfg.tfds_data_dir) for s in sources],
            "skip_bad_lines": data_cfg.skip_bad_lines, "text_field": data_cfg.text_field})
        register_cpt_task(TEXT_FILES_TASK, functools.partial(
            _text_documents, tuple(files), sources, data_cfg), data_cfg, source_id=source_id,
            streaming=True)
    if data_cfg.jsonl_path and is_multitask(data_cfg.jsonl_path):
        _add_mixture(USER_MIXTURE, register_user_tasks(data_cfg.jsonl_path, data_cfg))
    elif data_cfg.jsonl_path:
        register_jsonl_task(JSONL_TASK, data_cfg.jsonl_path, data_cfg)
    _add_mixture("ifp_multiskill", [(t, 1.0) for t in skill_tasks])
    _add_mixture("ifp_cpt", [(CPT_STDLIB, 1.0)])
    _add_mixture("ifp_multiskill_cpt", [(t, 1.0) for t in skill_tasks + [CPT_STDLIB]])
    _add_mixture("ifp_facts", [(t, 1.0) for t in fact_tasks])


def check_mixture(data_cfg: DataConfig) -> None:
    """Registers the tasks and resolves the mixture, so that a data error of the config (an
    unknown mixture or task, a bad JSONL file or task directory, missing text files) is raised
    before `ifp train` creates or touches its workdir."""
    register_all(data_cfg)
    mixture_rates(data_cfg)


def closest_name(name: str, known: list[str]) -> str:
    """'did you mean X?' for the closest of `known` (difflib), else the list of known names."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.3)
    return f"did you mean '{close[0]}'?" if close else f"known: {', '.join(sorted(known))}"


def mixture_rates(data_cfg: DataConfig) -> dict[str, float]:
    """Task name -> rate for `data_cfg.mixture` (a mixture or a single task), sorted by name,
    with `data_cfg.rates` applied on top. Zero-rate tasks stay listed (stable task ids)."""
    name = data_cfg.mixture
    if name in seqio.MixtureRegistry.names():
        mixture = seqio.get_mixture_or_task(name)
        rates = {t.name: float(mixture.get_rate(t)) for t in mixture.tasks}
    elif name in seqio.TaskRegistry.names():
        rates = {name: 1.0}
    else:
        known = list(seqio.MixtureRegistry.names()) + list(seqio.TaskRegistry.names())
        raise DataError(f"unknown data.mixture '{name}': {closest_name(name, known)}")
    for task, rate in data_cfg.rates.items():
        if task not in rates:
            raise DataError(f"data.rates names task '{task}' which is not in mixture '{name}': "
                            f"{closest_name(task, list(rates))}")
        if not isinstance(rate, (int, float)) or rate < 0:
            raise DataError(f"data.rates['{task}']={rate!r} must be a number >= 0")
        rates[task] = float(rate)
    if not any(r > 0 for r in rates.values()):
        raise DataError(f"every task of mixture '{name}' has rate 0; raise one in data.rates")
    return dict(sorted(rates.items()))
