"""The orbax export format: a small dense decoder that ifp_jax (and tensorstore) reads directly.

    DIR/ifp_model.json   {"model": ModelConfig, "vocabulary": spec, "metadata": {...}}
    DIR/params/          orbax (tensorstore) checkpoint of the decoder params tree, f32

`vocabulary` is what `ifp_jax.data.vocab.get_vocabulary` takes ('byte', a SentencePiece .model,
or a tokenizer.json); a file-based vocabulary is copied into DIR so the export is self-contained.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import orbax.checkpoint as ocp

from ifp_jax.config import ConfigError, ModelConfig, from_dict, to_dict

MODEL_FILE = "ifp_model.json"


def save_exported(out_dir: str, cfg: ModelConfig, params: dict, vocabulary: str,
                  metadata: dict) -> None:
    """Writes `params` (numpy tree) + config + vocabulary + metadata into `out_dir` (new)."""
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if vocabulary != "byte":  # self-contained: keep a copy beside the params
        local = os.path.join(out_dir, os.path.basename(vocabulary))
        shutil.copyfile(vocabulary, local)
        vocabulary = os.path.basename(vocabulary)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(out_dir, "params"), params)
    with open(os.path.join(out_dir, MODEL_FILE), "w") as f:
        json.dump({"model": to_dict(cfg), "vocabulary": vocabulary, "metadata": metadata}, f,
                  indent=2, sort_keys=True)


def load_exported(path: str) -> tuple[ModelConfig, dict, str]:
    """DIR (or DIR/orbax of an `ifp export`) -> (ModelConfig, decoder params as numpy f32,
    vocabulary spec with file paths made absolute)."""
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, MODEL_FILE)) and os.path.isfile(
            os.path.join(path, "orbax", MODEL_FILE)):
        path = os.path.join(path, "orbax")
    meta = read_manifest(path)
    cfg = from_dict(ModelConfig, meta["model"])
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.join(path, "params"))
    params = _to_numpy(params)
    vocab = meta["vocabulary"]
    return cfg, params, vocab if vocab == "byte" else os.path.join(path, vocab)


def read_manifest(path: str) -> dict:
    file = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(file):
        raise ConfigError(f"{path} is not an ifp_jax export (no {MODEL_FILE}); pass the --out "
                          f"directory of `ifp export` or its orbax/ sub-directory")
    with open(file) as f:
        return json.load(f)


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree, np.float32)
