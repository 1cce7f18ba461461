"""The batch contract: one table of fields from which every consumer takes its keys and shapes.

A worked example (P = predictor.max_prompt_len = 4, T = data.seq_len = 6), one SFT example with
prompt tokens [7, 8, 9] (the predictor's vocabulary here equals the LLM's) and response [5, 1]
(1 = EOS):

    predictor_tokens       [7, 8, 9, 0]          the prompt's last P tokens, right-padded with 0
    decoder_target_tokens  [7, 8, 9, 5, 1, 0]    prompt + response, right-padded
    decoder_input_tokens   [0, 7, 8, 9, 5, 1]    the targets shifted right, 0 first
    decoder_loss_weights   [0, 0, 0, 1, 1, 0]    loss on the response tokens only
    task_id                2                     the task's index in the mixture
    predictor_truncated    0                     1 when the prompt was longer than P
    decoder_truncated      0                     1 when prompt + response exceeded T

With distillation (distill.teacher) the train step also reads the teacher's arrays, computed on
device each step (train/teacher.py): teacher_ids / teacher_logprobs [T, K], K = distill.top_k.

Each field names who reads it: 'step' (the train step), 'eval' (greedy decoding for exact
match), 'nll' (perplexity of text tasks), 'init' (the batch parameters are initialised from).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ifp_jax.config import ExperimentConfig

USES = ("step", "eval", "nll", "init")


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    dims: tuple[str, ...]  # per-example dimensions: 'P' prompt, 'T' sequence, 'K' teacher top-k
    dtype: type
    uses: frozenset[str]
    source: str = "data"  # 'data': the input pipeline; 'teacher': computed on device per step
    fill: int = 0  # the value of a placeholder batch (init, AOT): the predictor reads 0 as padding


FIELDS = (
    Field("predictor_tokens", ("P",), np.int32, frozenset(USES), fill=1),
    Field("decoder_input_tokens", ("T",), np.int32, frozenset(USES)),
    Field("decoder_target_tokens", ("T",), np.int32, frozenset({"step", "nll"})),
    Field("decoder_loss_weights", ("T",), np.float32, frozenset({"step", "eval", "nll"})),
    Field("task_id", (), np.int32, frozenset({"step"})),
    Field("predictor_truncated", (), np.int32, frozenset({"step"})),
    Field("decoder_truncated", (), np.int32, frozenset({"step"})),
    Field("teacher_ids", ("T", "K"), np.int32, frozenset({"step"}), source="teacher"),
    Field("teacher_logprobs", ("T", "K"), np.float32, frozenset({"step"}), source="teacher"),
)


def fields(use: str, *, source: str | None = "data") -> tuple[Field, ...]:
    """The fields `use` reads, in table order; source None: from the pipeline and the teacher."""
    if use not in USES:
        raise ValueError(f"unknown batch use {use!r}; expected one of {USES}")
    return tuple(f for f in FIELDS if use in f.uses and source in (None, f.source))


def keys(use: str, *, source: str | None = "data") -> tuple[str, ...]:
    return tuple(f.name for f in fields(use, source=source))


def example_shape(field: Field, cfg: ExperimentConfig) -> tuple[int, ...]:
    sizes = {"P": cfg.predictor.max_prompt_len, "T": cfg.data.seq_len, "K": cfg.distill.top_k}
    return tuple(sizes[d] for d in field.dims)


def step_fields(cfg: ExperimentConfig) -> tuple[Field, ...]:
    """What the compiled train step takes: the pipeline's fields, plus the teacher's when
    distilling."""
    return fields("step", source=None if cfg.distill.teacher else "data")


def placeholder(cfg: ExperimentConfig, batch_size: int, use: str) -> dict[str, np.ndarray]:
    """`use`'s data fields [batch_size, ...], each filled with its placeholder value."""
    return {f.name: np.full((batch_size,) + example_shape(f, cfg), f.fill, f.dtype)
            for f in fields(use)}
