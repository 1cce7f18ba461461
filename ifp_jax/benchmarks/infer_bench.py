"""`ifp bench infer`: the rows of the paper's Table 3 on CPU-sized models
(docs/method.md#inference-selection-loading-generation).

Per model size, in one process, batch 1, a `prompt_len`-token prompt and `new_tokens` generated
tokens (no early EOS):
  dense-full    the whole LLM (every FFN unit)
  dense-small   a dense LLM of the pruned shape (d_ffn = k), as if trained as such
  IFP           selection (predictor on the prompt) + loading (gather into the small model;
                a second request for the same mask hits the cache) + generation; selection
                and loading are medians over max(repeats, 5) requests on a warm server
  transformers  Hugging Face LlamaForCausalLM (PyTorch, CPU) generating from the IFP model's
                HF export (ifp_jax's own exporter), greedy, KV cache
and the memory-bandwidth bound of batch-1 decoding: weight bytes read per token (every decoder
weight except the input embedding table, of which one row is read) over the read bandwidth of a
large matrix-vector product. The bandwidth of this shared machine drifts by up to 1.5x within
minutes, so it is measured again right before every timed repeat of every arm, and an arm's
"of bound" is the median over its repeats of (bound at that moment / decode rate). Random
weights: speed does not depend on them. TTFT = time to the first generated token (IFP:
selection + loading + prefill).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from ifp_jax.config import (ExperimentConfig, ModelConfig, PredictorConfig, PruningConfig,
                            apply_overrides)

SIZES = {
    # ~2M: below 10M parameters, where per-token overhead (not bandwidth) decides.
    "2m": ModelConfig(vocab_size=4096, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                      head_dim=32, d_ffn=512, max_len=1024),
    # ~55M: the train bench's Llama (d 512, 8 layers, FFN 1376, 8/2 heads, vocab 32000).
    "50m": ModelConfig(vocab_size=32000, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2,
                       head_dim=64, d_ffn=1376, max_len=1024),
    # ~135M: SmolLM2-135M's shape (30 layers, d 576, 9/3 heads of 64, FFN 1536, vocabulary
    # 49152, tied, rope theta 1e5); opt-in.
    "135m": ModelConfig(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                        head_dim=64, d_ffn=1536, max_len=2048, tie_embeddings=True,
                        rope_theta=100000.0),
    # ~200M: d 1024, 12 layers, FFN 2816 (opt-in: slower to run).
    "200m": ModelConfig(vocab_size=32000, d_model=1024, n_layers=12, n_heads=16, n_kv_heads=4,
                        head_dim=64, d_ffn=2816, max_len=1024),
}


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def size_config(size: str, keep_frac: float, overrides: list[str]) -> ExperimentConfig:
    if size not in SIZES:
        from ifp_jax.config import ConfigError
        raise ConfigError(f"unknown size '{size}'; choose from {', '.join(SIZES)}")
    m = SIZES[size]
    # A predictor of ~5% of the LLM: a 2-layer d=64 decoder over the LLM's vocabulary.
    predictor = PredictorConfig(backbone=ModelConfig(
        vocab_size=m.vocab_size, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=32,
        d_ffn=172, max_len=128), head_hidden=64, max_prompt_len=128)
    keep = max(8, int(round(m.d_ffn * keep_frac / 8)) * 8)
    cfg = ExperimentConfig(name=f"bench_infer_{size}", model=m, predictor=predictor,
                           pruning=PruningConfig(mode="soft", keep_k=keep,
                                                 eval_mask="lambda"))
    return apply_overrides(cfg, overrides)


def _layer_params(cfg: ModelConfig) -> int:
    """q, k, v, o projections + gate, up, down + two norm scales."""
    d = cfg.d_model
    return d * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + 3 * d * cfg.d_ffn + 2 * d


def weight_bytes_per_token(cfg: ModelConfig, itemsize: int = 4) -> int:
    """Bytes of weights one batch-1 decode step reads (the embedding table: one row, unless
    tied: then it is the LM head too)."""
    d, head = cfg.d_model, cfg.padded_vocab_size * cfg.d_model
    return itemsize * (cfg.n_layers * _layer_params(cfg) + d + head
                       + (0 if cfg.tie_embeddings else d))


def decoder_param_count(cfg: ModelConfig) -> int:
    d, v = cfg.d_model, cfg.padded_vocab_size
    return cfg.n_layers * _layer_params(cfg) + d + v * d * (1 if cfg.tie_embeddings else 2)


class ReadBandwidth:
    """Bytes/s of a jitted f32 [n, n] @ [n] (the matrix is read once per product), best of
    `repeats`; compiled once, measured on every call."""

    def __init__(self, n: int = 8192, repeats: int = 3):
        import jax
        import jax.numpy as jnp
        self.w = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        self.x = jnp.ones((n,), jnp.float32)
        self.f = jax.jit(jnp.matmul).lower(self.w, self.x).compile()
        self.f(self.w, self.x).block_until_ready()
        self.bytes, self.repeats = 4.0 * n * n, repeats

    def __call__(self) -> float:
        run = lambda: self.f(self.w, self.x).block_until_ready()
        return self.bytes / min(_timed(run) for _ in range(self.repeats))


def _timed(fn: Callable) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _init_params(cfg: ExperimentConfig, seed: int = 0) -> dict:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from ifp_jax.model.ifp import IFPModel
    model = IFPModel(cfg.model, cfg.predictor, cfg.pruning)
    batch = {"predictor_tokens": jnp.ones((1, 8), jnp.int32),
             "decoder_input_tokens": jnp.ones((1, 8), jnp.int32)}
    variables = jax.jit(lambda k: model.init(k, batch, mode="dense"))(jax.random.key(seed))
    return model, nn.meta.unbox(variables["params"])


def _repeat_times(first: Callable, full: Callable, new_tokens: int, repeats: int,
                  bandwidth: ReadBandwidth) -> dict:
    """Times `first` (1 token) and `full` (new_tokens) `repeats` times, each right after a
    bandwidth measurement. Returns medians: prefill_s (TTFT), total_s, decode_tokens_per_s, and
    the bandwidths measured (read_bandwidth, the median; per_repeat: [(bytes/s, decode
    tokens/s)] for the caller's bound ratios)."""
    first(), full()  # compile / warm up both
    pairs, prefill, total = [], [], []
    for _ in range(repeats):
        bw = bandwidth()
        t1, tn = _timed(first), _timed(full)
        prefill.append(t1)
        total.append(tn)
        pairs.append((bw, (new_tokens - 1) / max(tn - t1, 1e-9)))
    return {"prefill_s": statistics.median(prefill), "total_s": statistics.median(total),
            "decode_tokens_per_s": statistics.median(rate for _, rate in pairs),
            "read_bandwidth": statistics.median(bw for bw, _ in pairs), "per_repeat": pairs}


def _generation_times(params, mcfg: ModelConfig, *, prompt: list[int], new_tokens: int,
                      repeats: int, bandwidth: ReadBandwidth) -> dict:
    """Our generate(): prefill+first token time, and decode tokens/s over the rest."""
    from ifp_jax.infer.generate import generate
    from ifp_jax.infer.kv_decoder import inference_params
    import jax
    p = jax.block_until_ready(inference_params(params, mcfg))
    run = lambda n: lambda: jax.block_until_ready(generate(p, mcfg, [prompt], max_new_tokens=n,
                                                           eos_id=None))
    return _repeat_times(run(1), run(new_tokens), new_tokens, repeats, bandwidth)


def _torch_times(hf_dir: str, prompt: list[int], new_tokens: int, repeats: int,
                 bandwidth: ReadBandwidth) -> dict:
    import torch
    import transformers
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar in the report
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    ids = torch.tensor([prompt], dtype=torch.long)

    def gen(n):
        def run():
            with torch.no_grad():
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                               min_new_tokens=n, do_sample=False, use_cache=True,
                               pad_token_id=0)
        return run

    return _repeat_times(gen(1), gen(new_tokens), new_tokens, repeats, bandwidth)


def bench_size(size: str, *, prompt_len: int, new_tokens: int, keep_frac: float,
               overrides: list[str], peer: bool, repeats: int, bandwidth: ReadBandwidth,
               log: Callable[[str], None] = _log) -> dict:
    from ifp_jax.vocab.light import LightVocabulary
    from ifp_jax.export.small_model import gather_small_decoder, to_host
    from ifp_jax.serve.server import PrunedServer
    from ifp_jax.selection.prompt import predictor_row

    cfg = size_config(size, keep_frac, overrides)
    if prompt_len + new_tokens > cfg.model.max_len:
        from ifp_jax.config import ConfigError
        raise ConfigError(f"--prompt-len + --new-tokens = {prompt_len + new_tokens} exceeds "
                          f"model.max_len={cfg.model.max_len}; raise model.max_len")
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, cfg.model.vocab_size, prompt_len).tolist()
    model, params = _init_params(cfg)
    small_cfg = dataclasses.replace(cfg.model, d_ffn=cfg.pruning.keep_k)
    rows = {}

    def row(name, mcfg, times, extra=None):
        per_token = weight_bytes_per_token(mcfg)
        pairs = times.pop("per_repeat")
        rows[name] = {"params": decoder_param_count(mcfg), "d_ffn": mcfg.d_ffn, **times,
                      "ttft_s": times["prefill_s"] + (extra or {}).get("select_load_s", 0.0),
                      "weight_bytes_per_token": per_token,
                      "bound_tokens_per_s": times["read_bandwidth"] / per_token,
                      "of_bound": statistics.median(rate * per_token / bw for bw, rate in pairs),
                      **(extra or {})}
        log(f"{size} {name}: decode {times['decode_tokens_per_s']:.1f} tok/s "
            f"({rows[name]['of_bound']:.0%} of bound)")

    timing = dict(prompt=prompt, new_tokens=new_tokens, repeats=repeats, bandwidth=bandwidth)
    row("dense-full", cfg.model, _generation_times(params["decoder"], cfg.model, **timing))
    _, small_params = _init_params(dataclasses.replace(cfg, model=small_cfg,
                                                       pruning=dataclasses.replace(
                                                           cfg.pruning, keep_k=8)), seed=1)
    row("dense-small", small_cfg, _generation_times(small_params["decoder"], small_cfg, **timing))

    # IFP: the prompt's text is random ids; the predictor reads the same ids (as text would).
    server = PrunedServer(model, params, cfg, LightVocabulary("byte"))
    tokens = predictor_row(prompt, cfg.predictor.max_prompt_len)
    server.prepare_tokens(tokens)  # compile selection and loading once (a warm server)
    misses, hits = [], []
    for _ in range(max(repeats, 5)):  # sub-millisecond steps: a median, not one sample
        server.clear_cache()
        small, _, miss = server.prepare_tokens(tokens)
        misses.append(miss)
        hits.append(server.prepare_tokens(tokens)[2])
    times = _generation_times(small, small_cfg, **timing)
    median = lambda timings, field: statistics.median(getattr(t, field) for t in timings)
    select_s, load_s = median(misses, "selection_s"), median(misses, "loading_s")
    row("IFP", small_cfg, times, {
        "selection_s": select_s, "loading_s": load_s,
        "loading_cached_s": median(hits, "loading_s"),
        "cache_hit_second_request": all(h.cache_hit and not m.cache_hit
                                        for h, m in zip(hits, misses)),
        "select_load_s": select_s + load_s,
        "select_load_share": (select_s + load_s) / (select_s + load_s + times["total_s"])})

    if peer:
        from ifp_jax.benchmarks.torch_peer import peer_unavailable
        why = peer_unavailable()
        if why:
            log(why)
        else:
            from ifp_jax.hf import weights as hf_weights
            sel = server.selector(params, tokens)
            host_small, _ = gather_small_decoder(to_host(params["decoder"]), cfg.model,
                                                 sel.keep_idx, sel.scale)
            with tempfile.TemporaryDirectory() as d:
                hf_weights.write_hf_checkpoint(d, hf_weights.hf_config_from_model_config(
                    small_cfg, bos_token_id=None, eos_token_id=1, pad_token_id=0),
                    hf_weights.hf_from_params(to_host(host_small), small_cfg))
                row("transformers", small_cfg, _torch_times(d, prompt, new_tokens, repeats,
                                                            bandwidth))
    r = {"size": size, "llm_params": decoder_param_count(cfg.model), "keep_k": cfg.pruning.keep_k,
         "d_ffn": cfg.model.d_ffn, "rows": rows}
    ifp, small_row = rows["IFP"], rows["dense-small"]
    r["ratios"] = {"ifp_decode_over_dense_small": ifp["decode_tokens_per_s"]
                   / small_row["decode_tokens_per_s"],
                   "select_load_share": ifp["select_load_share"],
                   "ifp_decode_of_bound": ifp["of_bound"]}
    if "transformers" in rows:
        peer_rate = rows["transformers"]["decode_tokens_per_s"]
        r["ratios"]["ifp_decode_over_transformers"] = ifp["decode_tokens_per_s"] / peer_rate
    return r


def run_infer_bench(sizes=("2m", "50m"), *, prompt_len: int = 512, new_tokens: int = 128,
                    keep_frac: float = 0.25, overrides: list[str] = (), peer: bool = True,
                    repeats: int = 3, log: Callable[[str], None] = _log) -> dict:
    import jax
    bandwidth = ReadBandwidth()
    bw = bandwidth()
    log(f"read bandwidth {bw / 1e9:.1f} GB/s (f32 8192x8192 matvec; measured again before "
        f"every timed repeat)")
    out = {"benchmark": "infer", "backend": jax.default_backend(), "batch": 1,
           "prompt_len": prompt_len, "new_tokens": new_tokens, "keep_frac": keep_frac,
           "read_bandwidth_bytes_per_s": bw, "sizes": []}
    for size in sizes:
        out["sizes"].append(bench_size(size, prompt_len=prompt_len, new_tokens=new_tokens,
                                       keep_frac=keep_frac, overrides=list(overrides), peer=peer,
                                       repeats=repeats, bandwidth=bandwidth, log=log))
    return out


def format_report(r: dict) -> str:
    lines = [f"ifp bench infer: batch 1, prompt {r['prompt_len']} tokens, {r['new_tokens']} "
             f"generated, f32 on {r['backend']}; read bandwidth "
             f"{r['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s"]
    for s in r["sizes"]:
        lines += ["", f"{s['size']}: LLM {s['llm_params'] / 1e6:.2f}M params, keep "
                      f"{s['keep_k']}/{s['d_ffn']} FFN units per layer",
                  f"  {'arm':13s} {'params':>8s} {'select ms':>9s} {'load ms':>8s} "
                  f"{'prefill ms':>10s} {'TTFT ms':>8s} {'decode tok/s':>12s} {'GB/s':>5s} "
                  f"{'bound':>7s} {'of bound':>8s}"]
        for name, a in s["rows"].items():
            sel = f"{a['selection_s'] * 1e3:9.1f}" if "selection_s" in a else f"{'-':>9s}"
            load = f"{a['loading_s'] * 1e3:8.1f}" if "loading_s" in a else f"{'-':>8s}"
            lines.append(f"  {name:13s} {a['params'] / 1e6:7.2f}M {sel} {load} "
                         f"{a['prefill_s'] * 1e3:10.1f} {a['ttft_s'] * 1e3:8.1f} "
                         f"{a['decode_tokens_per_s']:12.1f} {a['read_bandwidth'] / 1e9:5.1f} "
                         f"{a['bound_tokens_per_s']:7.1f} {a['of_bound']:8.0%}")
        q = s["ratios"]
        lines.append(f"  IFP decode / dense-small decode: {q['ifp_decode_over_dense_small']:.3f} "
                     f"(target >= 0.97); selection + loading: {q['select_load_share']:.2%} of "
                     f"the request (target <= 2%); cached loading "
                     f"{s['rows']['IFP']['loading_cached_s'] * 1e3:.2f} ms")
        if "ifp_decode_over_transformers" in q:
            lines.append(f"  IFP decode / transformers decode: "
                         f"{q['ifp_decode_over_transformers']:.2f}x")
    return "\n".join(lines)
