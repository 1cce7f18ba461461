"""`ifp export`: one selection -> a small dense model in the HF, orbax and GGUF formats.

    OUT/hf/         config.json + model.safetensors + tokenizer files (transformers loads it)
    OUT/orbax/      ifp_model.json + params/ (ifp_jax / tensorstore; `ifp generate --model`)
    OUT/gguf/model.gguf   llama.cpp (--gguf-type f32|f16|q8_0|q4_0, default f16)
    OUT/export.json the metadata every format also carries, plus "gguf": the file's type, size
                    and logit error vs the f32 model (export/gguf_report.py)

Selection text: --prompt (a user prompt, read as the predictor reads training prompts),
--instruction (a hand-written task instruction: the paper's per-task mode,
docs/method.md#the-sparsity-predictor), or --task NAME (that task's registered instruction text:
for the embedded skills, the first wording of the skill).
The output is written into a temporary local directory and moved into place when complete (or,
for a gs:// OUT, uploaded with export.json last), so a failure never leaves a half-written
export, and an existing OUT is replaced only with --overwrite (after the new one is complete).
"""

from __future__ import annotations

import json
import os

from ifp_jax.config import ConfigError, load_workdir_config
from ifp_jax.data.skills import task_instruction
from ifp_jax.gguf_file.gguf_types import DEFAULT_GGUF_TYPE, GGUF_TYPES
from ifp_jax.storage import paths, staging

FORMATS = ("hf", "orbax", "gguf")
MANIFEST = "export.json"  # written last: an export without it is incomplete


def _check_out(out: str, overwrite: bool) -> str:
    out = paths.absolute(out)
    if paths.exists(out) and not overwrite:
        raise ConfigError(f"{out} already exists; choose another --out or pass --overwrite")
    return out


def export_workdir(workdir: str, out: str, *, prompt: str | None = None,
                   instruction: str | None = None, task: str | None = None,
                   formats: tuple[str, ...] = FORMATS, eval_mask: str | None = None,
                   gguf_type: str = DEFAULT_GGUF_TYPE, overwrite: bool = False,
                   log=print) -> dict:
    """Selects units for the given text with the run's predictor and writes the small model.

    Returns the metadata dict (also written to OUT/export.json)."""
    given = [x for x in (prompt, instruction, task) if x is not None]
    if len(given) != 1:
        raise ConfigError("pass exactly one of --prompt, --instruction, --task")
    if any(f not in FORMATS for f in formats):
        raise ConfigError(f"--format must be among {', '.join(FORMATS)}")
    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"--gguf-type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
    out = _check_out(out, overwrite)
    cfg = load_workdir_config(workdir)
    text, kind = ((prompt, "prompt") if prompt is not None else
                  (instruction, "instruction") if instruction is not None else
                  (task_instruction(task, cfg.data.jsonl_path), "task"))
    if not text or not text.strip():
        raise ConfigError("the prompt is empty; pass a non-empty --prompt / --instruction")

    from ifp_jax.vocab.light import get_light_vocabulary
    from ifp_jax.export import manifest
    from ifp_jax.selection.prompt import predictor_tokens
    from ifp_jax.selection.units import select_units
    from ifp_jax.export.small_model import gather_small_decoder, to_host
    from ifp_jax.train.runs import open_run

    run = open_run(workdir, cfg=cfg)
    model, params, step = run.model, run.params, run.step
    read = text
    if kind == "prompt" and cfg.data.chat_template:  # the predictor was trained on chat turns
        from ifp_jax.vocab.chat_template import user_prompt
        read = user_prompt(cfg.data.vocabulary, text)
    tokens = predictor_tokens(get_light_vocabulary(cfg.data.predictor_vocabulary), read,
                              cfg.predictor.max_prompt_len)
    selection = select_units(model, params, cfg, tokens, eval_mask)
    fold = selection.scale if selection.eval_mask == "lambda" else None
    small, small_cfg = gather_small_decoder(to_host(params["decoder"]), cfg.model,
                                            selection.keep_idx, fold)
    small = to_host(small)
    meta = manifest.export_metadata(
        source_workdir=paths.absolute(workdir), source_step=step, selection=selection,
        text=text, text_kind=kind, task=task, params_hash=manifest.content_hash(small))

    with staging.staged_output(out, marker=MANIFEST) as tmp:
        report = write_formats(tmp, cfg=small_cfg, params=small, vocabulary=cfg.data.vocabulary,
                               meta=meta, formats=formats, gguf_type=gguf_type, text=text)
        if report is not None:
            meta["gguf"] = report
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(meta, f, indent=2)
    log(f"[ifp] exported {workdir} @ step {step} ({selection.mode}, {selection.eval_mask} mask, "
        f"k={small_cfg.d_ffn} of {cfg.model.d_ffn} units/layer) for {kind} {text!r} -> {out} "
        f"[{', '.join(formats)}] hash {meta['content_hash'][:12]}")
    if "gguf" in meta:
        g = meta["gguf"]
        log(f"[ifp] gguf {g['type']}: {g['file_bytes'] / 1e6:.1f} MB, vs f32 max |dlogit| "
            f"{g['vs_f32']['max_abs_logit_diff']:.3g}, top-1 agreement "
            f"{g['vs_f32']['top1_agreement']:.3f} ({g['vs_f32']['positions']} positions)")
    return meta


def write_formats(out: str, *, cfg, params: dict, vocabulary: str, meta: dict,
                  formats: tuple[str, ...], gguf_type: str = DEFAULT_GGUF_TYPE,
                  text: str | None = None) -> dict | None:
    """Writes the small dense model `params` (numpy, our layout) in each requested format;
    returns the GGUF's report (type, size, logit error vs f32 on fixed texts and `text`), or
    None without the gguf format."""
    from ifp_jax.hf import weights as hf_weights
    from ifp_jax.vocab.export_files import special_ids
    hf_config = hf_weights.hf_config_from_model_config(cfg, **special_ids(vocabulary))
    tensors = hf_weights.hf_from_params(params, cfg) if {"hf", "gguf"} & set(formats) else None
    if "orbax" in formats:
        from ifp_jax.export.orbax_io import save_exported
        save_exported(os.path.join(out, "orbax"), cfg, params, vocabulary, meta)
    if "hf" in formats:
        from ifp_jax.vocab.export_files import write_generation_config, write_hf_tokenizer
        hf_dir = os.path.join(out, "hf")
        hf_weights.write_hf_checkpoint(hf_dir, hf_config, tensors)
        write_hf_tokenizer(hf_dir, vocabulary, cfg.max_len)
        write_generation_config(hf_dir, vocabulary, _source_generation_config(vocabulary))
        with open(os.path.join(hf_dir, "ifp_export.json"), "w") as f:
            json.dump(meta, f, indent=2)
    if "gguf" in formats:
        from ifp_jax.gguf_file.gguf_writer import write_gguf
        from ifp_jax.export.gguf_report import gguf_logit_report
        path = os.path.join(out, "gguf", "model.gguf")
        os.makedirs(os.path.join(out, "gguf"), exist_ok=True)
        write_gguf(path, hf_config, tensors, _gguf_tokenizer(vocabulary), meta, dtype=gguf_type)
        del tensors
        return gguf_logit_report(path, gguf_type, cfg, params, vocabulary, text)
    return None


def _source_generation_config(vocabulary: str) -> dict | None:
    """The generation_config.json beside an imported tokenizer (the pretrained model's own
    generation defaults), if any."""
    if vocabulary == "byte" or vocabulary.endswith(".model"):
        return None
    directory = os.path.dirname(vocabulary) if vocabulary.endswith(".json") else vocabulary
    path = os.path.join(directory, "generation_config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _gguf_tokenizer(vocabulary: str) -> str:
    if vocabulary == "byte":
        return "byte"
    if vocabulary.endswith(".model"):
        raise ConfigError("GGUF export of a SentencePiece vocabulary is not supported yet; "
                          "export --format hf orbax, or train with a tokenizer.json vocabulary")
    return vocabulary if vocabulary.endswith(".json") else os.path.join(vocabulary,
                                                                        "tokenizer.json")
