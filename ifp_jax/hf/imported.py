"""Reading an `ifp import-hf` directory, and adopting its architecture into an experiment.

Layout (written by hf/import_hf.py):
    DIR/ifp_import.json   {"kind": "llm"|"predictor", "model": ModelConfig dict, "source": SRC,
                           "vocabulary": "<DIR>/tokenizer.json" or "byte", "hf_config": {...}}
    DIR/params/           orbax PyTree checkpoint of the decoder params (f32, scan layout)
    DIR/tokenizer.json    (+ tokenizer_config.json, special_tokens_map.json,
                          chat_template.jinja) when SRC had one
    DIR/generation_config.json  SRC's, with the tokenizer's bos/eos/pad ids

`ifp generate --model DIR` generates from it (serve/generator.py:from_import).

An import dir stands wherever a stage's workdir can: train.init_llm_from (kind llm) or
train.init_predictor_from (either kind: both are decoders; only the predictor's backbone is
taken, its head starts fresh).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ifp_jax import config as config_lib
from ifp_jax.config import ConfigError, ExperimentConfig, ModelConfig
from ifp_jax.storage import paths
from ifp_jax.vocab import seqio_vocab as vocab_lib
from ifp_jax.hf.weights import ARCH_FIELDS, param_shapes, unstack_layers

from ifp_jax.hf.import_layout import (IMPORT_FILE, KINDS, PARAMS_DIR,  # noqa: F401
                                      TOKENIZER_FILE, is_import_dir)
# Leaves whose vocab axis is padded to ModelConfig.padded_vocab_size: (path, axis).
_VOCAB_AXIS = {("embed_tokens", "embedding"): 0, ("lm_head", "kernel"): 1}


def load_import(path: str) -> tuple[dict, ModelConfig]:
    """(ifp_import.json contents, the imported ModelConfig). A tokenizer vocabulary is
    resolved inside `path`, so a moved import dir still finds its tokenizer.json."""
    file = paths.join(path, IMPORT_FILE)
    if not paths.isfile(file):
        raise ConfigError(f"{file} not found: {path} is not an `ifp import-hf` directory")
    meta = json.loads(paths.read_text(file))
    cfg = config_lib.from_dict(ModelConfig, meta["model"])
    if meta["vocabulary"] != "byte":  # tokenizers read local files: a bucket's is fetched
        vocab = paths.join(paths.absolute(path), TOKENIZER_FILE)
        if paths.is_remote(vocab):
            from ifp_jax.storage import staging
            for side in ("tokenizer_config.json", "special_tokens_map.json",
                         "chat_template.jinja"):
                if paths.isfile(paths.join(path, side)):
                    staging.local_file(paths.join(path, side))
            vocab = staging.local_file(vocab)
        meta["vocabulary"] = vocab
    return meta, cfg


def _flat(tree: dict, prefix: tuple = ()) -> dict[tuple, Any]:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, prefix + (k,)) if isinstance(v, dict) else {prefix + (k,): v})
    return out


def _check_shapes(path: str, stored_cfg: ModelConfig, target: dict) -> None:
    """Every target leaf exists in the import with the same shape, except that the padded vocab
    axis may differ (other vocab_pad_multiple) as long as no real row is cut."""
    stored = _flat(param_shapes(dataclasses.replace(stored_cfg, scan_layers=True)))
    for key, leaf in _flat(target).items():
        want, have = tuple(leaf.shape), stored.get(key)
        axis = _VOCAB_AXIS.get(key)
        ok = have is not None and len(have) == len(want)
        if ok and axis is not None:
            ok = (want[:axis] + want[axis + 1:] == have[:axis] + have[axis + 1:]
                  and want[axis] >= stored_cfg.vocab_size)
        elif ok:
            ok = want == have
        if not ok:
            raise ConfigError(f"import {path}: parameter {'/'.join(key)} is "
                              f"{have or 'absent'} there but this model needs {want}; adopt the "
                              f"import's architecture (hf.imported.adopt_imports) or re-import")


def restore_import_params(path: str, abstract_decoder_params: Any) -> Any:
    """The import's decoder params, restored into `abstract_decoder_params` (ShapeDtypeStructs
    with .sharding, e.g. a sub-tree of train.state.params_layout): each process reads only its
    shards. Leaves absent from the target (a predictor backbone has no lm_head) are not read.
    A per-layer target (scan_layers=False) is read stacked on the host, then split and placed.
    """
    _, stored_cfg = load_import(path)
    target = dict(abstract_decoder_params)
    per_layer = [k for k in target if k.startswith("layers_")]
    if per_layer:
        n = len(per_layer)
        layers = [target.pop(f"layers_{i}") for i in range(n)]
        target["layers"] = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct((n,) + tuple(a.shape), a.dtype), layers[0])
    _check_shapes(path, stored_cfg, target)

    def restore_args(key_path, leaf):
        key = tuple(k.key for k in key_path)
        if per_layer and key[0] == "layers":
            return ocp.RestoreArgs(restore_type=np.ndarray, dtype=leaf.dtype)
        # strict=False pads (zeros) or cuts the vocab axis to the target's padding.
        return ocp.ArrayRestoreArgs(sharding=leaf.sharding, global_shape=leaf.shape,
                                    dtype=leaf.dtype, strict=key not in _VOCAB_AXIS)

    item = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)),
        target)
    params = ocp.PyTreeCheckpointer().restore(
        paths.join(paths.absolute(path), PARAMS_DIR),  # gs:// too: orbax reads its shards
        args=ocp.args.PyTreeRestore(
            item=item, restore_args=jax.tree_util.tree_map_with_path(restore_args, target),
            partial_restore=True))
    if per_layer:
        stacked = params.pop("layers")
        for i, layer in enumerate(unstack_layers(stacked, len(per_layer))):
            params[f"layers_{i}"] = jax.tree_util.tree_map(
                lambda x, a: jax.device_put(x, a.sharding), layer,
                abstract_decoder_params[f"layers_{i}"])
    return params


def _adopt(mc: ModelConfig, imported: ModelConfig) -> ModelConfig:
    """`mc` with the import's architecture; training-only fields (remat_policy, scan_layers,
    scan_unroll, attention, vocab_pad_multiple) stay the experiment's.

    max_len is the import's max_position_embeddings, not the larger of the two: RoPE positions
    beyond it were never trained, so data.seq_len above it is refused (config.validate)
    rather than silently run out of the model's range."""
    return dataclasses.replace(mc, **{f: getattr(imported, f) for f in ARCH_FIELDS})


def _source_run_config(path: str) -> ExperimentConfig | None:
    """The config of the `ifp train` run in `path`, or None when `path` is no run workdir."""
    from ifp_jax import workdir as workdir_lib
    if not path or not paths.exists(workdir_lib.config_path(path)):
        return None
    return config_lib.load_workdir_config(path)


def adopt_imports(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` with the architecture and vocabulary of its train.init_llm_from /
    train.init_predictor_from when those are import dirs or run workdirs (unchanged otherwise).

    A run carries them on: a stage chained from a stage that started from an import reads the
    import's tokenizer too (without this it fell back to the experiment's default vocabulary,
    and an SFT after a CPT fed a BPE model byte ids)."""
    t = cfg.train
    model, predictor, data = cfg.model, cfg.predictor, cfg.data
    sources = []
    llm_run = None if is_import_dir(t.init_llm_from) else _source_run_config(t.init_llm_from)
    if llm_run is not None:
        model = _adopt(model, llm_run.model)
        data = dataclasses.replace(data, vocabulary=llm_run.data.vocabulary)
        sources.append(t.init_llm_from)
    pred_run = (None if is_import_dir(t.init_predictor_from)
                else _source_run_config(t.init_predictor_from))
    if pred_run is not None:
        predictor = dataclasses.replace(
            predictor, backbone=_adopt(predictor.backbone, pred_run.predictor.backbone))
        data = dataclasses.replace(data, predictor_vocabulary=pred_run.data.predictor_vocabulary)
        sources.append(t.init_predictor_from)
    if is_import_dir(t.init_llm_from):
        meta, imported = load_import(t.init_llm_from)
        if meta["kind"] != "llm":
            raise ConfigError(f"train.init_llm_from={t.init_llm_from} was imported --as "
                              f"{meta['kind']}; re-import it with --as llm")
        _check_vocab(t.init_llm_from, meta, imported)
        model = _adopt(model, imported)
        data = dataclasses.replace(data, vocabulary=meta["vocabulary"])
        sources.append(t.init_llm_from)
    if is_import_dir(t.init_predictor_from):
        meta, imported = load_import(t.init_predictor_from)
        _check_vocab(t.init_predictor_from, meta, imported)
        predictor = dataclasses.replace(predictor, backbone=_adopt(predictor.backbone, imported))
        data = dataclasses.replace(data, predictor_vocabulary=meta["vocabulary"])
        sources.append(t.init_predictor_from)
    if not sources:
        return cfg
    k = cfg.pruning.keep_k
    if cfg.pruning.mode != "dense" and k > model.d_ffn:
        raise ConfigError(f"pruning.keep_k={k} exceeds the imported model's d_ffn={model.d_ffn} "
                          f"({t.init_llm_from}); set pruning.keep_k to at most {model.d_ffn}")
    try:
        return dataclasses.replace(cfg, model=model, predictor=predictor, data=data)
    except ConfigError as e:  # validate() on the adopted sizes, e.g. data.seq_len > max_len
        raise ConfigError(f"{e} (after adopting the architecture of {', '.join(sources)})") \
            from None


def _check_vocab(path: str, meta: dict, imported: ModelConfig) -> None:
    vocab_lib.check_vocab_fits(
        meta["vocabulary"], imported.vocab_size, f"the vocabulary of import {path}",
        "its model's vocab_size",
        fix="re-run `ifp import-hf` on a checkpoint whose tokenizer fits its embedding")
