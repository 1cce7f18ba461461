"""End-to-end training on tiny shapes: loss falls, checkpoints round-trip, resume is exact."""

import json
import os

import jax
import numpy as np
import pytest

from ifp_jax.config import ConfigError, replace
from ifp_jax.data import pipeline, tasks
from ifp_jax.train import checkpoint as ckpt_lib
from ifp_jax.eval.hook import EvaluateHeldOut
from ifp_jax.train.hooks import Profile
from ifp_jax.train.loop import train
from ifp_jax.train.optim import make_optimizer
from ifp_jax.train.state import build_model, params_layout, state_layout
from ifp_jax import sharding as shd
from tests.helpers import tiny_config


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["loss"] for r in rows if "loss" in r]


def _params_equal(a, b, atol=0.0):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One 20-step IFP run shared by the tests below (compiled once)."""
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    cfg = tiny_config(steps=20)
    state = train(cfg, workdir, [EvaluateHeldOut(), Profile(start=3, stop=5)])
    return cfg, workdir, jax.device_get(state)


def test_loss_falls_and_metrics_are_written(uninterrupted):
    cfg, workdir, _ = uninterrupted
    losses = _losses(workdir)
    assert len(losses) == 4
    assert losses[-1] < losses[0] - 0.3, losses
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        row = json.loads(f.readline())
    for key in ("perf/tokens_per_sec", "perf/eta_sec", "mask/overlap_within_task",
                "mask/overlap_across_tasks", "mask/units_used_frac", "mask/lambda_kept_mean",
                "balance_loss"):
        assert key in row, key
    assert 0 <= row["perf/data_wait_frac"] < 1, row  # the step runs most of the window
    assert 100 < row["perf/host_rss_mib"] < 24_000, row  # this process's resident set, MiB
    assert any(k.startswith("task_loss/") for k in row)
    assert os.listdir(os.path.join(workdir, "tb"))
    with open(os.path.join(workdir, "eval_results.json")) as f:
        assert f.read()


def test_per_task_eval_selects_one_mask_per_task_from_its_instruction(uninterrupted, capsys):
    """`ifp eval --mask per-task --json`: one JSON object on stdout, the same in the workdir;
    every example of a task uses one mask (within-task overlap exactly 1), and that mask is the
    predictor's selection from the task's instruction text alone (what `ifp export --task`
    keeps)."""
    from ifp_jax.vocab.light import get_light_vocabulary
    from ifp_jax.data.skills import task_instruction
    from ifp_jax.selection.batch_masks import per_task_masks
    from ifp_jax.eval.run import evaluate_workdir, results_path
    from ifp_jax.selection.prompt import predictor_tokens
    from ifp_jax.selection.units import Selector
    cfg, workdir, final = uninterrupted
    capsys.readouterr()
    _, result = evaluate_workdir(workdir, mask="per-task", as_json=True)
    record = json.loads(capsys.readouterr().out)
    with open(results_path(workdir, "per-task", cfg.pruning.eval_mask)) as f:
        assert json.load(f) == record
    names = pipeline.eval_task_names(cfg.data)
    assert set(record["per_task"]) == set(names) and record["mask"] == "per-task"
    assert result.mask_stats["mask/overlap_within_task"] == pytest.approx(1.0)
    assert result.mask_stats["mask/overlap_across_tasks"] < 1.0  # not one mask for everything
    with open(os.path.join(record["mask_report"], "overlap.json")) as f:  # the Figure 3 data
        assert json.load(f)["all"]["within"] == pytest.approx(1.0)
    assert os.path.exists(os.path.join(record["mask_report"], "overlap_all.png"))
    assert os.path.exists(os.path.join(record["mask_report"], "collapse.png"))

    model, params = build_model(cfg), final.params
    with jax.set_mesh(shd.make_mesh(cfg.mesh)):
        table = np.asarray(per_task_masks(model, params, cfg, instructions=[
            task_instruction(name) for name in names]))
    select = Selector(model, cfg)
    vocab = get_light_vocabulary(cfg.data.predictor_vocabulary)
    for t, name in enumerate(names):
        sel = select(params, predictor_tokens(vocab, task_instruction(name),
                                              cfg.predictor.max_prompt_len))
        np.testing.assert_allclose(table[t], sel.dense_mask(cfg.model.d_ffn), atol=1e-6,
                                   err_msg=name)


def test_griffin_eval_keeps_k_prompt_dependent_units(uninterrupted):
    """`ifp eval --mask griffin`: training-free selection on the run's LLM; k units per layer,
    different prompts keeping different units; results under their own file name."""
    from ifp_jax.eval.run import evaluate_workdir, results_path
    cfg, workdir, _ = uninterrupted
    _, result = evaluate_workdir(workdir, mask="griffin", verbose=False)
    assert os.path.exists(results_path(workdir, "griffin", cfg.pruning.eval_mask))
    assert set(result.per_task) == set(pipeline.eval_task_names(cfg.data))
    assert 0.0 <= result.mean <= 1.0
    assert (result.kept.sum(-1) == cfg.pruning.keep_k).all()
    assert 0.0 < result.mask_stats["mask/overlap_across_tasks"] < 1.0


def test_eval_refuses_a_mask_the_run_cannot_make(uninterrupted):
    from ifp_jax.eval.run import evaluate_workdir
    _, workdir, _ = uninterrupted
    with pytest.raises(ConfigError, match="pruning.mode=static"):
        evaluate_workdir(workdir, mask="static")


def test_checkpoint_round_trip_restores_state_and_next_batches(uninterrupted):
    cfg, workdir, final = uninterrupted
    tasks.register_all(cfg.data, cfg.predictor.max_prompt_len)
    mesh = shd.make_mesh(cfg.mesh)
    model = build_model(cfg)
    layout = state_layout(model, cfg, make_optimizer(cfg.optimizer, cfg.train.steps), mesh)
    ck = ckpt_lib.Checkpointer(workdir, cfg.checkpoint)
    step, state, data_state = ck.restore_latest(layout.abstract)
    ck.close()
    assert step == 20 and int(state.step) == 20
    _params_equal(state.params, final.params)
    _params_equal(state.opt_state, final.opt_state)
    # The restored data position continues exactly where 20 uninterrupted steps leave off.
    fresh = pipeline.make_train_batches(cfg.data, cfg.predictor.max_prompt_len)
    for _ in range(20):
        next(fresh)
    resumed = pipeline.make_train_batches(cfg.data, cfg.predictor.max_prompt_len)
    resumed.set_state(data_state)
    for _ in range(3):
        a, b = next(fresh), next(resumed)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


class _Interrupt(Exception):
    pass


def _interrupting(make_batches, after: int):
    """make_train_batches whose iterator raises _Interrupt after `after` batches."""
    def make(*args, **kwargs):
        batches = make_batches(*args, **kwargs)
        inner_next, count = batches.__next__, [0]

        class Wrapped(type(batches)):
            def __next__(self):
                count[0] += 1
                if count[0] > after:
                    raise _Interrupt()
                return inner_next()
        batches.__class__ = Wrapped
        return batches
    return make


def test_interrupted_run_resumes_to_identical_state(uninterrupted, tmp_path, monkeypatch):
    """Stops the loop after 13 batches (last checkpoint: step 10); rerunning the same config
    resumes from step 10 and ends bit-identical to the uninterrupted run."""
    cfg, _, final = uninterrupted
    workdir = str(tmp_path / "interrupted")
    real = pipeline.make_train_batches
    monkeypatch.setattr(pipeline, "make_train_batches", _interrupting(real, after=13))
    with pytest.raises(_Interrupt):
        train(cfg, workdir)
    monkeypatch.setattr(pipeline, "make_train_batches", real)
    assert ckpt_lib.Checkpointer(workdir, cfg.checkpoint).latest_step() == 10
    state = jax.device_get(train(cfg, workdir))
    _params_equal(state.params, final.params, atol=1e-6)
    losses = _losses(workdir)
    # Steps 5, 10 (first run), then 15, 20 after resuming; same values as uninterrupted.
    np.testing.assert_allclose(losses[-2:], _losses(uninterrupted[1])[-2:], rtol=1e-5)
    # The fault counts travel with the checkpoint: one restart, and the truncation counts of
    # the 20 steps each counted once (as in the uninterrupted run).
    resumed, straight = _last_row(workdir), _last_row(uninterrupted[1])
    assert resumed["events/restarts"] == 1 and straight["events/restarts"] == 0
    for key in ("events/predictor_truncated", "events/decoder_truncated",
                "events/nonfinite_steps", "events/skipped_checkpoints"):
        assert resumed[key] == straight[key], key


def _last_row(workdir: str) -> dict:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if "events/restarts" in line][-1]


def test_prepared_data_with_workers_trains_and_resumes_like_the_in_memory_run(
        uninterrupted, tmp_path, monkeypatch):
    """The same run on `ifp data prepare`d data with a grain worker process, interrupted after
    13 batches and rerun: it ends where the in-memory, uninterrupted run ended."""
    from ifp_jax.data.prepare import prepare
    cfg, _, final = uninterrupted
    prepare(cfg.data, cfg.predictor.max_prompt_len, str(tmp_path / "prepared"),
            log=lambda m: None)
    cfg = replace(cfg, data=replace(cfg.data, prepared_dir=str(tmp_path / "prepared"),
                                    num_workers=1))
    workdir = str(tmp_path / "run")
    real = pipeline.make_train_batches
    monkeypatch.setattr(pipeline, "make_train_batches", _interrupting(real, after=13))
    with pytest.raises(_Interrupt):
        train(cfg, workdir)
    monkeypatch.setattr(pipeline, "make_train_batches", real)
    state = jax.device_get(train(cfg, workdir))
    _params_equal(state.params, final.params, atol=1e-6)


def test_workdir_of_another_experiment_is_refused(uninterrupted):
    cfg, workdir, _ = uninterrupted
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    with pytest.raises(ConfigError, match="holds checkpoints of experiment 'test_tiny'"):
        train(replace(cfg, name="other"), workdir)
    with pytest.raises(ConfigError, match="different model"):
        train(replace(cfg, model=replace(cfg.model, d_ffn=128)), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_stage_chaining_initialises_llm_from_source(uninterrupted, tmp_path):
    cfg, workdir, final = uninterrupted
    chained = replace(cfg, name="test_chain",
                      optimizer=replace(cfg.optimizer, lr_llm=0.0),
                      train=replace(cfg.train, steps=1, init_llm_from=workdir))
    # lr_llm=0 freezes the LLM, so after one step it must still equal the source's weights.
    state = jax.device_get(train(chained, str(tmp_path / "chained")))
    _params_equal(state.params["decoder"], final.params["decoder"])
    with pytest.raises(ConfigError, match="config.json not found"):
        train(replace(chained, train=replace(chained.train, init_llm_from=str(tmp_path))),
              str(tmp_path / "chained2"))


def test_stage_init_replaces_subtrees_that_are_never_initialised(uninterrupted):
    """create_state with both sources: the replaced sub-trees (decoder, predictor, static
    scores) arrive abstract, come back equal to the source's, and the optimizer state is built
    from them; what no source replaces (here nothing) would keep its random init."""
    from ifp_jax import sharding as shd
    from ifp_jax.train.optim import make_optimizer
    from ifp_jax.train.stage_init import replaced_paths, stage_init
    from ifp_jax.train.state import build_model, create_state, state_layout
    cfg, workdir, final = uninterrupted
    both = replace(cfg, train=replace(cfg.train, init_llm_from=workdir,
                                      init_predictor_from=workdir))
    assert replaced_paths(both) == (("decoder",), ("predictor",), ("static_scores",))
    mesh = shd.make_mesh(both.mesh)
    model, tx = build_model(both), make_optimizer(both.optimizer, both.train.steps)
    layout = state_layout(model, both, tx, mesh)
    state = jax.device_get(create_state(model, both, tx, layout=layout, mesh=mesh,
                                        params_override=stage_init(both, mesh)))
    for key in ("decoder", "predictor", "static_scores"):
        _params_equal(state.params[key], final.params[key])
    moments = jax.tree_util.tree_leaves(state.opt_state)
    assert len(moments) > len(jax.tree_util.tree_leaves(state.params))


def test_profile_trace_is_written(uninterrupted):
    _, workdir, _ = uninterrupted
    traces = [f for _, _, files in os.walk(os.path.join(workdir, "profile")) for f in files
              if f.endswith(".xplane.pb")]
    assert traces, "no jax.profiler trace under DIR/profile"


def test_params_only_restore_reads_the_params_subtree(uninterrupted):
    cfg, workdir, final = uninterrupted
    mesh = shd.make_mesh(cfg.mesh)
    abstract = params_layout(build_model(cfg), cfg, mesh)
    step, params = ckpt_lib.restore_latest_params(workdir, abstract)
    assert step == 20
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(final.params)
    _params_equal(params, final.params)


def _restore_latest(cfg, workdir: str):
    """(step, state, checkpointer) of the newest step a fresh Checkpointer restores."""
    mesh = shd.make_mesh(cfg.mesh)
    layout = state_layout(build_model(cfg), cfg, make_optimizer(cfg.optimizer, cfg.train.steps),
                          mesh)
    ck = ckpt_lib.Checkpointer(workdir, cfg.checkpoint)
    step, state, _ = ck.restore_latest(layout.abstract)
    ck.close()
    return step, state, ck


def test_torn_newest_checkpoint_is_skipped_for_the_previous_one(uninterrupted, tmp_path, capsys):
    import shutil
    cfg, workdir, _ = uninterrupted
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    newest = os.path.join(copy, "checkpoints", "20", "state")
    for name in os.listdir(newest):  # the array data of step 20 is gone (a torn save)
        if name != "_METADATA":
            path = os.path.join(newest, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    step, state, ck = _restore_latest(cfg, copy)
    assert step == 15 and int(state.step) == 15
    assert "checkpoint step 20" in capsys.readouterr().err
    assert os.path.isdir(os.path.join(copy, "checkpoints", "20"))  # reported, never deleted


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_restored(
        uninterrupted, tmp_path, capsys, damage):
    """A flipped bit inside array data restores silently under orbax alone (wrong weights);
    the checksums recorded after each save catch it and a truncated file, name the file, and
    the previous step is restored. Nothing is deleted."""
    import shutil
    cfg, workdir, _ = uninterrupted
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    kept = sorted(os.listdir(os.path.join(copy, "checkpoints")), key=int)
    assert len(kept) >= 2 and sorted(os.listdir(os.path.join(copy, "checksums"))) == sorted(
        f"{s}.process_0.json" for s in kept)  # records of the kept steps only
    step_dir = os.path.join(copy, "checkpoints", "20")
    files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        data = bytearray(f.read())
        if damage == "flip":
            data[len(data) // 2] ^= 0x10
        else:
            data = data[:len(data) // 2]
        f.seek(0)
        f.truncate()
        f.write(bytes(data))
    step, state, ck = _restore_latest(cfg, copy)
    assert step == 15 and int(state.step) == 15
    err = capsys.readouterr().err
    assert f"checkpoint step 20: {largest} does not match the checksum" in err, err
    assert os.path.exists(largest)  # reported, never deleted
    assert ck.skipped_steps == 1  # counted in the run's events/skipped_checkpoints
