"""The serving half of `ifp smollm2`: per-task exports of the k = F/2 IFP run, each scored in
llama.cpp against the masked model's per-task figure, and decode tokens/s of dense vs pruned in
llama.cpp and in ifp_jax's own KV-cache decoder (what `ifp generate` runs)."""

from __future__ import annotations

import os
import shutil
import time

DECODE_TOKENS = 64
SPEED_PROMPT = "reverse abcdefgh ="


def export_dense(dense_dir: str, out: str, log=print) -> str:
    """The dense SFT model written as orbax + GGUF (no selection: every unit kept)."""
    if os.path.exists(os.path.join(out, "gguf", "model.gguf")):
        return out
    from ifp_jax.config import load_workdir_config
    from ifp_jax.export.run import write_formats
    from ifp_jax.export.small_model import to_host
    from ifp_jax.train.runs import open_run
    cfg = load_workdir_config(dense_dir)
    decoder = to_host(open_run(dense_dir, cfg=cfg).params["decoder"])
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)  # a crashed earlier attempt
    write_formats(tmp, cfg=cfg.model, params=decoder, vocabulary=cfg.data.vocabulary,
                  meta={"source_workdir": os.path.abspath(dense_dir), "kind": "dense"},
                  formats=("orbax", "gguf"))
    os.replace(tmp, out)
    log(f"[ifp] dense model -> {out}")
    return out


def ifp_decode_rate(model_dir: str, new_tokens: int = DECODE_TOKENS) -> float:
    """Tokens/s of ifp_jax's KV-cache decoder (infer.generate.stream, as `ifp generate`) on an
    exported model, batch 1, EOS ignored; the first two steps (prefill and the compiling
    decode step) are excluded."""
    from ifp_jax.infer.generate import stream
    from ifp_jax.serve.generator import from_exported
    g = from_exported(model_dir, SPEED_PROMPT)
    stamps = []
    for _ in stream(g.params, g.model_cfg, g.prompt_ids, max_new_tokens=new_tokens + 2,
                    eos_id=None, mask=None, dtype=g.dtype):
        stamps.append(time.perf_counter())
    return (len(stamps) - 2) / (stamps[-1] - stamps[1])


def export_and_serve(workdir: str, dense_dir: str, ifp_dir: str, rows: dict, *,
                     export_tasks: int | None, llama_cpp: bool, log=print) -> dict:
    """Exports `ifp_dir` per task; returns {'llama_cpp': {task: record}, 'agreement': ...,
    'decode_tokens_per_s': {...}} (llama.cpp parts empty when `llama_cpp` is False)."""
    from ifp_jax.config import load_workdir_config
    from ifp_jax.export.run import export_workdir
    cfg = load_workdir_config(ifp_dir)
    tasks = list(rows["IFP per task, k = F/2"]["per_task"])[:export_tasks]
    exports = {}
    for task in tasks:
        out = os.path.join(workdir, "export", task)
        if not os.path.exists(os.path.join(out, "export.json")):
            export_workdir(ifp_dir, out, task=task, formats=("orbax", "gguf"), log=log)
        exports[task] = out
    dense_out = export_dense(dense_dir, os.path.join(workdir, "dense_export"), log)
    first = exports[tasks[0]]
    speed = {"ifp generate, dense": ifp_decode_rate(os.path.join(dense_out, "orbax")),
             "ifp generate, pruned (k = F/2)": ifp_decode_rate(os.path.join(first, "orbax"))}
    result = {"exports": exports, "llama_cpp": {}, "agreement": {}}
    if llama_cpp:
        from ifp_jax.experiments import smollm2_llama_cpp as lcpp
        from ifp_jax.serve.generator import decoder_prompt
        from ifp_jax.vocab.light import get_light_vocabulary
        masked = rows["IFP per task, k = F/2"]["per_task"]
        steps = lcpp.decode_steps(cfg)
        for task, out in exports.items():
            t0 = time.time()
            rec = lcpp.exact_match(os.path.join(out, "gguf", "model.gguf"), cfg, task,
                                   max_new=steps)
            result["llama_cpp"][task] = rec
            result["agreement"][task] = abs(rec["exact_match"] - masked[task])
            log(f"    llama.cpp {task}: exact match {rec['exact_match']:.3f} (masked model "
                f"{masked[task]:.3f}; {rec['examples']} examples, {time.time() - t0:.0f} s)")
        prompt = decoder_prompt(get_light_vocabulary(cfg.data.vocabulary), SPEED_PROMPT)
        speed["llama.cpp, dense"] = lcpp.decode_rate(
            os.path.join(dense_out, "gguf", "model.gguf"), prompt, DECODE_TOKENS)
        speed["llama.cpp, pruned (k = F/2)"] = lcpp.decode_rate(
            os.path.join(first, "gguf", "model.gguf"), prompt, DECODE_TOKENS)
    result["decode_tokens_per_s"] = speed
    result["agreement_met"] = (all(d <= 0.01 for d in result["agreement"].values())
                               if result["agreement"] else None)
    return result
