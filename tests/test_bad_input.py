"""Bad input of the README's "Bad input" table that no other module checks: each is one line
through the `ifp` command (exit 2, `ifp: error: ...` naming the thing and the fix) and leaves no
output behind. One tiny run, stopped by SIGTERM and resumed into a NaN step, serves the tests
that need a trained workdir (two short compiles)."""

import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import types

import numpy as np
import pytest

from ifp_jax import platform
from ifp_jax.commands import main as cli
from ifp_jax.config import ModelConfig, replace
from ifp_jax.errors import DataError
from tests.helpers import TINY_MODEL, TINY_OVERRIDES, tiny_config


@pytest.fixture(autouse=True)
def _no_compilation_cache(monkeypatch):
    # `ifp export/generate` point JAX's persistent cache at ~/.cache: not from inside the suite.
    monkeypatch.setattr(platform, "use_compilation_cache", lambda: None)


def _ifp_error(capsys, *argv: str) -> str:
    """Runs `ifp ARGV` in this process; asserts exit 2 with exactly one `ifp: error:` line on
    stderr and returns it."""
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ifp: error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("override, fragment", [
    ("model.n_kv_heads=0", "model.n_kv_heads=0 must be >= 1"),  # was a ZeroDivisionError
    ("predictor.backbone.n_layers=0", "predictor.backbone.n_layers=0 must be >= 1"),
    ("train.log_every=0", "train.log_every=0 must be >= 1"),  # was a crash after compiling
    ("checkpoint.every_steps=0", "checkpoint.every_steps=0 must be >= 1"),
    ("checkpoint.keep=0", "checkpoint.keep=0 must be >= 1"),
    ("data.global_batch_size=0", "data.global_batch_size=0 must be >= 1"),
    ("train.steps=-1", "train.steps=-1 must be >= 0"),
    ("optimizer.lr_llm=nan", "optimizer.lr_llm=nan must be a finite number >= 0"),
    ("pruning.temperature_end=0", "pruning.temperature_end=0.0 must be a finite number > 0"),
    ("pruning.keep_k=1.5", "'pruning.keep_k' must be an integer"),
    ("model.tie_embeddings=maybe", "'model.tie_embeddings' must be true or false"),
    ("data.rates=[1]", "'data.rates' must be a mapping"),
    ("pruning.keep_k=65", "pruning.keep_k=65 must be in 1..model.d_ffn=64"),
])
def test_config_values_out_of_range_or_of_the_wrong_type_stop_train_before_the_workdir(
        capsys, tmp_path, override, fragment):
    workdir = tmp_path / "run"
    err = _ifp_error(capsys, "train", "tiny_multiskill", "--workdir", str(workdir),
                     *TINY_OVERRIDES, override)
    assert fragment in err, err
    assert not workdir.exists()


def test_an_unknown_experiment_stops_train_before_the_workdir(capsys, tmp_path):
    err = _ifp_error(capsys, "train", "tiny_multiskil", "--workdir", str(tmp_path / "run"))
    assert err == ("ifp: error: unknown experiment 'tiny_multiskil': did you mean "
                   "'tiny_multiskill'?")
    assert not (tmp_path / "run").exists()


def _jsonl(path, lines: list[bytes]) -> str:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


GOOD = json.dumps({"prompt": "reverse ab", "response": "ba"}).encode()


@pytest.mark.parametrize("setting, fragment", [
    ("data.mixture=ifp_multiskil", "unknown data.mixture 'ifp_multiskil': did you mean "
                                   "'ifp_multiskill'?"),
    ("data.rates={ifp_skill_ad: 1.0}", "did you mean 'ifp_skill_add'?"),
    ("data.jsonl_path=<missing>", "no such JSONL file; set data.jsonl_path"),
    ("data.jsonl_path=<truncated>", "truncated.jsonl:2: expected JSON object"),
    ("data.jsonl_path=<tasks_dir>", "needs at least 20"),
])
def test_data_errors_stop_train_before_the_workdir(capsys, tmp_path, setting, fragment):
    """Unknown mixture/task, a missing or cut-short JSONL file, a user task too small: found
    before `ifp train` creates its workdir (they used to leave config.json and .lock)."""
    (tmp_path / "tasks").mkdir()
    _jsonl(tmp_path / "tasks" / "rev.jsonl", [GOOD] * 5)
    paths = {"missing": tmp_path / "missing.jsonl", "tasks_dir": tmp_path / "tasks",
             "truncated": _jsonl(tmp_path / "truncated.jsonl", [GOOD, b'{"prompt": "ab", "re'])}
    mixture = ("data.mixture=ifp_user" if "tasks_dir" in setting else
               "data.mixture=ifp_jsonl" if "jsonl_path" in setting else "data.seed=0")
    workdir = tmp_path / "run"
    for name, path in paths.items():
        setting = setting.replace(f"<{name}>", str(path))
    err = _ifp_error(capsys, "train", "tiny_multiskill", "--workdir", str(workdir), mixture,
                     setting)
    assert fragment in err, err
    assert not workdir.exists()


@pytest.mark.parametrize("lines, fragment", [
    ([GOOD, b'{"prompt": "cut", "respo'], r"tasks\.jsonl:2: expected JSON object"),  # truncated
    ([GOOD, GOOD, b'{"prompt": "\xff\xfe", "response": "x"}'], r"tasks\.jsonl:3: not UTF-8; "
                                                                r"re-encode the file as UTF-8"),
    ([b'{"prompt": "", "response": "x"}'], r"tasks\.jsonl:1: empty 'prompt'"),
    ([b'{"prompt": "a", "response": 3}'], r"tasks\.jsonl:1: expected JSON object"),
    ([b""], r"tasks\.jsonl: no examples"),
])
def test_bad_jsonl_lines_name_file_and_line(tmp_path, lines, fragment):
    from ifp_jax.data.user_tasks import read_jsonl
    with pytest.raises(DataError, match=fragment) as error:
        read_jsonl(_jsonl(tmp_path / "tasks.jsonl", lines))
    assert "\n" not in str(error.value)


def test_an_empty_response_is_allowed(tmp_path):
    from ifp_jax.data.user_tasks import read_jsonl
    path = _jsonl(tmp_path / "tasks.jsonl", [b'{"prompt": "say nothing", "response": ""}'])
    assert read_jsonl(path) == [{"prompt": "say nothing", "response": ""}]


# ----------------------------------------------------------------------------- generate


@pytest.mark.parametrize("flag, fragment", [
    ("--temperature=-0.5", "--temperature=-0.5 must be a finite number >= 0 (0 = greedy)"),
    ("--temperature=nan", "--temperature=nan must be a finite number >= 0"),
    ("--temperature=inf", "--temperature=inf must be a finite number >= 0"),
    ("--top-p=0", "--top-p=0.0 must be in (0, 1]"),
    ("--top-p=1.5", "--top-p=1.5 must be in (0, 1]"),
    ("--top-p=nan", "--top-p=nan must be in (0, 1]"),
    ("--max-new-tokens=0", "--max-new-tokens=0 must be >= 1"),
    ("--max-new-tokens=-3", "--max-new-tokens=-3 must be >= 1"),
    ("--seed=-1", "--seed=-1 must be in 0..4294967295"),
    ("--seed=18446744073709551616", "must be in 0..4294967295"),  # was an OverflowError
    ("--prompt=", "--prompt is empty"),
])
def test_generation_settings_out_of_range_are_one_line_before_any_model_is_read(
        capsys, tmp_path, flag, fragment):
    model = tmp_path / "never_read"
    err = _ifp_error(capsys, "generate", "--model", str(model), "--prompt", "reverse ab", flag)
    assert fragment in err, err
    assert not model.exists()


# ----------------------------------------------------------------------------- missing files


@pytest.mark.parametrize("command", ["eval", "export", "generate --workdir", "generate --model",
                                     "import-hf"])
def test_a_missing_input_is_named_and_nothing_is_written(capsys, tmp_path, command):
    missing, out = str(tmp_path / "missing"), tmp_path / "out"
    argv = {"eval": ["eval", "--workdir", missing],
            "export": ["export", "--workdir", missing, "--prompt", "x", "--out", str(out)],
            "generate --workdir": ["generate", "--workdir", missing, "--prompt", "x"],
            "generate --model": ["generate", "--model", missing, "--prompt", "x"],
            "import-hf": ["import-hf", missing, "--out", str(out)]}[command]
    err = _ifp_error(capsys, *argv)
    want = "is not an ifp_jax export" if command == "generate --model" else "config.json not found"
    assert want in err and missing in err, err
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("content, fragment", [
    (b'{"name": "test_tiny", "model": {"d_mod', "is not valid UTF-8 JSON (JSONDecodeError)"),
    (b"\xff\xfe{}", "is not valid UTF-8 JSON (UnicodeDecodeError)"),
    (b"[1, 2]", "must hold a JSON object"),
    (b'{"model": {"d_modle": 32}}', "unknown config key 'model.d_modle': did you mean "
                                    "'model.d_model'?"),
])
def test_a_damaged_workdir_config_is_one_line(capsys, tmp_path, content, fragment):
    (tmp_path / "config.json").write_bytes(content)
    err = _ifp_error(capsys, "generate", "--workdir", str(tmp_path), "--prompt", "x")
    assert fragment in err and "config.json" in err, err


# ----------------------------------------------------------------------------- exported models

SMALL = dataclasses.replace(TINY_MODEL, d_ffn=16)


def _decoder_params(cfg: ModelConfig) -> dict:
    """Zeros in the decoder's params layout (traced, not compiled: only the shapes matter)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from ifp_jax.model.decoder import Decoder
    shapes = jax.eval_shape(lambda: Decoder(cfg).init(jax.random.key(0),
                                                      jnp.zeros((1, 4), jnp.int32)))["params"]
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), nn.meta.unbox(shapes))


@pytest.fixture(scope="module")
def small_params():
    return _decoder_params(SMALL)


def _export(path, cfg, params, vocabulary="byte") -> str:
    from ifp_jax.export.orbax_io import save_exported
    save_exported(str(path), cfg, params, vocabulary, {})
    return str(path)


def _drop(tree: dict, key: str) -> dict:
    head, _, rest = key.partition("/")
    if not rest:
        return {k: v for k, v in tree.items() if k != head}
    return {**tree, head: _drop(tree[head], rest)}


def test_an_exported_model_with_missing_extra_or_misshapen_tensors_is_named(
        capsys, tmp_path, small_params):
    from ifp_jax.export.orbax_io import load_exported
    good = _export(tmp_path / "good", SMALL, small_params)
    cfg, params, vocab = load_exported(good)  # the check accepts what save_exported wrote
    assert cfg == SMALL and vocab == "byte"
    assert params.keys() == small_params.keys()
    up = "layers/mlp/up_proj/kernel"
    cases = {
        "missing": (_drop(small_params, up), f"lacks 1 tensor(s) its ifp_model.json needs, "
                                             f"e.g. {up}"),
        "extra": ({**small_params, "extra_head": {"kernel": np.zeros((2, 2), np.float32)}},
                  "holds 1 tensor(s) its ifp_model.json has no place for, e.g. "
                  "extra_head/kernel"),
        "misshapen": ({**small_params, "norm": {"scale": np.ones(7, np.float32)}},
                      "tensor norm/scale has shape (7,), its ifp_model.json needs (32,)"),
    }
    for name, (params, fragment) in cases.items():
        err = _ifp_error(capsys, "generate", "--model", _export(tmp_path / name, SMALL, params),
                         "--prompt", "reverse ab")
        assert fragment in err and "export it again" in err, (name, err)


def test_an_exported_model_with_a_larger_vocabulary_than_its_embedding_is_refused(
        capsys, tmp_path):
    narrow = dataclasses.replace(SMALL, vocab_size=200)  # the byte vocabulary has 259 ids
    out = _export(tmp_path / "narrow", narrow, _decoder_params(narrow))
    err = _ifp_error(capsys, "generate", "--model", out, "--prompt", "reverse ab")
    assert "its vocabulary has 259 ids but the model has vocab_size=200" in err, err


def test_a_damaged_export_manifest_is_one_line(capsys, tmp_path, small_params):
    out = _export(tmp_path / "m", SMALL, small_params)
    manifest = os.path.join(out, "ifp_model.json")
    for content, fragment in ((b'{"model": {"d_mo', "is not valid UTF-8 JSON"),
                              (b'{"vocabulary": "byte"}', "must be an object with a 'model'")):
        with open(manifest, "wb") as f:
            f.write(content)
        err = _ifp_error(capsys, "generate", "--model", out, "--prompt", "x")
        assert fragment in err and "export the model again" in err, err
    shutil.rmtree(os.path.join(out, "params"))
    with open(manifest, "w") as f:
        json.dump({"model": dataclasses.asdict(SMALL), "vocabulary": "byte"}, f)
    assert "the export is incomplete" in _ifp_error(capsys, "generate", "--model", out,
                                                    "--prompt", "x")


# ----------------------------------------------------------------------------- a trained run


@dataclasses.dataclass
class _SigtermAt:
    """A hook that sends this process SIGTERM (a preemption notice) at one step."""

    step: int
    every: int = 1

    def begin(self, ctx, step, state):
        pass

    def __call__(self, ctx, step, state, metrics):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)

    def end(self, ctx, step, state):
        pass


def _nan_weights_in_draw(make_batches, draw: int):
    """make_train_batches whose `draw`-th batch (1-based, per call) has NaN loss weights: that
    step's loss and gradient are NaN."""
    class Batches:
        def __init__(self, inner):
            self._inner, self._drawn = inner, 0

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def __iter__(self):
            return self

        def __next__(self):
            batch, self._drawn = dict(next(self._inner)), self._drawn + 1
            if self._drawn == draw:
                batch["decoder_loss_weights"] = np.full_like(batch["decoder_loss_weights"],
                                                             np.nan)
            return batch

    return lambda *args, **kwargs: Batches(make_batches(*args, **kwargs))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """6 steps, checkpoints every 2. First call (nan_policy=skip): NaN at step 2, SIGTERM at
    step 3. Rerun (nan_policy=stop): resumes at 3, saves 4, NaN at step 5 stops it."""
    from ifp_jax.data import pipeline
    from ifp_jax.train.loop import NonFiniteLossError, train
    workdir = str(tmp_path_factory.mktemp("bad_input_run"))
    base = tiny_config(name="test_bad_input", steps=6, mixture="ifp_multiskill")
    cfg = replace(base, train=replace(base.train, log_every=1, nan_policy="skip"),
                  checkpoint=replace(base.checkpoint, every_steps=2))
    make_batches = pipeline.make_train_batches
    outs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "make_train_batches", _nan_weights_in_draw(make_batches, 2))
        outs.append(io.StringIO())
        with contextlib.redirect_stdout(outs[-1]), pytest.raises(SystemExit) as preempted:
            train(cfg, workdir, [_SigtermAt(3)])
        cfg = replace(cfg, train=replace(cfg.train, nan_policy="stop"))
        outs.append(io.StringIO())
        with contextlib.redirect_stdout(outs[-1]), pytest.raises(NonFiniteLossError) as stopped:
            train(cfg, workdir)
    return types.SimpleNamespace(cfg=cfg, workdir=workdir, exit_code=preempted.value.code,
                                 first=outs[0].getvalue(), second=outs[1].getvalue(),
                                 stop_error=str(stopped.value))


def _steps(workdir) -> list[int]:
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes_there(run):
    assert run.exit_code == 75
    assert "[ifp] preemption notice (SIGTERM): checkpoint saved at step 3" in run.first
    assert f"[ifp] resumed {run.workdir} at step 3" in run.second
    assert 3 in _steps(run.workdir)


def test_a_nan_step_is_skipped_under_skip_and_stops_the_run_under_stop(run):
    import jax

    from ifp_jax import sharding as shd
    from ifp_jax.train import checkpoint as ckpt_lib
    from ifp_jax.train.state import build_model, params_layout
    assert ("non-finite loss or gradient in 1 step(s) before step 2 (those updates were not "
            "applied); skipped (train.nan_policy=skip)") in run.first
    assert "step(s) before step 5" in run.stop_error
    assert "stopping (train.nan_policy=stop); the last checkpoint is intact" in run.stop_error
    assert _steps(run.workdir) == [2, 3, 4]  # nothing saved after the NaN step
    model = build_model(run.cfg)
    step, params = ckpt_lib.restore_latest_params(
        run.workdir, params_layout(model, run.cfg, shd.make_mesh(run.cfg.mesh)))
    assert step == 4
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(params))


def _edit_config(workdir, **sections) -> None:
    """Updates sections of workdir/config.json. The mesh is set to all devices: the tiny run's
    one-device mesh would add an info line ('mesh uses 1 of 8 devices') to stderr."""
    config = json.loads((workdir / "config.json").read_text())
    for section, values in {"mesh": {"data": -1}, **sections}.items():
        config[section].update(values)
    (workdir / "config.json").write_text(json.dumps(config))


@pytest.fixture
def edited_copy(run, tmp_path):
    """A copy of the run whose config.json describes another FFN width than its checkpoints."""
    copy = tmp_path / "copy"
    shutil.copytree(run.workdir, copy)
    _edit_config(copy, model={"d_ffn": 128})
    return copy


@pytest.mark.parametrize("command", ["generate", "export", "eval"])
def test_a_config_that_does_not_match_the_checkpoints_is_one_line(capsys, tmp_path, edited_copy,
                                                                   command):
    """It used to report every step unreadable, then 'no checkpoint: run ifp train there first'
    with pages of orbax tracebacks."""
    out = tmp_path / "export"
    argv = {"generate": ["generate", "--workdir", str(edited_copy), "--prompt", "reverse ab"],
            "export": ["export", "--workdir", str(edited_copy), "--prompt", "reverse ab",
                       "--out", str(out)],
            "eval": ["eval", "--workdir", str(edited_copy), "--mask", "dense"]}[command]
    err = _ifp_error(capsys, *argv)
    assert "checkpoint step 4 in" in err and "the config needs" in err, err
    assert "config.json does not match the checkpoints" in err, err
    assert not out.exists()
    assert not [n for n in os.listdir(edited_copy) if n.startswith("eval_")]


def test_an_export_of_a_run_needs_a_checkpoint(capsys, tmp_path, run):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(os.path.join(run.workdir, "config.json"), fresh / "config.json")
    _edit_config(fresh)
    err = _ifp_error(capsys, "export", "--workdir", str(fresh), "--prompt", "reverse ab",
                     "--out", str(tmp_path / "out"))
    assert "no checkpoint in" in err and "run `ifp train` there first" in err, err
    assert not (tmp_path / "out").exists()
    assert os.listdir(fresh) == ["config.json"]  # a read-only command: no checkpoints/ made


# ----------------------------------------------------------------------------- runs by config


def _workdir_with_config(path, cfg):
    """A workdir holding only config.json: what the commands read before any checkpoint."""
    from ifp_jax.config import to_json
    path.mkdir()
    (path / "config.json").write_text(to_json(replace(cfg, mesh=replace(cfg.mesh, data=-1))))
    return path


def test_a_per_task_mask_of_a_user_task_without_instruction_names_the_manifest_entry(
        capsys, tmp_path):
    (tmp_path / "tasks").mkdir()
    _jsonl(tmp_path / "tasks" / "rev.jsonl", [GOOD] * 20)
    cfg = tiny_config(mixture="ifp_user")
    cfg = replace(cfg, data=replace(cfg.data, jsonl_path=str(tmp_path / "tasks")))
    workdir = _workdir_with_config(tmp_path / "run", cfg)
    out = tmp_path / "out"
    err = _ifp_error(capsys, "export", "--workdir", str(workdir), "--task", "ifp_user_rev",
                     "--out", str(out))
    assert "task 'ifp_user_rev' has no instruction text; add " in err, err
    assert '{"rev": {"instruction": "..."}}' in err and "manifest.json" in err, err
    assert not out.exists()


@pytest.mark.parametrize("mode, mask, fragment", [
    ("soft", "static", "--mask static needs a run trained with pruning.mode=static"),
    ("dense", "per-input", "--mask per-input needs a run with a trained predictor"),
    ("static", "per-task", "use --mask static"),
])
def test_eval_refuses_a_mask_the_run_cannot_make_before_reading_it(capsys, tmp_path, mode, mask,
                                                                   fragment):
    workdir = _workdir_with_config(tmp_path / "run", tiny_config(mode=mode))
    err = _ifp_error(capsys, "eval", "--workdir", str(workdir), "--mask", mask)
    assert fragment in err, err
    assert os.listdir(workdir) == ["config.json"]


def test_a_parameter_that_does_not_split_over_the_mesh_is_named():
    from ifp_jax import sharding as shd
    from ifp_jax.config import ConfigError, MeshConfig
    from ifp_jax.train.state import build_model, params_layout
    cfg = tiny_config(mesh=MeshConfig(data=1, fsdp=1, tensor=8))
    cfg = replace(cfg, model=replace(cfg.model, d_ffn=60))  # 60 units over 8 tensor shards
    with pytest.raises(ConfigError, match=r"parameter \S+ \(.*\): a dim of 60 cannot be split "
                                          r"8 ways over mesh axes .*tensor") as error:
        params_layout(build_model(cfg), cfg, shd.make_mesh(cfg.mesh))
    assert "\n" not in str(error.value)
