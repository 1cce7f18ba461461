"""What `ifp import-hf SRC --out DIR [--as llm|predictor] [--layers N] [--overwrite]` does.

Converts a Hugging Face Llama checkpoint directory (config.json + safetensors, optional
tokenizer.json), or a llama.cpp GGUF file (MODEL.gguf, local or gs://: hf/gguf_import.py gives
the same config, tensors and tokenizer files), into an import directory (layout: hf/imported.py) that train.init_llm_from /
train.init_predictor_from accept. Everything is read and checked before DIR is touched; DIR is
written beside itself and renamed into place, so a failed import leaves no partial directory.

`--layers N` keeps the first N decoder layers (embedding and final norm kept): a pretrained
predictor backbone cut from a bigger model of the same family, e.g. SmolLM2's first 4 layers
reading the prompt in the LLM's own tokens (docs/pretrained.md#a-pretrained-predictor).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from ifp_jax import config as config_lib
from ifp_jax.config import ConfigError
from ifp_jax.errors import DataError
from ifp_jax.hf.import_layout import IMPORT_FILE, KINDS, PARAMS_DIR, TOKENIZER_FILE, is_import_dir
from ifp_jax.storage import paths, staging

# Copied beside tokenizer.json: they name the special tokens (vocab/tokenizer_json.py reads them)
# and hold the chat template (vocab/chat_template.py).
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
GENERATION_CONFIG = "generation_config.json"


def _json_or_none(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _check_out(out: str, overwrite: bool) -> None:
    if not (paths.exists(out) if paths.is_remote(out) else os.path.lexists(out)):
        return
    if not overwrite:
        raise ConfigError(f"--out {out} exists; pass --overwrite to replace it (nothing was "
                          f"changed)")
    # --overwrite replaces an earlier import only: a mistyped --out must not delete a project.
    if not (is_import_dir(out) or (paths.isdir(out) and not paths.listdir(out))):
        raise ConfigError(f"--out {out} is not an `ifp import-hf` directory; refusing to replace "
                          f"it even with --overwrite (choose another --out)")


def _check_tokenizer(path: str, vocab_size: int) -> None:
    from ifp_jax.vocab.tokenizer_json import HFTokenizerFile
    n = HFTokenizerFile(path).size
    if n > vocab_size:
        raise DataError(f"{path} has {n} ids but config.json vocab_size={vocab_size}: the model "
                        f"cannot embed ids >= {vocab_size}; import a checkpoint whose tokenizer "
                        f"fits its embedding")


def first_layers(hf_config: dict, tensors: dict, n: int) -> tuple[dict, dict]:
    """(config, tensors) of the model's first n decoder layers: later layers' tensors dropped,
    num_hidden_layers = n. The hidden state that reaches the final norm is then layer n's."""
    total = int(hf_config.get("num_hidden_layers", 0))
    if not 1 <= n <= total:
        raise ConfigError(f"--layers {n}: the model has {total} layers; pass 1..{total}")
    later = tuple(f"model.layers.{i}." for i in range(n, total))
    return ({**hf_config, "num_hidden_layers": n},
            {k: v for k, v in tensors.items() if not k.startswith(later)})


def import_hf(src: str, out: str, *, kind: str = "llm", overwrite: bool = False,
              layers: int | None = None) -> dict:
    """Writes the import directory `out` from the HF checkpoint `src` (its first `layers`
    decoder layers only, when given); returns its metadata."""
    import orbax.checkpoint as ocp
    from ifp_jax.hf.gguf_import import is_gguf
    from ifp_jax.hf.weights import model_config_from_hf, params_from_hf, read_hf_checkpoint
    src = paths.absolute(src) if paths.is_remote(src) else os.path.abspath(
        os.path.expanduser(src))
    out = paths.absolute(out)
    if kind not in KINDS:
        raise ConfigError(f"--as {kind!r} is not one of {list(KINDS)}")
    _check_out(out, overwrite)
    with tempfile.TemporaryDirectory() as gguf_tokenizer_dir:
        if is_gguf(src):
            hf_config, tensors, tok_dir = _read_gguf(src, gguf_tokenizer_dir)
        elif paths.is_remote(src):
            raise ConfigError(f"{src}: a gs:// source must be a .gguf file; copy an HF model "
                              f"directory to local disk first")
        else:
            (hf_config, tensors), tok_dir = read_hf_checkpoint(src), src
        if layers is not None:  # a GGUF's tensors carry the HF names too
            hf_config, tensors = first_layers(hf_config, tensors, layers)
        return _write_import(src, out, kind, hf_config, tensors, tok_dir, ocp,
                             model_config_from_hf, params_from_hf)


def _read_gguf(src: str, tok_dir: str) -> tuple[dict, dict, str]:
    """(config, tensors, dir holding the rebuilt tokenizer files (none: byte vocabulary))."""
    from ifp_jax.hf.gguf_import import read_gguf_checkpoint
    from ifp_jax.storage import staging
    if paths.is_remote(src):
        if not paths.isfile(src):
            raise ConfigError(f"{src} not found; pass an existing .gguf file")
        local = staging.local_file(src)
    elif not os.path.isfile(src):
        raise ConfigError(f"{src} not found; pass an existing .gguf file")
    else:
        local = src
    hf_config, tensors, files = read_gguf_checkpoint(local)
    for name, content in (files or {}).items():
        with open(os.path.join(tok_dir, name), "w", encoding="utf-8") as f:
            if isinstance(content, str):
                f.write(content)
            else:
                json.dump(content, f, indent=2, ensure_ascii=False)
    return hf_config, tensors, tok_dir


def _write_import(src, out, kind, hf_config, tensors, tok_dir, ocp, model_config_from_hf,
                  params_from_hf) -> dict:
    from ifp_jax.vocab.export_files import write_generation_config
    cfg = model_config_from_hf(hf_config)
    n_params = sum(t.size for t in tensors.values())
    params = params_from_hf(tensors, cfg)
    del tensors
    tokenizer = os.path.join(tok_dir, TOKENIZER_FILE)
    has_tokenizer = os.path.isfile(tokenizer)
    if has_tokenizer:
        _check_tokenizer(tokenizer, cfg.vocab_size)
    meta = {"kind": kind, "model": config_lib.to_dict(cfg), "source": src,
            "vocabulary": paths.join(out, TOKENIZER_FILE) if has_tokenizer else "byte",
            "hf_config": hf_config}

    # Written locally, then moved (or uploaded) into place with its marker last.
    with staging.staged_output(out, marker=IMPORT_FILE) as tmp:
        ocp.PyTreeCheckpointer().save(os.path.join(tmp, PARAMS_DIR),
                                      args=ocp.args.PyTreeSave(params))
        if has_tokenizer:
            for name in (TOKENIZER_FILE,) + TOKENIZER_SIDE_FILES:
                if os.path.isfile(os.path.join(tok_dir, name)):
                    shutil.copy2(os.path.join(tok_dir, name), os.path.join(tmp, name))
            # transformers' generate defaults, with the tokenizer's bos/eos/pad ids.
            write_generation_config(tmp, os.path.join(tmp, TOKENIZER_FILE),
                                    _json_or_none(os.path.join(tok_dir, GENERATION_CONFIG)))
        elif os.path.isfile(os.path.join(tok_dir, GENERATION_CONFIG)):
            shutil.copy2(os.path.join(tok_dir, GENERATION_CONFIG),
                         os.path.join(tmp, GENERATION_CONFIG))
        with open(os.path.join(tmp, IMPORT_FILE), "w") as f:  # marks a complete import
            json.dump(meta, f, indent=2, sort_keys=True)
    print(f"[ifp] imported {src} as {kind}: {n_params / 1e6:.2f}M params, {cfg.n_layers} layers, "
          f"d_model {cfg.d_model}, d_ffn {cfg.d_ffn}, vocab {cfg.vocab_size} "
          f"({'tokenizer.json' if has_tokenizer else 'byte vocabulary: no tokenizer.json'}) "
          f"-> {out}")
    return meta
