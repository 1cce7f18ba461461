"""A GGUF model in llama.cpp (llama-cpp-python), scored like `ifp eval`, and decode timing.

The held-out examples are the ones `ifp eval` reads (pipeline.make_eval_examples on the run's
data config): the same decoder prompt ids (BOS included, as the masked model saw them) go to
llama.cpp, which decodes greedily until the vocabulary's EOS or as many tokens as `ifp eval`
decodes (the longest target of all the evaluated tasks); the text is decoded with the run's
vocabulary and scored by the task's own metric function.
"""

from __future__ import annotations

import time

import numpy as np

from ifp_jax.config import ConfigError, ExperimentConfig


def open_llama(gguf_path: str):
    """A llama.cpp model on the CPU's cores (one-line error naming the install when absent).

    On a CPU with AMX the model is loaded without llama.cpp's extra CPU buffer types (AMX and
    repacked weights): on this project's VM (AMX advertised), llama-cpp-python 0.3.36 built
    native dies with a general protection fault in its AMX matmul on the first evaluation of
    any quantised model, the package's own SmolLM2 Q4_1 included (Q4_1 has no other repacked
    form, so it is AMX). f32 and f16 never use these types; quantised ones then run llama.cpp's
    plain AVX-512 kernels."""
    try:
        import llama_cpp
        from llama_cpp import llama as llama_module
    except ImportError:
        raise ConfigError("llama.cpp evaluation needs llama-cpp-python: pip install "
                          "llama-cpp-python (or pass --no-llama-cpp)") from None
    options = dict(model_path=gguf_path, n_ctx=512, n_batch=512, verbose=False, seed=0)
    if not cpu_has_amx():
        return llama_cpp.Llama(**options)
    # Llama() builds its model params from this function and has no argument for the field.
    defaults = llama_module.llama_cpp.llama_model_default_params

    def without_extra_buffer_types():
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_module.llama_cpp.llama_model_default_params = without_extra_buffer_types
    try:
        return llama_cpp.Llama(**options)
    finally:
        llama_module.llama_cpp.llama_model_default_params = defaults


def cpu_has_amx() -> bool:
    """Whether /proc/cpuinfo lists an AMX feature (Linux; False elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_" in line for line in f)
    except OSError:
        return False


def _greedy(llm, prompt: list[int], max_new: int, eos_id: int) -> list[int]:
    """Greedy ids after `prompt` (EOS ends it, not returned); llama.cpp's sampler at
    temperature 0 is argmax."""
    out = []
    for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        if tok == eos_id or len(out) >= max_new:
            break
        out.append(int(tok))
    return out


def decoder_prompts(ex: dict) -> list[list[int]]:
    """Each example's decoder prompt: the inputs before the first loss-weighted position, plus
    that position (whose token predicts the response's first token)."""
    out = []
    for tokens, weights in zip(ex["decoder_input_tokens"], ex["decoder_loss_weights"]):
        first = int(np.argmax(np.asarray(weights) > 0))
        out.append([int(t) for t in tokens[:first + 1]])
    return out


def decode_steps(cfg: ExperimentConfig) -> int:
    """The new tokens `ifp eval` decodes for every task: the longest target of all the
    mixture's evaluated tasks (one batch program decodes them together)."""
    from ifp_jax.data import pipeline
    return max(int(np.asarray(pipeline.make_eval_examples(
        cfg.data, cfg.predictor.max_prompt_len, name, cfg.data.eval_examples_per_task,
        "validation")["decoder_loss_weights"]).sum(1).max())
        for name in pipeline.eval_task_names(cfg.data))


def exact_match(gguf_path: str, cfg: ExperimentConfig, task_name: str, llm=None,
                max_new: int | None = None) -> dict:
    """{'exact_match', 'examples', 'samples'} of the GGUF model on `task_name`'s held-out split
    (cfg.data.eval_examples_per_task examples, as `ifp eval`)."""
    import seqio
    from ifp_jax.data import pipeline
    from ifp_jax.eval.evaluate import _decode_text, _exact_match_from_metrics
    from ifp_jax.vocab.seqio_vocab import get_vocabulary
    llm = llm or open_llama(gguf_path)
    ex = pipeline.make_eval_examples(cfg.data, cfg.predictor.max_prompt_len, task_name,
                                     cfg.data.eval_examples_per_task, "validation")
    vocab = get_vocabulary(cfg.data.vocabulary)
    max_new = max_new or decode_steps(cfg)
    preds = [_decode_text(vocab, np.asarray(_greedy(llm, p, max_new, vocab.eos_id), np.int32))
             for p in decoder_prompts(ex)]
    values = {}
    for fn in seqio.get_mixture_or_task(task_name).metric_fns:
        values.update(fn(list(ex["target_text"]), preds))
    return {"exact_match": _exact_match_from_metrics(values), "examples": len(preds),
            "samples": list(zip(ex["prompt_text"][:3], ex["target_text"][:3], preds[:3]))}


def decode_rate(gguf_path: str, prompt: list[int], new_tokens: int = 64) -> float:
    """llama.cpp decode tokens/s at batch 1: `new_tokens` greedy steps after the prompt (EOS
    ignored so every model decodes the same count), prefill excluded."""
    llm = open_llama(gguf_path)
    stamps = []
    for _ in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        stamps.append(time.perf_counter())
        if len(stamps) > new_tokens:
            break
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])
