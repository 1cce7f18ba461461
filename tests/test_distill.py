"""Distillation from a frozen teacher (distill.*): the top-k truncated KL against a numpy
reference, chunked against whole logits, the teacher's arrays against its own logits, and a
distilled static run end to end."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifp_jax.config import ConfigError, replace
from ifp_jax.data import pipeline
from ifp_jax.train.loop import train
from ifp_jax.train.loss import chunked_losses, token_cross_entropy, token_topk_kl
from ifp_jax.train.state import build_model, params_layout
from ifp_jax.train.step import STEP_KEYS, _microbatch_loss
from ifp_jax.train.teacher import Teacher, same_vocabulary, teacher_config, topk_logprobs
from ifp_jax import sharding as shd
from ifp_jax.train import checkpoint as ckpt_lib
from tests.helpers import tiny_config


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference_kl(student, teacher, k):
    """numpy: KL(teacher renormalised over its top k || student), per position."""
    out = np.zeros(student.shape[:-1])
    for idx in np.ndindex(*student.shape[:-1]):
        ids = np.argsort(-teacher[idx])[:k]
        p = _log_softmax(teacher[idx][ids])
        q = _log_softmax(student[idx])[ids]
        out[idx] = np.sum(np.exp(p) * (p - q))
    return out


def test_topk_kl_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 3, 11)) * 2, rng.normal(size=(2, 3, 11)) * 2
    for k in (11, 4, 1):
        ids, logp = topk_logprobs(jnp.asarray(teacher), k)
        got = token_topk_kl(jnp.asarray(student), ids, logp)
        np.testing.assert_allclose(got, _reference_kl(student, teacher, k), rtol=1e-5, atol=1e-6)
    ids, logp = topk_logprobs(jnp.asarray(teacher), 11)  # full support, same model: KL = 0
    np.testing.assert_allclose(token_topk_kl(jnp.asarray(teacher), ids, logp), 0, atol=1e-6)


def test_chunked_losses_equal_whole_logit_losses():
    rng = np.random.default_rng(1)
    b, t, d, vocab, padded, k = 2, 8, 5, 13, 16, 4
    hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(d, padded)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, vocab, size=(b, t)), jnp.int32)
    teacher = topk_logprobs(jnp.asarray(rng.normal(size=(b, t, vocab)), jnp.float32), k)
    logits = (hidden @ kernel)[..., :vocab]
    ce, kl = chunked_losses(hidden, kernel, targets, vocab, chunk_len=4, teacher=teacher)
    np.testing.assert_allclose(ce, token_cross_entropy(logits, targets), rtol=1e-5)
    np.testing.assert_allclose(kl, token_topk_kl(logits, *teacher), rtol=1e-5, atol=1e-6)
    ce_only, none = chunked_losses(hidden, kernel, targets, vocab, chunk_len=2)
    assert none is None
    np.testing.assert_allclose(ce_only, ce, rtol=1e-6)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A dense tiny run (3 steps) to distil from."""
    workdir = str(tmp_path_factory.mktemp("teacher"))
    cfg = tiny_config(name="test_teacher", mode="dense", steps=3)
    train(cfg, workdir)
    return cfg, workdir


def test_teacher_arrays_are_the_top_k_of_its_own_logits(teacher_run):
    cfg, workdir = teacher_run
    student = replace(tiny_config(name="test_student", mode="static", steps=2),
                      distill=replace(cfg.distill, teacher=workdir, top_k=5))
    mesh = shd.make_mesh(student.mesh)
    teacher = Teacher(student, mesh)
    host = pipeline.make_train_batches(student.data, student.predictor.max_prompt_len).batch_at(0)
    got = jax.device_get(teacher({"decoder_input_tokens": jnp.asarray(
        host["decoder_input_tokens"])}))
    model = build_model(cfg)
    params = ckpt_lib.restore_latest_params(workdir, params_layout(model, cfg, mesh))[1]
    logits = np.asarray(model.apply({"params": params}, host, mode="dense").logits)
    want_ids, want_logp = jax.device_get(topk_logprobs(jnp.asarray(logits), 5))
    np.testing.assert_array_equal(got["teacher_ids"], want_ids)
    np.testing.assert_allclose(got["teacher_logprobs"], want_logp, rtol=1e-5, atol=1e-5)
    # Chunked, the teacher gives the same arrays.
    chunked = replace(student, train=replace(student.train, logits_chunk_len=16))
    again = jax.device_get(Teacher(chunked, mesh)({"decoder_input_tokens": jnp.asarray(
        host["decoder_input_tokens"])}))
    np.testing.assert_array_equal(again["teacher_ids"], want_ids)

    # The step's loss is CE + weight * mean KL over loss tokens.
    batch = {k: jnp.asarray(host[k]) for k in STEP_KEYS}
    student_model = build_model(student)
    sp = nn.meta.unbox(student_model.init(jax.random.key(0), batch, mode="soft",
                                          temperature=1.0)["params"])
    total = jnp.maximum(batch["decoder_loss_weights"].sum(), 1.0)
    plain, _ = _microbatch_loss(sp, student_model, student, batch, temperature=1.0,
                                total_weight=total, num_tasks=1)
    distilled = replace(student, distill=replace(student.distill, weight=0.5))
    with_kl, metrics = _microbatch_loss(sp, student_model, distilled, {**batch, **got},
                                        temperature=1.0, total_weight=total, num_tasks=1)
    out = student_model.apply({"params": sp}, batch, mode="static", temperature=1.0, train=True)
    kl = token_topk_kl(out.logits, got["teacher_ids"], got["teacher_logprobs"])
    kl_mean = float((kl * batch["decoder_loss_weights"]).sum() / total)
    np.testing.assert_allclose(float(with_kl), float(plain) + 0.5 * kl_mean, rtol=1e-5)
    assert kl_mean > 0 and "distill_kl" in metrics


def test_distilled_static_run_trains_and_logs_the_kl(teacher_run, tmp_path):
    cfg, workdir = teacher_run
    student = replace(tiny_config(name="test_student", mode="static", steps=2),
                      distill=replace(cfg.distill, teacher=workdir, top_k=8),
                      train=replace(cfg.train, steps=2, log_every=1, init_llm_from=workdir))
    train(student, str(tmp_path / "student"))
    with open(os.path.join(tmp_path / "student", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    kls = [r["distill_kl"] for r in rows if "distill_kl" in r]
    assert len(kls) == 2 and all(np.isfinite(kls))
    # Student and teacher start equal (init_llm_from) but the student is masked: KL > 0.
    assert kls[0] > 0


def test_a_teacher_with_another_vocabulary_is_refused(teacher_run):
    cfg, workdir = teacher_run
    student = tiny_config(name="test_student", mode="static")
    student = replace(student, model=replace(student.model, vocab_size=300),
                      distill=replace(student.distill, teacher=workdir))
    with pytest.raises(ConfigError, match="same vocabulary"):
        teacher_config(student)
    with pytest.raises(ConfigError, match="distill.top_k"):
        replace(student, distill=replace(student.distill, top_k=0))


def test_two_imports_of_one_tokenizer_are_the_same_vocabulary(tmp_path):
    for name, text in (("a", '{"model": 1}'), ("b", '{"model": 1}'), ("c", '{"model": 2}')):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "tokenizer.json").write_text(text)
    a, b, c = (str(tmp_path / n / "tokenizer.json") for n in "abc")
    assert same_vocabulary(a, b) and same_vocabulary("byte", "byte")
    assert not same_vocabulary(a, c)
    assert not same_vocabulary("byte", a)
