"""The orbax export format: a small dense decoder that ifp_jax (and tensorstore) reads directly.

    DIR/ifp_model.json   {"model": ModelConfig, "vocabulary": spec, "metadata": {...}}
    DIR/params/          orbax (tensorstore) checkpoint of the decoder params tree, f32

`vocabulary` is what `ifp_jax.vocab.seqio_vocab.get_vocabulary` takes ('byte', a SentencePiece .model,
or a tokenizer.json); a file-based vocabulary is copied into DIR so the export is self-contained.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import orbax.checkpoint as ocp

from ifp_jax.config import ConfigError, ModelConfig, from_dict, to_dict
from ifp_jax.json_files import read_object
from ifp_jax.safe_names import plain_name
from ifp_jax.storage import paths, staging

MODEL_FILE = "ifp_model.json"


def save_exported(out_dir: str, cfg: ModelConfig, params: dict, vocabulary: str,
                  metadata: dict) -> None:
    """Writes `params` (numpy tree) + config + vocabulary + metadata into `out_dir` (new)."""
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if vocabulary != "byte":  # self-contained: keep a copy beside the params
        source = vocabulary_file(vocabulary)
        vocabulary = os.path.basename(source)
        shutil.copyfile(source, os.path.join(out_dir, vocabulary))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(out_dir, "params"), params)
    with open(os.path.join(out_dir, MODEL_FILE), "w") as f:
        json.dump({"model": to_dict(cfg), "vocabulary": vocabulary, "metadata": metadata}, f,
                  indent=2, sort_keys=True)


def vocabulary_file(spec: str) -> str:
    """The file of a file-based vocabulary spec: a directory stands for its tokenizer.json (as
    for every reader of data.vocabulary), so the copy has a plain file name."""
    path = os.path.expanduser(spec)
    return os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path


def load_exported(path: str) -> tuple[ModelConfig, dict, str]:
    """DIR (or DIR/orbax of an `ifp export`) -> (ModelConfig, decoder params as numpy f32,
    vocabulary spec with file paths made absolute). A gs:// export is read from a local copy
    (the tokenizer and the checks read local files; an export is small)."""
    if paths.is_remote(path):
        orbax_dir = paths.join(path, "orbax")
        path = staging.local_copy(orbax_dir if paths.isfile(paths.join(orbax_dir, MODEL_FILE))
                                  else path)
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, MODEL_FILE)) and os.path.isfile(
            os.path.join(path, "orbax", MODEL_FILE)):
        path = os.path.join(path, "orbax")
    meta = read_manifest(path)
    cfg = from_dict(ModelConfig, meta["model"])
    params_dir = os.path.join(path, "params")
    if not os.path.isdir(params_dir):
        raise ConfigError(f"{params_dir} not found: the export is incomplete; export it again")
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(params_dir)
    params = _to_numpy(params)
    check_tensors(path, cfg, params)
    vocab = meta["vocabulary"]
    return cfg, params, vocab if vocab == "byte" else os.path.join(path, vocab)


def read_manifest(path: str) -> dict:
    """DIR/ifp_model.json, checked: a model section, and a vocabulary that is 'byte' or a file
    beside it (a downloaded export must not name a file elsewhere)."""
    file = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(file):
        raise ConfigError(f"{path} is not an ifp_jax export (no {MODEL_FILE}); pass the --out "
                          f"directory of `ifp export` or its orbax/ sub-directory (`ifp "
                          f"generate` also takes an `ifp import-hf` directory)")
    meta = read_object(file, ConfigError, "export the model again")
    if not (isinstance(meta.get("model"), dict)
            and isinstance(meta.get("vocabulary"), str)):
        raise ConfigError(f"{file} must be an object with a 'model' section and a "
                          f"'vocabulary' string; export the model again")
    if meta["vocabulary"] != "byte":
        plain_name(meta["vocabulary"], f"{file}: vocabulary", ConfigError)
    return meta


def _flat_shapes(tree, prefix: str = "") -> dict[str, tuple]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items()
                for k, v in _flat_shapes(sub, f"{prefix}{key}/").items()}
    return {prefix.rstrip("/"): tuple(np.shape(tree))}


def check_tensors(path: str, cfg: ModelConfig, params: dict) -> None:
    """One-line ConfigError naming the first missing, extra or misshapen tensor of an exported
    model against the decoder its ifp_model.json describes."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from ifp_jax.model.decoder import Decoder
    want = _flat_shapes(nn.meta.unbox(jax.eval_shape(lambda: Decoder(cfg).init(
        jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]))
    got = _flat_shapes(params)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = [k for k in sorted(set(want) & set(got)) if want[k] != got[k]]
    fix = "the export is damaged or from another version; export it again"
    if missing:
        raise ConfigError(f"{path} lacks {len(missing)} tensor(s) its {MODEL_FILE} needs, "
                          f"e.g. {missing[0]}; {fix}")
    if extra:
        raise ConfigError(f"{path} holds {len(extra)} tensor(s) its {MODEL_FILE} has no place "
                          f"for, e.g. {extra[0]}; {fix}")
    if wrong:
        raise ConfigError(f"{path}: tensor {wrong[0]} has shape {got[wrong[0]]}, its "
                          f"{MODEL_FILE} needs {want[wrong[0]]}; {fix}")


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree, np.float32)
