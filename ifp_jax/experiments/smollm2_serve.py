"""The serving half of `ifp smollm2`: per-task exports of the k = F/2 IFP run, each scored in
llama.cpp against the masked model's per-task figure, and decode tokens/s of dense vs pruned in
llama.cpp and in ifp_jax's own KV-cache decoder (what `ifp generate` runs)."""

from __future__ import annotations

import os
import shutil
import time

DECODE_TOKENS = 64
SPEED_PROMPT = "reverse abcdefgh ="
# The per-task GGUFs that llama.cpp must score like the masked model are f32: the same weights.
# (At f16, rounding flipped one greedy answer of 220: sort 0.05 vs 0.10.) What a user would
# serve is quantised: the masked model's best task and the dense model are also written at
# QUANTISED_TYPE, scored and timed in llama.cpp beside them.
AGREEMENT_TYPE = "f32"
QUANTISED_TYPE = "q8_0"


def export_dense(dense_dir: str, out: str, gguf_type: str = AGREEMENT_TYPE, log=print) -> str:
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
                  formats=("orbax", "gguf"), gguf_type=gguf_type)
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
    cfg = load_workdir_config(ifp_dir)
    tasks = list(rows["IFP per task, k = F/2"]["per_task"])[:export_tasks]
    exports = {}
    for task in tasks:
        exports[task] = _export_task(ifp_dir, os.path.join(workdir, "export", task), task,
                                     AGREEMENT_TYPE, log)
    dense_out = export_dense(dense_dir, os.path.join(workdir, "dense_export"), log=log)
    # The task the quantised file and the speed rows use: the masked model's best (a quantised
    # model's exact match says little on a task where the masked model scores 0).
    masked = rows["IFP per task, k = F/2"]["per_task"]
    shown = max(tasks, key=lambda t: masked[t])
    shown_export = exports[shown]
    speed = {"ifp generate, dense": ifp_decode_rate(os.path.join(dense_out, "orbax")),
             "ifp generate, pruned (k = F/2)": ifp_decode_rate(os.path.join(shown_export, "orbax"))}
    result = {"exports": exports, "llama_cpp": {}, "agreement": {}, "gguf_type": AGREEMENT_TYPE}
    if llama_cpp:
        from ifp_jax.experiments import smollm2_llama_cpp as lcpp
        from ifp_jax.serve.generator import decoder_prompt
        from ifp_jax.vocab.light import get_light_vocabulary
        steps = lcpp.decode_steps(cfg)
        for task, out in exports.items():
            t0 = time.time()
            rec = lcpp.exact_match(os.path.join(out, "gguf", "model.gguf"), cfg, task,
                                   max_new=steps)
            result["llama_cpp"][task] = rec
            result["agreement"][task] = abs(rec["exact_match"] - masked[task])
            log(f"    llama.cpp {task}: exact match {rec['exact_match']:.3f} (masked model "
                f"{masked[task]:.3f}; {rec['examples']} examples, {time.time() - t0:.0f} s)")
        q = QUANTISED_TYPE
        q_task = _export_task(ifp_dir, os.path.join(workdir, f"export_{q}", shown), shown, q,
                              log)
        q_dense = export_dense(dense_dir, os.path.join(workdir, f"dense_export_{q}"), q, log)
        rec = lcpp.exact_match(os.path.join(q_task, "gguf", "model.gguf"), cfg, shown,
                               max_new=steps)
        result["quantised"] = {"type": q, "task": shown, "exact_match": rec["exact_match"],
                               "masked": masked[shown],
                               "file_bytes": {"pruned": _gguf_bytes(q_task),
                                              "dense": _gguf_bytes(q_dense),
                                              f"pruned {AGREEMENT_TYPE}": _gguf_bytes(shown_export),
                                              f"dense {AGREEMENT_TYPE}": _gguf_bytes(dense_out)}}
        log(f"    llama.cpp {shown} at {q}: exact match {rec['exact_match']:.3f}")
        prompt = decoder_prompt(get_light_vocabulary(cfg.data.vocabulary), SPEED_PROMPT)
        for label, model_dir in ((f"dense, {AGREEMENT_TYPE}", dense_out),
                                 (f"pruned (k = F/2), {AGREEMENT_TYPE}", shown_export),
                                 (f"dense, {q}", q_dense), (f"pruned (k = F/2), {q}", q_task)):
            speed[f"llama.cpp, {label}"] = lcpp.decode_rate(
                os.path.join(model_dir, "gguf", "model.gguf"), prompt, DECODE_TOKENS)
    result["decode_tokens_per_s"] = speed
    result["agreement_met"] = (all(d <= 0.01 for d in result["agreement"].values())
                               if result["agreement"] else None)
    return result


def _export_task(ifp_dir: str, out: str, task: str, gguf_type: str, log=print) -> str:
    """`ifp export --task TASK --gguf-type TYPE` of the IFP run into `out` (reused if present)."""
    if not os.path.exists(os.path.join(out, "export.json")):
        from ifp_jax.export.run import export_workdir
        export_workdir(ifp_dir, out, task=task, formats=("orbax", "gguf"), gguf_type=gguf_type,
                       log=log)
    return out


def _gguf_bytes(export_dir: str) -> int:
    return os.path.getsize(os.path.join(export_dir, "gguf", "model.gguf"))
