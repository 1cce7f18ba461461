"""Nothing the project reads from a user or a downloaded model is unpickled or executed: a scan of
every module for unsafe loaders, and a downloaded index that points outside its directory."""

import ast
import json
import os

import pytest

from ifp_jax.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("ifp_jax", "experiments")
# (module, attribute) calls that run code or build objects from bytes they read.
UNSAFE_CALLS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"),
                ("cPickle", "load"), ("cPickle", "loads"), ("dill", "load"), ("dill", "loads"),
                ("cloudpickle", "load"), ("cloudpickle", "loads"), ("marshal", "load"),
                ("marshal", "loads"), ("shelve", "open"), ("torch", "load"),
                ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"),
                ("joblib", "load"), ("pd", "read_pickle"), ("pandas", "read_pickle")}
UNSAFE_BUILTINS = {"eval", "exec", "compile"}


def _sources():
    for package in PACKAGES:
        for directory, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    yield os.path.join(directory, name)


def unsafe_calls(source: str) -> list[str]:
    """'line: call' for every unsafe loader call in a module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in UNSAFE_BUILTINS:
            found.append(f"{node.lineno}: {f.id}()")
        elif isinstance(f, ast.Name) and f.id == "__import__" and not (
                node.args and isinstance(node.args[0], ast.Constant)):
            found.append(f"{node.lineno}: __import__(<computed name>)")
        elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (
                (f.value.id, f.attr) in UNSAFE_CALLS):
            found.append(f"{node.lineno}: {f.value.id}.{f.attr}()")
        elif isinstance(f, ast.Attribute) and f.attr == "load" and any(
                k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant)
                                                 and k.value.value is False)
                for k in node.keywords):
            found.append(f"{node.lineno}: load(allow_pickle=...)")
    return found


def test_the_scan_finds_each_kind_of_unsafe_loader():
    """The scanner itself, on code that does each unsafe thing (so a clean scan means something)."""
    bad = ("import pickle, yaml, numpy as np, torch\n"
           "pickle.loads(b)\nyaml.load(s)\nnp.load(p, allow_pickle=True)\ntorch.load(p)\n"
           "eval(s)\n__import__(name)\n"
           "yaml.safe_load(s)\nnp.load(p)\njson.loads(s)\n__import__('torch')\n")
    assert [c.split(": ")[1] for c in unsafe_calls(bad)] == [
        "pickle.loads()", "yaml.load()", "load(allow_pickle=...)", "torch.load()", "eval()",
        "__import__(<computed name>)"]


def test_no_module_unpickles_or_executes_what_it_reads():
    sources = list(_sources())
    assert len(sources) > 50
    found = {}
    for path in sources:
        with open(path, encoding="utf-8") as f:
            calls = unsafe_calls(f.read())
        if calls:
            found[os.path.relpath(path, ROOT)] = calls
    assert not found, found


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/dir.safetensors",
                                   ".."])
def test_a_downloaded_index_cannot_point_outside_its_directory(tmp_path, shard):
    from ifp_jax.hf.weights import read_hf_checkpoint
    (tmp_path / "outside.safetensors").write_bytes(b"")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (model / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": shard}}))
    with pytest.raises(ConfigError, match="outside .*plain file names") as error:
        read_hf_checkpoint(str(model))
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------- output names
# A name from a user or a file that becomes part of a path is a plain name: refused with one
# line naming it and the rule, before anything is written (ifp_jax/safe_names.py).

ESCAPING = ["../outside", "/etc/passwd", "sub/name", "..", "a\\b"]


@pytest.mark.parametrize("vocabulary", ESCAPING)
def test_an_exported_model_cannot_name_a_vocabulary_outside_its_directory(tmp_path, vocabulary):
    from ifp_jax.export.orbax_io import load_exported, read_manifest
    (tmp_path / "ifp_model.json").write_text(json.dumps({"model": {}, "vocabulary": vocabulary}))
    for read in (read_manifest, load_exported):
        with pytest.raises(ConfigError, match="vocabulary .* must be a plain name") as error:
            read(str(tmp_path))
        assert "\n" not in str(error.value)


def test_a_vocabulary_directory_is_exported_as_its_tokenizer_json(tmp_path):
    """data.vocabulary may name a directory holding tokenizer.json: the copy is named
    tokenizer.json, never the directory's basename (for 'tok/..' that was '..': a crash)."""
    import numpy as np

    from ifp_jax.config import ModelConfig
    from ifp_jax.export.orbax_io import read_manifest, save_exported
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    (tmp_path / "tok" / "inner").mkdir()
    for spec, out in ((tmp_path / "tok", tmp_path / "a"),
                      (tmp_path / "tok" / "inner" / "..", tmp_path / "b")):
        save_exported(str(out), ModelConfig(), {"w": np.zeros(2, np.float32)}, str(spec), {})
        assert read_manifest(str(out))["vocabulary"] == "tokenizer.json"
        assert (out / "tokenizer.json").read_text() == "{}"
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "tok"]
    assert sorted(os.listdir(tmp_path / "tok")) == ["inner", "tokenizer.json"]


def test_prepare_refuses_a_task_name_that_leaves_its_directory(tmp_path):
    """SeqIO task names may hold dots: a task named '..' would be prepared into OUT/../."""
    from ifp_jax.config import DataConfig
    from ifp_jax.errors import DataError
    from ifp_jax.data.prepare import prepare
    from ifp_jax.tf_import import seqio
    seqio.TaskRegistry.add("..", source=seqio.FunctionDataSource(
        lambda split, shuffle_files=False, seed=None: None, splits=["train"]),
        output_features={})
    try:
        out = tmp_path / "prepared"
        with pytest.raises(DataError, match="task name '..' cannot be used in a file name"):
            prepare(DataConfig(mixture=".."), 16, str(out), log=lambda m: None)
        assert not out.exists() and os.listdir(tmp_path) == []
    finally:
        seqio.TaskRegistry.remove("..")


@pytest.mark.parametrize("name", ["../outside.array_record", "/abs.array_record",
                                  "t/../../outside.array_record"])
def test_a_prepared_manifest_cannot_point_outside_its_directory(tmp_path, name):
    from ifp_jax.errors import DataError
    from ifp_jax.data.prepared import PreparedSplit
    (tmp_path / "outside.array_record").write_bytes(b"x" * 10)  # the right size: it would pass
    (tmp_path / "prepared").mkdir()
    manifest = {"tasks": {"t": {"train": {"files": [name], "file_examples": [1], "bytes": [10]}}}}
    with pytest.raises(DataError, match="points outside its directory") as error:
        PreparedSplit(str(tmp_path / "prepared"), "t", "train", 8, 16, manifest)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("split", ["../outside", "/tmp/x", "a/b", ".."])
def test_eval_results_are_never_named_outside_the_workdir(tmp_path, split):
    from ifp_jax.eval.run import results_path
    with pytest.raises(ConfigError, match="--split .* must be a plain name"):
        results_path(str(tmp_path), "dense", "hard", split)
    path = results_path(str(tmp_path), "dense", "hard", "train")
    assert path == os.path.join(str(tmp_path), "eval_dense_hard_train.json")


def test_example_tasks_write_plain_file_names_only(tmp_path, monkeypatch):
    from ifp_jax.data import skills
    from ifp_jax.errors import DataError
    from ifp_jax.data.example_tasks import write_example_tasks
    monkeypatch.setattr(skills, "SKILLS", {"../evil": skills.SKILLS["reverse"]})
    with pytest.raises(DataError, match="skill name '../evil'"):
        write_example_tasks(str(tmp_path / "out"), num_tasks=1, examples_per_task=20)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("task", ["../evil", "a/b", "/abs", ".."])
def test_user_task_names_cannot_be_paths(tmp_path, task):
    """A user task's name becomes OUT/ifp_user_<name>/ of `ifp data prepare`: letters, digits
    and '_' only, from a 'task' field or a file name."""
    from ifp_jax.errors import DataError
    from ifp_jax.data.user_tasks import read_user_tasks
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"prompt": "a", "response": "b", "task": task}) + "\n")
    with pytest.raises(DataError, match="'task' must be a name of letters, digits and '_'"):
        read_user_tasks(str(path))
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "v1..2.jsonl").write_text(json.dumps({"prompt": "a", "response": "b"}))
    with pytest.raises(DataError, match=r"v1\.\.2\.jsonl: a task file's name must be .*rename it"):
        read_user_tasks(str(tmp_path / "dir"))


def test_export_task_names_are_looked_up_never_joined_into_a_path(tmp_path):
    from ifp_jax.config import to_json
    from ifp_jax.export.run import export_workdir
    from tests.helpers import tiny_config
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(to_json(tiny_config()))
    for task in ("../../evil", "/etc/passwd"):
        with pytest.raises(ConfigError, match="has no registered instruction text"):
            export_workdir(str(tmp_path / "run"), str(tmp_path / "out"), task=task,
                           log=lambda m: None)
    assert sorted(os.listdir(tmp_path)) == ["run"]
    assert os.listdir(tmp_path / "run") == ["config.json"]


def test_a_checksum_record_cannot_point_outside_its_checkpoint(tmp_path):
    """A record naming `../x` or an absolute path marks the step damaged; nothing outside the
    step is read."""
    import json

    from ifp_jax.train import checksums
    step_dir, records = tmp_path / "checkpoints" / "5", tmp_path / "checksums"
    step_dir.mkdir(parents=True)
    (step_dir / "a").write_bytes(b"x")
    checksums.write_record(str(step_dir), str(records), 5, 0)
    assert checksums.damaged_files(str(step_dir), str(records), 5) == []
    record = checksums.record_path(str(records), 5, 0)
    with open(record) as f:
        data = json.load(f)
    entry = data["files"]["a"]  # a file with the same bytes and hash sits outside the step
    (tmp_path / "secret").write_bytes(b"x")
    for outside in ("../../secret", str(tmp_path / "secret")):
        data["files"] = {outside: entry}
        with open(record, "w") as f:
            json.dump(data, f)
        assert checksums.damaged_files(str(step_dir), str(records), 5) == [record]
