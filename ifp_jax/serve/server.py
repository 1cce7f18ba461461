"""The paper's serving path, each step timed: selection -> loading -> generation
(docs/method.md#inference-selection-loading-generation).

  selection  the predictor reads the prompt once and picks k FFN units per layer
  loading    the kept FFN rows/columns are gathered into a small dense model (lambda folded
             into W_down), on device; the other weights are shared, not copied; cached by the
             selection's hash, so a repeated task (same instruction, same mask) skips it
  generation prefill + KV-cache decode of the small dense model (infer/generate.py)
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import time
from typing import Any

import jax
import numpy as np

from ifp_jax.config import ExperimentConfig
from ifp_jax.selection.prompt import predictor_tokens
from ifp_jax.selection.units import Selection, Selector
from ifp_jax.infer.kv_decoder import gather_fused_mlp, inference_params


def selection_hash(sel: Selection) -> str:
    h = hashlib.sha256(np.ascontiguousarray(sel.keep_idx).tobytes())
    h.update(np.ascontiguousarray(sel.scale).tobytes())
    return h.hexdigest()


@dataclasses.dataclass
class Timings:
    selection_s: float = 0.0
    loading_s: float = 0.0
    cache_hit: bool = False


class PrunedServer:
    """One trained IFP run served prompt by prompt. `prepare(text)` -> (small params, small
    ModelConfig, Timings); generation is the caller's (any infer/generate.py entry point)."""

    def __init__(self, model, params: Any, cfg: ExperimentConfig, predictor_vocab, *,
                 eval_mask: str | None = None, cache_size: int = 8):
        if cfg.pruning.mode not in ("soft", "hard", "static"):
            raise ValueError(f"serving needs a run that selects units (pruning.mode soft, hard "
                             f"or static), not {cfg.pruning.mode!r}")
        self.cfg, self.params, self.vocab = cfg, params, predictor_vocab
        self.selector = Selector(model, cfg, eval_mask)
        self.small_cfg = dataclasses.replace(cfg.model, d_ffn=cfg.pruning.keep_k)
        fold = self.selector.eval_mask == "lambda"
        # Everything but the FFN is shared by every small model: unstacked (per-layer weights,
        # as the decoder reads them) once here, so loading gathers the kept FFN units only.
        self._base = jax.block_until_ready(inference_params(params["decoder"], cfg.model))

        # Only the FFN goes through the jit: shared weights returned from a jit would be copied.
        def gather(mlps, idx, scale):
            return tuple(gather_fused_mlp(m, idx[i], scale[i] if fold else None)
                         for i, m in enumerate(mlps))

        self._gather = jax.jit(gather)
        self._cache: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.cache_size = cache_size

    def clear_cache(self) -> None:
        self._cache.clear()

    def load(self, sel: Selection) -> tuple[Any, bool]:
        """Small model params for a selection (LRU cache by its hash) and whether it was cached."""
        key = selection_hash(sel)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key], True
        # NumPy indices straight into the jit: a jnp.asarray first costs a dispatch each.
        mlps = self._gather(tuple(layer["mlp"] for layer in self._base["layers"]),
                            sel.keep_idx, sel.scale)
        small = {**self._base, "layers": tuple({**layer, "mlp": mlp} for layer, mlp
                                               in zip(self._base["layers"], mlps))}
        jax.block_until_ready(small)
        self._cache[key] = small
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return small, False

    def prepare(self, text: str):
        """text -> (small inference params, small ModelConfig, Timings of both steps)."""
        return self.prepare_tokens(
            predictor_tokens(self.vocab, text, self.cfg.predictor.max_prompt_len))

    def prepare_tokens(self, tokens: np.ndarray):
        """predictor tokens [1, P] -> as `prepare`."""
        t0 = time.perf_counter()
        sel = self.selector(self.params, tokens)
        t1 = time.perf_counter()
        small, hit = self.load(sel)
        t2 = time.perf_counter()
        return small, self.small_cfg, Timings(t1 - t0, t2 - t1, hit)
