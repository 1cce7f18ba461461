"""One batch contract (ifp_jax/batch.py): the pipeline's batches, the placeholder batch, the
compiled step's layout and the eval keys all agree with the field table."""

import dataclasses

import numpy as np

from ifp_jax import batch as batch_lib
from ifp_jax import sharding as shd
from ifp_jax.config import DistillConfig
from ifp_jax.data import pipeline, tasks
from ifp_jax.eval.evaluate import EVAL_KEYS, NLL_KEYS
from ifp_jax.train.compiled import batch_layout
from ifp_jax.train.state import dummy_batch
from ifp_jax.train.step import STEP_KEYS, TEACHER_KEYS
from tests.helpers import tiny_config


def _expected(cfg, fields, batch_size):
    return {f.name: ((batch_size,) + batch_lib.example_shape(f, cfg), np.dtype(f.dtype))
            for f in fields}


def _described(arrays):
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in arrays.items()}


def test_a_pipeline_batch_has_exactly_the_step_fields():
    cfg = tiny_config()
    tasks.register_all(cfg.data, cfg.predictor.max_prompt_len)
    host = next(pipeline.make_train_batches(cfg.data, cfg.predictor.max_prompt_len))
    assert _described(host) == _expected(cfg, batch_lib.fields("step"),
                                         cfg.data.global_batch_size)
    assert set(STEP_KEYS) == set(host)


def test_the_compiled_layout_is_the_step_fields_with_the_teacher_when_distilling():
    cfg = tiny_config()
    mesh = shd.make_mesh(cfg.mesh)
    b = cfg.data.global_batch_size
    assert _described(batch_layout(cfg, mesh)) == _expected(cfg, batch_lib.fields("step"), b)
    distilling = dataclasses.replace(cfg, distill=DistillConfig(teacher="somewhere", top_k=4))
    layout = batch_layout(distilling, mesh)
    assert _described(layout) == _expected(distilling, batch_lib.step_fields(distilling), b)
    assert set(layout) == set(STEP_KEYS) | set(TEACHER_KEYS)
    assert layout["teacher_ids"].shape == (b, cfg.data.seq_len, 4)


def test_the_placeholder_and_eval_batches_read_the_table():
    cfg = tiny_config()
    init = dummy_batch(cfg, 3)
    assert _described(init) == _expected(cfg, batch_lib.fields("init"), 3)
    assert (init["predictor_tokens"] == 1).all()  # a real token: 0 is the predictor's padding
    example = pipeline.make_eval_examples(cfg.data, cfg.predictor.max_prompt_len,
                                          "ifp_skill_reverse", 2)
    assert set(EVAL_KEYS) < set(NLL_KEYS) <= set(example)
    by_name = {f.name: f for f in batch_lib.FIELDS}
    for k in NLL_KEYS:
        assert example[k].dtype == np.dtype(by_name[k].dtype)
        assert example[k].shape[1:] == batch_lib.example_shape(by_name[k], cfg)
