"""`ifp bench train`: dense vs IFP (soft) train-step speed of one LLM, against the matmul peak.

In one process:
  1. the f32 matmul peak of XLA (and of torch with the peer), best of several timings;
  2. the project's own jitted train step (`make_train_step`, donated state, mesh + logical
     rules as in `train.loop`) for the same LLM in mode 'dense' and in mode 'soft' (predictor +
     SoftTopK + masked LLM + AdamW), on one synthetic batch of the batch contract;
  3. optionally Hugging Face transformers training the same Llama shape (`--peer`).
Timed steps are interleaved (dense, IFP, peer, dense, ...) after warm-up so load drift hits
every arm alike; step times are medians.

Model FLOPs per step (stated in the report as `flops_formula`):
    tokens * (6 * N  +  12 * L * T * H * hd)
N = the LLM's matmul parameters (every >= 2-D decoder parameter except the input embedding:
attention, FFN and LM head); the second term is attention's QK^T and AV products (forward 4 *
L * T * H * hd per token, x3 for training, full T x T as computed). The IFP arm is credited with
the same LLM FLOPs (the masked LLM runs every unit in training); the predictor's are not counted,
so its overhead shows as a lower rate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import sys
import time
from typing import Callable

import numpy as np

from ifp_jax.config import (DataConfig, ExperimentConfig, ModelConfig, OptimizerConfig,
                            PredictorConfig, PruningConfig, TrainConfig, replace, to_json)

NUM_TASKS = 4

LLM_50M = ModelConfig(vocab_size=32000, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2,
                      head_dim=64, d_ffn=1376, max_len=256)
# ~2.8M parameters, ~5% of the LLM (the paper's predictor is ~3%): a 2-layer d=64 decoder over
# the same 32k vocabulary and an MLP head to the [L, F] scores.
PREDICTOR_50M = PredictorConfig(
    backbone=ModelConfig(vocab_size=32000, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                         head_dim=32, d_ffn=172, max_len=64),
    head_hidden=64, max_prompt_len=64)


def default_config() -> ExperimentConfig:
    """The default bench shape: a ~50M-parameter Llama, batch 8 x 256 tokens, f32 on CPU."""
    return ExperimentConfig(
        name="bench_train_50m",
        model=LLM_50M,
        predictor=PREDICTOR_50M,
        pruning=PruningConfig(mode="soft", keep_k=LLM_50M.d_ffn // 2),
        data=DataConfig(seq_len=256, global_batch_size=8),
        optimizer=OptimizerConfig(warmup_steps=10),
        train=TrainConfig(steps=1000, compute_dtype="float32"),
    )


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- FLOPs

def llm_param_counts(decoder_params) -> dict:
    import jax
    flat = jax.tree_util.tree_flatten_with_path(decoder_params)[0]
    total = embed = matmul = 0
    for path, leaf in flat:
        keys = [str(getattr(k, "key", k)) for k in path]
        total += leaf.size
        if "embed_tokens" in keys:
            embed += leaf.size
        elif leaf.ndim >= 2:
            matmul += leaf.size
    return {"total": int(total), "embedding": int(embed), "matmul": int(matmul)}


def flops_per_step(cfg: ExperimentConfig) -> float:
    """The LLM's model FLOPs per train step (ifp_jax/flops.py, the formula `ifp compile` uses)."""
    from ifp_jax.flops import decoder_train_flops
    return decoder_train_flops(cfg.model, cfg.data.global_batch_size, cfg.data.seq_len)


FLOPS_FORMULA = ("tokens * (6 * N_matmul + 12 * n_layers * seq_len * n_heads * head_dim); "
                 "N_matmul = LLM params except the input embedding (LM head included)")


# ----------------------------------------------------------------------------- arms

def synthetic_batch(cfg: ExperimentConfig, num_tasks: int = NUM_TASKS, seed: int = 0) -> dict:
    """A random batch of the batch contract (data/pipeline.py), every token a loss token."""
    from ifp_jax.batch import keys
    rng = np.random.default_rng(seed)
    b, t, p = cfg.data.global_batch_size, cfg.data.seq_len, cfg.predictor.max_prompt_len
    v, pv = cfg.model.vocab_size, cfg.predictor.backbone.vocab_size
    batch = {
        "predictor_tokens": rng.integers(1, pv, (b, p), dtype=np.int32),
        "decoder_input_tokens": rng.integers(1, v, (b, t), dtype=np.int32),
        "decoder_target_tokens": rng.integers(1, v, (b, t), dtype=np.int32),
        "decoder_loss_weights": np.ones((b, t), np.float32),
        "task_id": rng.integers(0, num_tasks, (b,), dtype=np.int32),
        "predictor_truncated": np.zeros((b,), np.int32),
        "decoder_truncated": np.zeros((b,), np.int32),
    }
    assert set(batch) == set(keys("step")), sorted(set(keys("step")) ^ set(batch))
    return batch


class JaxArm:
    """The project's jitted train step in one pruning mode; `step()` returns its wall time."""

    def __init__(self, name: str, cfg: ExperimentConfig, mode: str, num_tasks: int = NUM_TASKS,
                 seed: int = 0):
        import jax

        from ifp_jax import sharding as shd
        from ifp_jax.train.compiled import batch_layout, compile_train_step
        from ifp_jax.train.optim import make_optimizer
        from ifp_jax.train.state import build_model, create_state, state_layout

        self.name = name
        self.cfg = cfg = replace(cfg, pruning=replace(cfg.pruning, mode=mode))
        self.mesh = mesh = shd.make_mesh(cfg.mesh)
        model = build_model(cfg)
        tx = make_optimizer(cfg.optimizer, cfg.train.steps)
        layout = state_layout(model, cfg, tx, mesh)
        self.state = create_state(model, cfg, tx, layout=layout, mesh=mesh)
        counts = llm_param_counts(self.state.params["decoder"])
        self.n_llm = counts["total"]
        self.n_llm_embedding = counts["embedding"]
        self.n_llm_matmul = counts["matmul"]
        self.n_predictor = int(sum(x.size for x in jax.tree_util.tree_leaves(
            self.state.params.get("predictor", {}))))
        host = synthetic_batch(cfg, num_tasks, seed)
        specs = batch_layout(cfg, mesh)
        self.batch = {k: jax.make_array_from_process_local_data(specs[k].sharding, v)
                      for k, v in host.items()}
        t0 = time.perf_counter()  # the step `ifp train` runs, compiled the same way
        self.compiled = compile_train_step(model, cfg, tx, layout=layout, mesh=mesh,
                                           num_tasks=num_tasks)
        self.compile_s = time.perf_counter() - t0
        self._jax = jax
        self.last_sums = None

    def step(self) -> float:
        t0 = time.perf_counter()
        self.state, sums = self.compiled(self.state, self.batch)
        self._jax.block_until_ready((self.state, sums))
        elapsed = time.perf_counter() - t0
        self.last_sums = sums
        return elapsed

    def last_loss(self) -> float | None:
        """The last step's loss (a plain array or a metric object with `.compute()`)."""
        try:
            value = self.last_sums["loss"]
            value = value.compute() if hasattr(value, "compute") else value
            return float(np.asarray(value).reshape(-1)[0])
        except Exception:  # the metric format is the training core's business
            return None


# ----------------------------------------------------------------------------- the run

@dataclasses.dataclass
class _Timed:
    arm: object
    times: list = dataclasses.field(default_factory=list)


def _rounds(arms: list[_Timed], n: int, label: str, peaks: list, log: Callable) -> None:
    for i in range(n):
        for peak in peaks:  # one more peak sample per round: the best one survives load drift
            peak.sample(repeats=1)
        for timed in arms:
            s = timed.arm.step()
            if label == "timed":
                timed.times.append(s)
            log(f"{label} step {i + 1}/{n}: {timed.arm.name} {s:.3f}s")


def run_train_bench(cfg: ExperimentConfig, *, steps: int = 5, warmup: int = 1, peer: bool = False,
                    matmul_n: int = 2048, log: Callable[[str], None] = _log,
                    arm_cache: dict | None = None) -> dict:
    """Runs the benchmark and returns every figure as a JSON-able dict.

    `arm_cache` (any dict kept by the caller) lets repeated runs in one process reuse the
    compiled JAX arms of an identical config (their state keeps training; timings restart).
    """
    import jax

    if steps < 1 or warmup < 0:
        raise ValueError("steps must be >= 1 and warmup >= 0")
    tokens = cfg.data.global_batch_size * cfg.data.seq_len
    result: dict = {
        "benchmark": "train", "experiment": cfg.name,
        "shape": {"d_model": cfg.model.d_model, "n_layers": cfg.model.n_layers,
                  "d_ffn": cfg.model.d_ffn, "n_heads": cfg.model.n_heads,
                  "n_kv_heads": cfg.model.n_kv_heads, "head_dim": cfg.model.head_dim,
                  "vocab_size": cfg.model.vocab_size, "batch": cfg.data.global_batch_size,
                  "seq_len": cfg.data.seq_len, "keep_k": cfg.pruning.keep_k},
        "tokens_per_step": tokens, "timed_steps": steps, "warmup_steps": warmup,
        "backend": jax.default_backend(), "devices": jax.device_count(),
        "versions": {"jax": jax.__version__},
        "flops_formula": FLOPS_FORMULA,
    }

    log(f"measuring the XLA f32 matmul peak ({matmul_n}x{matmul_n})")
    xla_peak = XlaMatmulPeak(matmul_n)
    xla_peak.sample(repeats=3)
    peaks = [xla_peak]

    peer_arm, torch_peak = None, None
    if peer:
        from ifp_jax.benchmarks.torch_peer import TorchArm, peer_unavailable
        from ifp_jax.benchmarks.peak import TorchMatmulPeak
        reason = peer_unavailable()
        if reason:
            log(reason)
            result["peer"] = {"skipped": reason}
        else:
            log("measuring the torch f32 matmul peak")
            torch_peak = TorchMatmulPeak(matmul_n)
            torch_peak.sample(repeats=3)
            peaks.append(torch_peak)

    def jax_arm(name: str, mode: str) -> JaxArm:
        key = (to_json(cfg), mode)
        if arm_cache is not None and key in arm_cache:
            log(f"reusing the compiled {name} step")
            return arm_cache[key]
        log(f"building + compiling the {name} step")
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the report / JSON
            arm = JaxArm(name, cfg, mode)
        log(f"  compiled in {arm.compile_s:.1f}s")
        if arm_cache is not None:
            arm_cache[key] = arm
        return arm

    dense = jax_arm("dense", "dense")
    ifp = jax_arm("ifp", "soft")
    arms = [_Timed(dense), _Timed(ifp)]
    if peer and "peer" not in result:
        log("building the transformers peer")
        peer_arm = TorchArm(cfg)
        arms.append(_Timed(peer_arm))

    log(f"LLM {dense.n_llm / 1e6:.2f}M params ({dense.n_llm_matmul / 1e6:.2f}M matmul), "
        f"predictor {ifp.n_predictor / 1e6:.2f}M ({ifp.n_predictor / dense.n_llm:.1%} of the LLM)")
    _rounds(arms, warmup, "warm-up", peaks, log)
    _rounds(arms, steps, "timed", peaks, log)

    flops = flops_per_step(cfg)
    result.update({
        "llm_params": dense.n_llm, "llm_embedding_params": dense.n_llm_embedding,
        "llm_matmul_params": dense.n_llm_matmul, "predictor_params": ifp.n_predictor,
        "predictor_fraction_of_llm": ifp.n_predictor / dense.n_llm,
        "flops_per_step": flops,
        "xla_matmul_peak_flops": xla_peak.flops_per_s,
    })

    def arm_figures(timed: _Timed, peak: float, extra: dict) -> dict:
        med = statistics.median(timed.times)
        return {"step_s_median": med, "step_s_min": min(timed.times), "step_s_all": timed.times,
                "tokens_per_s": tokens / med, "model_flops_per_s": flops / med,
                "fraction_of_peak": flops / med / peak, **extra}

    result["dense"] = arm_figures(arms[0], xla_peak.flops_per_s,
                                  {"compile_s": dense.compile_s, "loss": dense.last_loss()})
    result["ifp"] = arm_figures(arms[1], xla_peak.flops_per_s,
                                {"compile_s": ifp.compile_s, "loss": ifp.last_loss()})
    result["ifp_over_dense_step_time"] = (result["ifp"]["step_s_median"]
                                          / result["dense"]["step_s_median"])
    # Paired: median over rounds of the ratio within a round (arms ran back to back), the
    # figure least moved by load that changes between rounds.
    paired = lambda a, b: statistics.median(x / y for x, y in zip(a.times, b.times))
    result["ifp_over_dense_step_time_paired"] = paired(arms[1], arms[0])
    if peer_arm is not None:
        result["torch_matmul_peak_flops"] = torch_peak.flops_per_s
        result["versions"].update(peer_arm.versions)
        result["peer"] = arm_figures(arms[2], torch_peak.flops_per_s, {
            "name": "transformers LlamaForCausalLM (PyTorch CPU f32, sdpa, AdamW)",
            "params": peer_arm.n_params, "threads": peer_arm.num_threads,
            "loss": peer_arm.last_loss})
        result["ours_over_peer_tokens_per_s"] = (result["dense"]["tokens_per_s"]
                                                 / result["peer"]["tokens_per_s"])
        result["ours_over_peer_tokens_per_s_paired"] = paired(arms[2], arms[0])
    return result


def format_report(r: dict) -> str:
    s = r["shape"]
    lines = [
        f"ifp bench train: {r['experiment']} on {r['backend']} ({r['devices']} device(s))",
        f"  LLM {r['llm_params'] / 1e6:.2f}M params (d_model {s['d_model']}, {s['n_layers']} layers, "
        f"FFN {s['d_ffn']}, {s['n_heads']}/{s['n_kv_heads']} heads x {s['head_dim']}, vocab "
        f"{s['vocab_size']}); predictor {r['predictor_params'] / 1e6:.2f}M "
        f"({r['predictor_fraction_of_llm']:.1%} of the LLM); keep_k {s['keep_k']}",
        f"  batch {s['batch']} x {s['seq_len']} = {r['tokens_per_step']} tokens/step; median of "
        f"{r['timed_steps']} interleaved steps after {r['warmup_steps']} warm-up",
        f"  model FLOPs/step {r['flops_per_step'] / 1e9:.1f} G = {r['flops_formula']}",
        f"  f32 matmul peak: XLA {r['xla_matmul_peak_flops'] / 1e9:.1f} GFLOP/s"
        + (f", torch {r['torch_matmul_peak_flops'] / 1e9:.1f} GFLOP/s"
           if "torch_matmul_peak_flops" in r else ""),
        "",
        f"  {'arm':<14}{'step s':>9}{'tokens/s':>10}{'GFLOP/s':>9}{'of peak':>9}{'compile s':>11}",
    ]
    rows = [("dense (ours)", r["dense"]), ("IFP (ours)", r["ifp"])]
    if "tokens_per_s" in r.get("peer", {}):
        rows.append(("transformers", r["peer"]))
    for name, a in rows:
        comp = f"{a['compile_s']:.1f}" if "compile_s" in a else "-"
        lines.append(f"  {name:<14}{a['step_s_median']:>9.3f}{a['tokens_per_s']:>10.1f}"
                     f"{a['model_flops_per_s'] / 1e9:>9.1f}{a['fraction_of_peak']:>9.1%}{comp:>11}")
    paired = lambda key: (f"; paired per round {r[key + '_paired']:.3f}"
                          if key + "_paired" in r else "")
    lines += ["", f"  IFP / dense step time: {r['ifp_over_dense_step_time']:.3f}"
              f"{paired('ifp_over_dense_step_time')} (target <= 1.10)"]
    if "ours_over_peer_tokens_per_s" in r:
        lines.append(f"  ours / transformers tokens/s (dense): "
                     f"{r['ours_over_peer_tokens_per_s']:.3f}x"
                     f"{paired('ours_over_peer_tokens_per_s')} (target >= 1.2x)")
    elif "skipped" in r.get("peer", {}):
        lines.append(f"  {r['peer']['skipped']}")
    return "\n".join(lines)


from ifp_jax.benchmarks.peak import XlaMatmulPeak  # noqa: E402  (after the helpers it needs none of)
