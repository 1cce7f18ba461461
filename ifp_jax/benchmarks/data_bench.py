"""`ifp bench data`: the input pipeline alone, on a generated text corpus prepared on disk.

Generates (or reuses) a corpus of `gb` GB (data/corpus.py), prepares it once for a CPT config
shaped like `ifp bench train`'s default (batch 8 x 256 tokens; chunks of 128, so the predictor
reads 128 tokens), then draws batches from the prepared data with 0, 1 and 2 grain workers and
reports examples/s, tokens/s and host memory (resident set of this process and its workers,
from /proc). The train step's consumption comes from the same default `ifp bench train` shape
measured in this run (dense and IFP), or a tokens/s figure given with --step-tokens-per-s.
"""

from __future__ import annotations

import os
import sys
import time

from ifp_jax.config import DataConfig, replace
from ifp_jax.host_memory import descendants, process_tree_rss_mib, rss_mib

SEQ_LEN, CHUNK, BATCH = 256, 128, 8


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def data_config(corpus: str, prepared_dir: str = "") -> DataConfig:
    return DataConfig(mixture="ifp_text", text_files=corpus, seq_len=SEQ_LEN,
                      cpt_chunk_len=CHUNK, cpt_num_chunks=2, global_batch_size=BATCH,
                      prepared_dir=prepared_dir)


def measure_loader(cfg: DataConfig, workers: int, batches: int) -> dict:
    """Examples/s, tokens/s and host memory drawing `batches` batches with `workers` workers."""
    from ifp_jax.data.pipeline import make_train_batches
    before = set(descendants())
    it = make_train_batches(replace(cfg, num_workers=workers, prefetch=4), CHUNK)
    try:
        next(it)  # start-up (workers spawned, readers opened) is not timed
        rss0 = process_tree_rss_mib()
        # The processes this loader started (its workers and their helpers), apart.
        workers_rss = rss_mib([p for p in descendants() if p not in before])
        t0 = time.perf_counter()
        tokens = 0
        peak = rss0
        for i in range(batches):
            batch = next(it)
            tokens += int(batch["decoder_loss_weights"].size)
            if i % 50 == 0:
                peak = max(peak, process_tree_rss_mib())
        seconds = time.perf_counter() - t0
    finally:
        it.close()
    examples = batches * cfg.global_batch_size
    return {"workers": workers, "batches": batches, "seconds": seconds,
            "examples_per_s": examples / seconds, "tokens_per_s": tokens / seconds,
            "rss_start_mib": rss0, "rss_peak_mib": peak, "workers_rss_mib": workers_rss}


def run_data_bench(gb: float, corpus_dir: str, prepared_dir: str, *, workers: tuple[int, ...],
                   batches: int, step_tokens_per_s: float | None = None,
                   prepare_processes: int = 1, own_cache: bool = False) -> dict:
    """`own_cache`: prepared_dir is the bench's own cache, which may be wiped and rebuilt when
    it was prepared with other settings (an older version, another size)."""
    from ifp_jax.data.corpus import generate_corpus
    from ifp_jax.data.prepare import prepare
    t0 = time.time()
    files = generate_corpus(corpus_dir, int(gb * 1e9))
    corpus_bytes = sum(os.path.getsize(f) for f in files)
    _log(f"corpus: {len(files)} files, {corpus_bytes / 1e9:.2f} GB in {corpus_dir} "
         f"({time.time() - t0:.0f}s)")
    cfg = data_config(corpus_dir)
    t0 = time.time()
    manifest = _reusable(cfg, prepared_dir, own_cache)
    if manifest is None:
        manifest = prepare(cfg, CHUNK, prepared_dir, log=_log) if prepare_processes == 1 else \
            _prepare_in_processes(corpus_dir, prepared_dir, prepare_processes)
    prepare_s = time.time() - t0
    examples = sum(s["examples"] for s in manifest["tasks"]["ifp_text"].values())
    _log(f"prepared {examples:,} examples in {prepare_s:.0f}s into {prepared_dir}")
    loader = []
    for w in workers:
        _log(f"loader with {w} worker(s): {batches} batches")
        loader.append(measure_loader(replace(cfg, prepared_dir=prepared_dir), w, batches))
    step = ({"tokens_per_s": step_tokens_per_s, "source": "--step-tokens-per-s"}
            if step_tokens_per_s else _train_step_tokens_per_s())
    best = max(r["tokens_per_s"] for r in loader)
    return {"corpus_gb": corpus_bytes / 1e9, "prepared_examples": examples,
            "prepare_seconds": prepare_s, "prepare_processes": prepare_processes,
            "prepared_gb": _dir_bytes(prepared_dir) / 1e9, "loader": loader, "train_step": step,
            "loader_over_step": best / step["tokens_per_s"]}


def _reusable(cfg: DataConfig, prepared_dir: str, own_cache: bool) -> dict | None:
    """The manifest of a complete preparation of this corpus and config in prepared_dir, else
    None; a stale preparation in the bench's own cache is removed first."""
    import json
    import shutil
    from ifp_jax.data.prepare import PLAN
    from ifp_jax.data.tasks import mixture_fingerprint
    from ifp_jax.data.prepared import MANIFEST, load_manifest
    plan_path = os.path.join(prepared_dir, PLAN)
    if not os.path.exists(plan_path):
        return None
    with open(plan_path) as f:
        started = json.load(f)["fingerprint"]
    if started != mixture_fingerprint(cfg, CHUNK):
        if own_cache:
            _log(f"{prepared_dir} was prepared with other settings: removing it (bench cache)")
            shutil.rmtree(prepared_dir)
        return None  # else prepare() refuses it with a line naming the difference
    if os.path.exists(os.path.join(prepared_dir, MANIFEST)):
        _log(f"reusing the complete preparation in {prepared_dir}")
        return load_manifest(prepared_dir)
    return None


def _prepare_in_processes(corpus_dir: str, prepared_dir: str, n: int) -> dict:
    """`ifp data prepare` as n processes over disjoint shards (the way a user runs it)."""
    import json
    import subprocess
    from ifp_jax.data.prepared import MANIFEST
    cmd = [sys.executable, "-m", "ifp_jax", "data", "prepare", "--out", prepared_dir,
           f"data.text_files={corpus_dir}", "data.mixture=ifp_text", f"data.seq_len={SEQ_LEN}",
           f"data.cpt_chunk_len={CHUNK}", "data.cpt_num_chunks=2",
           f"predictor.max_prompt_len={CHUNK}"]
    # Their progress goes to stderr with ours: stdout carries only the report (--json).
    procs = [subprocess.Popen(cmd + ["--process-index", str(i), "--process-count", str(n)],
                              stdout=sys.stderr) for i in range(n)]
    if any(p.wait() for p in procs):
        raise RuntimeError("a preparation process failed (see its output above)")
    with open(os.path.join(prepared_dir, MANIFEST)) as f:
        return json.load(f)


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _train_step_tokens_per_s() -> dict:
    """Tokens/s of `ifp bench train`'s default shape, dense and IFP, measured now."""
    from ifp_jax.benchmarks.train_bench import default_config, run_train_bench
    _log("train step: `ifp bench train` default shape (2 timed steps per arm)")
    result = run_train_bench(default_config(), steps=2, warmup=1, peer=False)
    arms = {name: result[name]["tokens_per_s"] for name in ("dense", "ifp")}
    return {"tokens_per_s": max(arms.values()), "per_arm": arms,
            "source": "ifp bench train (default shape), this run"}


def format_report(r: dict) -> str:
    lines = [f"corpus {r['corpus_gb']:.2f} GB -> {r['prepared_examples']:,} examples "
             f"({r['prepared_gb']:.2f} GB prepared in {r['prepare_seconds']:.0f}s, "
             f"{r['prepare_processes']} process(es))", "",
             "| workers | examples/s | tokens/s | host RSS start -> peak (MiB) |",
             "|---|---|---|---|"]
    for x in r["loader"]:
        lines.append(f"| {x['workers']} | {x['examples_per_s']:,.0f} | {x['tokens_per_s']:,.0f} "
                     f"| {x['rss_start_mib']:,.0f} -> {x['rss_peak_mib']:,.0f} |")
    lines += ["", f"train step: {r['train_step']['tokens_per_s']:,.0f} tokens/s "
                  f"({r['train_step']['source']})",
              f"fastest loader / train step = {r['loader_over_step']:.1f}x"]
    return "\n".join(lines)
