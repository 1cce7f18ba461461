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
