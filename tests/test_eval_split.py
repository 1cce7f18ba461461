"""`ifp eval --split NAME` and perplexity of text tasks, on an untrained tiny run.

The workdir is made without the training loop or even an init compile: config.json plus one
checkpoint of random params drawn on the host (kernels at std 0.16 ~ 1/sqrt(fan-in), 8x the
init), so the FFN's share of the residual stream, hence the mask, visibly changes the perplexity.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifp_jax import metric
from ifp_jax.commands import main as cli
from ifp_jax import sharding as shd
from ifp_jax.config import ConfigError, replace
from ifp_jax.data import pipeline, tasks
from ifp_jax.eval.evaluate import evaluate
from ifp_jax.eval.run import evaluate_workdir, results_path
from ifp_jax.train import checkpoint as ckpt_lib
from ifp_jax.train.state import build_model, params_layout
from ifp_jax.train.step import STEP_KEYS, _microbatch_loss
from tests.helpers import tiny_config

TEXT = tasks.CPT_STDLIB
SKILL = "ifp_skill_upper"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """(cfg, workdir, model, params, mesh): a soft-mode run of mixture ifp_cpt (text only)."""
    workdir = str(tmp_path_factory.mktemp("text_run"))
    cfg = tiny_config(mixture="ifp_cpt")
    ckpt_lib.prepare_workdir(workdir, cfg)
    mesh = shd.make_mesh(cfg.mesh)
    model = build_model(cfg)
    rng = np.random.default_rng(0)

    def draw(path, a):
        name = path[-1].key
        x = (np.ones(a.shape) if name == "scale" else np.zeros(a.shape) if name == "bias"
             else rng.normal(0.0, 1.0 if name == "embedding" else 0.16, a.shape))
        return jax.device_put(x.astype(a.dtype), a.sharding)

    params = jax.tree_util.tree_map_with_path(draw, params_layout(model, cfg, mesh))
    ck = ckpt_lib.Checkpointer(workdir, cfg.checkpoint)
    ck.save(7, {"step": np.int32(7), "params": params}, {"step": 7})
    ck.close()
    return cfg, workdir, model, params, mesh


def _examples(cfg, split="validation"):
    tasks.register_all(cfg.data)
    return pipeline.make_eval_examples(cfg.data, cfg.predictor.max_prompt_len, TEXT,
                                       cfg.data.eval_examples_per_task, split)


def _ppl(model, params, cfg, mesh, mode):
    return evaluate(model, params, cfg, mesh, task_names=[], mode=mode,
                    text_task_names=[TEXT]).perplexity[TEXT]


def test_perplexity_is_exp_of_the_train_loss_on_the_same_examples_and_mask(text_run):
    """Per-input λ masks (soft run, eval_mask=lambda): the train step's loss function on the
    same examples at temperature_end gives the same mean NLL; dense: a numpy log-softmax."""
    cfg, _, model, params, mesh = text_run
    ex = _examples(cfg)
    batch = {k: jnp.asarray(ex[k]) for k in STEP_KEYS}
    total = jnp.maximum(batch["decoder_loss_weights"].sum(), 1.0)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        _, metrics = jax.jit(lambda p, b: _microbatch_loss(
            p, model, cfg, b, temperature=cfg.pruning.temperature_end, total_weight=total,
            num_tasks=1))(params, batch)
    train_nll = metric.compute({"loss": metrics["loss"]})["loss"]
    per_input = _ppl(model, params, cfg, mesh, "soft")
    np.testing.assert_allclose(per_input, np.exp(train_nll), rtol=1e-5)

    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        logits = jax.jit(lambda p, b: model.apply({"params": p}, b, mode="dense").logits)(
            params, batch)
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    tgt = np.take_along_axis(logp, ex["decoder_target_tokens"][..., None], -1)[..., 0]
    w = ex["decoder_loss_weights"]
    dense = _ppl(model, params, cfg, mesh, "dense")
    np.testing.assert_allclose(dense, np.exp(-(tgt * w).sum() / w.sum()), rtol=1e-5)
    # Only the target chunk counts (chunk 2 after chunk 1), and the mask changes the mean NLL
    # by far more than the tolerance (here by ~0.04 nats).
    assert w.sum() == len(w) * cfg.data.cpt_chunk_len
    assert abs(np.log(per_input) - np.log(dense)) > 0.01, (per_input, dense)

    # Chunked logits (train.logits_chunk_len) give the same perplexity as whole logits.
    chunked = replace(cfg, train=replace(cfg.train, logits_chunk_len=16))
    np.testing.assert_allclose(_ppl(model, params, chunked, mesh, "soft"), per_input, rtol=1e-5)


def test_split_train_and_validation_differ_in_examples_results_and_files(text_run, capsys):
    cfg, workdir, *_ = text_run
    val, train = _examples(cfg), _examples(cfg, "train")
    assert not set(val["prompt_text"]) & set(train["prompt_text"])

    _, r_val = evaluate_workdir(workdir, verbose=False)
    _, r_train = evaluate_workdir(workdir, split="train", as_json=True)
    stdout = json.loads(capsys.readouterr().out)
    # Today's file name for 'validation'; other splits add _<split>.
    assert results_path(workdir, "per-input", "lambda") == os.path.join(
        workdir, "eval_per-input_lambda.json")
    assert results_path(workdir, "per-input", "lambda", "train") == os.path.join(
        workdir, "eval_per-input_lambda_train.json")
    with open(results_path(workdir, "per-input", "lambda")) as f:
        rec_val = json.load(f)
    with open(results_path(workdir, "per-input", "lambda", "train")) as f:
        text = f.read()
    rec_train = json.loads(text)
    assert "NaN" not in text and stdout == rec_train
    assert (rec_val["split"], rec_train["split"], rec_train["step"]) == ("validation", "train", 7)
    # ifp_cpt has no instruction task: perplexity only, mean null (not a NaN literal).
    assert r_val.per_task == {} and np.isnan(r_val.mean) and rec_val["mean"] is None
    assert rec_val["perplexity"] == pytest.approx(r_val.perplexity)
    assert rec_train["perplexity"] == pytest.approx(r_train.perplexity)
    assert r_val.perplexity[TEXT] != pytest.approx(r_train.perplexity[TEXT], rel=1e-4)


def test_bad_split_is_a_one_line_error_naming_the_valid_ones(text_run, capsys):
    cfg, workdir, *_ = text_run
    with pytest.raises(ConfigError, match=r"has no split 'test'; use one of train, validation"):
        _examples(cfg, "test")
    assert cli.main(["eval", "--workdir", workdir, "--split", "test"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ifp: error: --split must be one of train, validation")
    assert "'test'" in err and len(err.splitlines()) == 1
    assert not any("test" in name for name in os.listdir(workdir))


def test_instruction_and_text_tasks_together_per_task_masks(text_run):
    """Exact match for the instruction task (mean over instruction tasks only) and perplexity for
    the text task; under --mask per-task the text task (no instruction) gets per-input masks."""
    cfg, _, model, params, mesh = text_run
    cfg = replace(cfg, data=replace(cfg.data, eval_examples_per_task=4))
    per_task = evaluate(model, params, cfg, mesh, task_names=[SKILL], per_task=True,
                        text_task_names=[TEXT])
    assert list(per_task.per_task) == [SKILL] and per_task.mean == per_task.per_task[SKILL]
    assert list(per_task.perplexity) == [TEXT]
    np.testing.assert_allclose(per_task.perplexity[TEXT], _ppl(model, params, cfg, mesh, "soft"),
                               rtol=1e-6)
    # Task names given, text tasks not: no perplexity (the training hook's call).
    assert evaluate(model, params, cfg, mesh, task_names=[]).perplexity == {}
