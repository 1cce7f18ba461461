"""Frozen, typed experiment configuration (no gin).

One `ExperimentConfig` holds every setting. Sizes shared by several parts are owned by the parent:
the predictor head's output shape `[L, F]` and the SoftTopK budget `k` are read from
`ExperimentConfig.model`, never repeated in `PredictorConfig` or `PruningConfig`.

Overrides are dotted paths, e.g. `pruning.keep_k=128 optimizer.lr_llm=1e-3`; values are parsed
with `yaml.safe_load` and type-checked against the dataclass field; an unknown key fails with the
closest valid key named.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from typing import Any, Literal, Optional

import yaml

from ifp_jax import workdir as workdir_lib


class ConfigError(ValueError):
    """A user-facing configuration error; its message is one line that names the fix."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Llama-family decoder. Used for the LLM and (as `PredictorConfig.backbone`) the predictor."""

    vocab_size: int = 259  # seqio.ByteVocabulary: 3 specials (pad=0, eos=1, unk=2) + 256 bytes
    # Embedding / LM-head rows are padded to a multiple of this so the vocab axis shards evenly
    # over 'tensor'; logits are sliced back to vocab_size (padding rows never reach the loss).
    vocab_pad_multiple: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 32
    d_ffn: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_len: int = 2048
    # Std of the normal init of every projection kernel (Llama's initializer_range). A narrow
    # model starts near-linear with 0.02 and can sit on a plateau; ~1/sqrt(d_model) starts it in
    # the non-linear regime.
    init_std: float = 0.02
    # 'none' keeps every activation; 'full' recomputes the whole layer in the backward pass;
    # 'dots' saves matmul outputs only (jax.checkpoint_policies.dots_with_no_batch_dims_saveable).
    remat_policy: Literal["none", "full", "dots"] = "none"
    scan_layers: bool = True
    # Layers per iteration of the scanned layer loop; 0 = auto: every layer (a straight-line
    # program) on CPU without remat, else 1 (TPU/GPU, or remat: model/decoder.py scan_unroll).
    # On CPU the loop's per-layer slices of the stacked params, activations and gradients cost
    # a quarter of a 50M train step (`ifp bench train`: 3.35 s scanned, 2.59 s unrolled); on
    # TPU a rolled loop keeps 56-layer compiles short.
    scan_unroll: int = 0
    # Attention kernel (model/attention.py): 'auto' = Pallas splash attention on TPU (never holds
    # [T, T] scores), XLA's dot_product_attention elsewhere.
    attention: Literal["auto", "xla", "splash"] = "auto"

    @property
    def padded_vocab_size(self) -> int:
        m = max(self.vocab_pad_multiple, 1)
        return -(-self.vocab_size // m) * m


@dataclasses.dataclass(frozen=True)
class PredictorConfig:
    """The sparsity predictor: a small decoder reading the prompt + an MLP head to scores [L, F]."""

    backbone: ModelConfig = ModelConfig(d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                                        head_dim=32, d_ffn=256)
    head_hidden: int = 128
    head_activation: Literal["gelu", "relu", "silu", "tanh"] = "gelu"
    max_prompt_len: int = 64  # longer prompts are truncated from the left (counted in metrics)


@dataclasses.dataclass(frozen=True)
class PruningConfig:
    """How FFN units are selected. `keep_k` is checked against `model.d_ffn` by the parent."""

    mode: Literal["dense", "soft", "hard", "static", "given"] = "soft"
    keep_k: int = 128
    # SoftTopK temperature (epsilon), annealed geometrically from start to end over anneal_steps.
    temperature_start: float = 1.0
    temperature_end: float = 0.1
    temperature_anneal_steps: int = 1000
    bisection_iters: int = 40
    # Departure from the paper (docs/findings.md#mask-collapse): load-balancing penalty on the
    # batch-mean of lambda per unit, (F/k^2) * sum_i mean_b(lambda_bi)^2, averaged over layers.
    # 0 disables it.
    balance_weight: float = 1.0
    # Evaluation mask: 'hard' = 0/1 top-k; 'lambda' = lambda * TopK (free at inference: it scales
    # rows of W_down). 'static' mode uses learned input-independent scores for both.
    eval_mask: Literal["hard", "lambda"] = "lambda"
    # Where the selection scores start (train/init_scores.py). 'random': the predictor's own
    # init, whose first masks drop a random k-subset (on a pretrained LLM that breaks it: at
    # k = F/2 SmolLM2-135M's held-out loss goes from 2.9 to 9.9). 'activation': the predictor
    # head's bias and the static scores start at init_scores_scale x the per-layer z-score of
    # log mean |silu(gate) * up| of each unit over the stage's first init_scores_tokens training
    # tokens, so the first masks keep the units the LLM uses most (4.2). Applied at a fresh
    # start only: never on resume, nor when the predictor comes from a run.
    init_scores: Literal["random", "activation"] = "random"
    init_scores_scale: float = 3.0
    init_scores_tokens: int = 4096
    # Steps fitting the predictor alone, at a fresh start and before joint training, to each
    # training row's own activation scores (train/fit_predictor.py): the first masks are then
    # the predictor's per-prompt guess of the units the LLM uses, not one mask for every input.
    # 0 = none. Also when the predictor comes from a run (e.g. CPT's, fitted on SFT prompts).
    fit_predictor_steps: int = 0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which SeqIO mixture feeds training, and the batch shapes."""

    mixture: str = "ifp_multiskill"
    # Per-task rate overrides for the mixture, e.g. {"ifp_cpt_stdlib": 0.0}; empty = registered.
    rates: dict = dataclasses.field(default_factory=dict)
    vocabulary: str = "byte"  # 'byte' or a path to a SentencePiece model
    predictor_vocabulary: str = "byte"
    seq_len: int = 64  # decoder tokens per example
    global_batch_size: int = 64
    seed: int = 0
    cpt_chunk_len: int = 32  # CPT: chunk k (predictor input) -> loss on chunk k+1
    cpt_num_chunks: int = 2
    jsonl_path: str = ""  # registers the task 'ifp_jsonl' when set
    eval_examples_per_task: int = 128
    # A time bound on each evaluation, in seconds (0 = none): examples are taken round-robin
    # over the tasks, so when time is up every task has about as many; the result says how many
    # per task and is marked partial (eval/evaluate.py).
    eval_max_seconds: float = 0.0
    # Fraction of instruction examples whose predictor input is the task's instruction text alone
    # (what a per-task mask is selected from), so per-task selection is in the predictor's
    # training distribution; tasks without an instruction text (text, ifp_jsonl) never are.
    predictor_instruction_rate: float = 0.0
    # Prompt/response examples formatted by the LLM tokenizer's chat template (prompt = user
    # message + generation prompt, response = the assistant turn); needs a tokenizer.json
    # vocabulary with a chat_template. Serve such a model with `ifp generate --chat`.
    chat_template: bool = False
    # Training examples from `ifp data prepare --out DIR` (ArrayRecord, read on demand) instead
    # of tokenizing every task into memory at start-up; "" = in memory.
    prepared_dir: str = ""
    # CPT over local text: files, directories or globs, comma-separated (.txt, .jsonl with a
    # "text" field, .parquet with a "text" column); registers the task 'ifp_text'.
    text_files: str = ""
    # CPT over local TFDS / Hugging Face datasets, comma-separated KIND:NAME[#SPLIT], e.g.
    # "tfds:my_corpus:1.0.0,hf:/data/web_text#train" (text_datasets.py); also task 'ifp_text'.
    text_datasets: str = ""
    tfds_data_dir: str = ""  # where tfds: sources are prepared ("" = TFDS's default)
    text_field: str = "text"  # the text field of .jsonl / .parquet files and of datasets
    skip_bad_lines: bool = False  # a non-UTF-8 / malformed line: error (False) or skip, counted
    # A prepared file whose size differs from its manifest's (truncated, missing): stop with its
    # name, or skip it (its examples are not drawn; counted and named at start-up).
    bad_files: Literal["stop", "skip"] = "stop"
    num_workers: int = 0  # grain processes assembling batches ahead of the step (0 = inline)
    prefetch: int = 2  # batches each worker keeps ready


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warm-up and cosine decay; separate peak LRs for predictor and LLM."""

    lr_llm: float = 3e-3
    lr_predictor: float = 3e-3
    warmup_steps: int = 100
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    grad_clip_norm: float = 1.0
    grad_accum_steps: int = 1


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes within one TPU slice (ICI); -1 means 'all remaining devices'.

    With dcn_data > 1 (multislice: slices joined over the data-centre network), the mesh's
    'data' axis is dcn_data x data: each slice holds the data x fsdp x tensor mesh, and only
    data-parallel gradient reductions cross the slower network (sharding.make_mesh).
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = 1  # number of slices, along 'data'


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 200
    keep: int = 3
    # "auto": async where the devices are accelerators (the state's host copy lands in host RAM
    # the step does not use, written by cores it does not need); synchronous on CPU, where that
    # copy would duplicate the state in the step's own memory and the writer would compete with
    # the step for the same cores (train/checkpoint.py: saves_async).
    async_save: Literal["auto", True, False] = "auto"
    # CRC32C of every file after a save, checked before a restore (a flipped bit in array data
    # otherwise restores silently); on disk one extra read (at save in the background, at restore
    # beside it, each process its share), in a bucket only object metadata (storage.md).
    verify: bool = True
    # Also save when this many minutes passed since the last save (0 = off): on preemptible
    # capacity the work a preemption can lose is bounded by time, not by steps.
    every_minutes: float = 0.0
    # A workdir lock on an object store (gs://) whose holder has not renewed it for this long
    # belongs to a job that died without releasing it; the next job takes it over.
    lock_stale_minutes: float = 10.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    log_every: int = 50
    eval_every: int = 0  # 0 = only at the end
    seed: int = 0
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on TPU/GPU
    # Stage chaining: initialise the LLM (params only) from another run's workdir, and the
    # predictor from another run's workdir (empty = fresh).
    init_llm_from: str = ""
    init_predictor_from: str = ""
    nan_policy: Literal["skip", "stop"] = "stop"
    # Cross-entropy over sequence chunks of this many positions (0 = whole-sequence logits);
    # with a large vocabulary it keeps [B, chunk, V] live instead of [B, T, V] (train/loss.py).
    logits_chunk_len: int = 0
    # JAX's persistent compilation cache, so a restart (e.g. after preemption) loads the compiled
    # step instead of compiling it for minutes: "default" = a per-user directory on each host
    # (platform.default_compilation_cache_dir), or any path (in the workdir, gs://...; JAX
    # writes entries from process 0 only, so a multi-host job wants a path every host reads);
    # "" = off.
    compile_cache_dir: str = "default"


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Distillation from a frozen teacher (the paper's prune+distill baseline,
    docs/method.md#baselines): loss = next-token CE + weight * KL(teacher's top-k truncated
    distribution || student)."""
    teacher: str = ""  # workdir of an `ifp train` run or an `ifp import-hf` dir; "" = off
    top_k: int = 32  # teacher ids kept per position (its distribution renormalised over them)
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "unnamed"
    model: ModelConfig = ModelConfig()
    predictor: PredictorConfig = PredictorConfig()
    pruning: PruningConfig = PruningConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    train: TrainConfig = TrainConfig()
    distill: DistillConfig = DistillConfig()

    def __post_init__(self):
        validate(self)


# Sizes and counts below which a run fails later (a division by zero, an empty shape) or
# silently does nothing: refused here, before any work, with the smallest valid value named.
_SHAPE_MINIMUMS = {"vocab_size": 1, "d_model": 1, "n_layers": 1, "n_heads": 1, "n_kv_heads": 1,
                   "head_dim": 2, "d_ffn": 1, "max_len": 1, "scan_unroll": 0}
_MINIMUMS = {"predictor.head_hidden": 1, "predictor.max_prompt_len": 1,
             "pruning.bisection_iters": 1, "pruning.temperature_anneal_steps": 0,
             "pruning.init_scores_tokens": 1, "pruning.fit_predictor_steps": 0,
             "data.seq_len": 1, "data.global_batch_size": 1, "data.cpt_chunk_len": 1,
             "data.eval_examples_per_task": 1, "optimizer.warmup_steps": 0, "train.steps": 0,
             "train.log_every": 1, "train.eval_every": 0, "checkpoint.every_steps": 1,
             "checkpoint.keep": 1, "mesh.dcn_data": 1}
# Rates and temperatures: a NaN or a negative value trains nothing useful (or divides by zero).
_POSITIVE_FLOATS = ("pruning.temperature_start", "pruning.temperature_end",
                    "pruning.init_scores_scale", "checkpoint.lock_stale_minutes")
_NON_NEGATIVE_FLOATS = ("optimizer.lr_llm", "optimizer.lr_predictor", "optimizer.weight_decay",
                        "optimizer.grad_clip_norm", "pruning.balance_weight",
                        "checkpoint.every_minutes", "data.eval_max_seconds")


def _get_dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check_ranges(cfg: ExperimentConfig) -> None:
    minimums = dict(_MINIMUMS)
    for section in ("model", "predictor.backbone"):
        minimums.update({f"{section}.{k}": v for k, v in _SHAPE_MINIMUMS.items()})
    for key, low in minimums.items():
        if _get_dotted(cfg, key) < low:
            raise ConfigError(f"{key}={_get_dotted(cfg, key)} must be >= {low}; set {key} to "
                              f"{low} or more")
    for key in _POSITIVE_FLOATS + _NON_NEGATIVE_FLOATS:
        value = _get_dotted(cfg, key)
        positive = key in _POSITIVE_FLOATS
        if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
            raise ConfigError(f"{key}={value} must be a finite number "
                              f"{'> 0' if positive else '>= 0'}")


def validate(cfg: ExperimentConfig) -> None:
    """Cross-field checks owned by the parent (shared sizes), after each value's range."""
    _check_ranges(cfg)
    m = cfg.model
    if cfg.pruning.mode != "dense" and not 0 < cfg.pruning.keep_k <= m.d_ffn:
        raise ConfigError(
            f"pruning.keep_k={cfg.pruning.keep_k} must be in 1..model.d_ffn={m.d_ffn}; "
            f"set pruning.keep_k to e.g. {max(1, m.d_ffn // 4)}")
    for name, mc in (("model", m), ("predictor.backbone", cfg.predictor.backbone)):
        if mc.n_heads % mc.n_kv_heads:
            raise ConfigError(f"{name}.n_heads={mc.n_heads} must be a multiple of "
                              f"{name}.n_kv_heads={mc.n_kv_heads}")
        if mc.head_dim % 2:
            raise ConfigError(f"{name}.head_dim={mc.head_dim} must be even for RoPE")
    if cfg.data.seq_len > m.max_len:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_len={m.max_len}")
    if cfg.data.cpt_num_chunks < 2:
        raise ConfigError("data.cpt_num_chunks must be >= 2 (chunk k predicts the mask for k+1)")
    if not 0.0 <= cfg.data.predictor_instruction_rate <= 1.0:
        raise ConfigError(f"data.predictor_instruction_rate="
                          f"{cfg.data.predictor_instruction_rate} must be in [0, 1]")
    if cfg.data.num_workers < 0 or cfg.data.prefetch < 1:
        raise ConfigError(f"data.num_workers={cfg.data.num_workers} must be >= 0 and "
                          f"data.prefetch={cfg.data.prefetch} >= 1")
    if cfg.optimizer.grad_accum_steps < 1:
        raise ConfigError("optimizer.grad_accum_steps must be >= 1")
    chunk = cfg.train.logits_chunk_len
    if chunk < 0 or (chunk and cfg.data.seq_len % chunk):
        raise ConfigError(f"train.logits_chunk_len={chunk} must divide data.seq_len="
                          f"{cfg.data.seq_len} (or be 0 for whole-sequence logits)")
    d = cfg.distill
    if d.teacher and not 1 <= d.top_k <= m.vocab_size:
        raise ConfigError(f"distill.top_k={d.top_k} must be in 1..model.vocab_size={m.vocab_size}")
    if d.weight < 0:
        raise ConfigError(f"distill.weight={d.weight} must be >= 0")
    if cfg.data.global_batch_size % cfg.optimizer.grad_accum_steps:
        raise ConfigError("data.global_batch_size must be divisible by optimizer.grad_accum_steps")


# ----------------------------------------------------------------------------- (de)serialisation

def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_json(cfg: ExperimentConfig) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def from_dict(cls: type, d: dict, path: str = "") -> Any:
    """Builds dataclass `cls` from a nested dict, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in d.items():
        if key not in names:
            raise ConfigError(_unknown_key_message(path + key, names, path))
        kwargs[key] = _coerce(hints[key], value, path + key)
    return cls(**kwargs)


def load_json(path: str) -> ExperimentConfig:
    """A config JSON file; malformed, truncated or non-UTF-8 text is a one-line ConfigError."""
    from ifp_jax.json_files import read_object
    d = read_object(path, ConfigError, "it was edited or cut short: restore the config "
                                       "`ifp train` wrote there")
    try:
        return from_dict(ExperimentConfig, d)
    except ConfigError as e:  # name the file: the key may be one the user never typed
        raise ConfigError(f"{path}: {e}") from None


def load_workdir_config(workdir: str) -> ExperimentConfig:
    """The config an `ifp train` run wrote into `workdir` (light: no JAX, no orbax)."""
    from ifp_jax.storage import paths
    path = workdir_lib.config_path(workdir)
    if not paths.exists(path):
        raise ConfigError(f"{path} not found: is {workdir} the --workdir of an `ifp train` run?")
    return load_json(path)


def _unknown_key_message(key: str, names: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], names, n=1, cutoff=0.5)
    hint = f"did you mean '{prefix}{close[0]}'?" if close else f"valid keys: {', '.join(names)}"
    return f"unknown config key {key!r}: {hint}"


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Checks/converts `value` to the annotated type `tp` or raises ConfigError."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' is a section; set its fields as '{key}.<field>=...'")
        return from_dict(tp, value, key + ".")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {list(choices)}, got {value!r}")
        return value
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        return value if isinstance(value, str) else str(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping like {{a: 1.0}}, got {value!r}")
        return dict(value)
    return value


# ----------------------------------------------------------------------------- overrides

def apply_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Applies `dotted.key=value` strings; raises ConfigError naming the closest valid key."""
    d = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(d, ExperimentConfig, key.strip(), value)
    return from_dict(ExperimentConfig, d)


def _set_dotted(d: dict, cls: type, key: str, value: Any) -> None:
    parts = key.split(".")
    node, node_cls, prefix = d, cls, ""
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node_cls)]
        if part not in names:
            raise ConfigError(_unknown_key_message(prefix + part, names, prefix))
        field_type = typing.get_type_hints(node_cls)[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(field_type):
                raise ConfigError(f"config key '{key}' is a section; set '{key}.<field>=...'")
            node[part] = _coerce(field_type, value, key)
            return
        if not dataclasses.is_dataclass(field_type):
            raise ConfigError(f"config key '{prefix + part}' has no sub-keys")
        node, node_cls, prefix = node[part], field_type, prefix + part + "."


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)


__all__ = [
    "ConfigError", "ModelConfig", "PredictorConfig", "PruningConfig", "DataConfig",
    "OptimizerConfig", "MeshConfig", "CheckpointConfig", "TrainConfig", "ExperimentConfig",
    "apply_overrides", "to_json", "to_dict", "from_dict", "load_json", "replace", "Optional",
]
