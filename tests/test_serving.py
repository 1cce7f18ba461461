"""The serving path's loading step builds exactly the exported small model, and caches it."""

import jax
import numpy as np

from ifp_jax.benchmarks.infer_bench import _init_params, size_config
from ifp_jax.vocab.light import LightVocabulary
from ifp_jax.export.small_model import gather_small_decoder
from ifp_jax.infer.kv_decoder import inference_params
from ifp_jax.serve.server import PrunedServer


def test_loading_equals_the_gathered_small_model_and_is_cached():
    cfg = size_config("2m", 0.25, ["model.vocab_size=512", "predictor.backbone.vocab_size=512"])
    model, params = _init_params(cfg)
    server = PrunedServer(model, params, cfg, LightVocabulary("byte"))
    small, small_cfg, t = server.prepare("reverse abcde =")
    assert not t.cache_hit and small_cfg.d_ffn == cfg.pruning.keep_k
    sel = server.selector(params, _tokens(server, "reverse abcde ="))
    want = inference_params(gather_small_decoder(params["decoder"], cfg.model, sel.keep_idx,
                                                 sel.scale)[0], small_cfg)
    for a, b in zip(jax.tree_util.tree_leaves(small), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    again, _, t2 = server.prepare("reverse abcde =")
    assert t2.cache_hit and again is small
    # Another prompt hits the cache exactly when the predictor picks the same units and scales.
    _, _, t3 = server.prepare("sort abcde =")
    other = server.selector(params, _tokens(server, "sort abcde ="))
    same = (np.array_equal(other.keep_idx, sel.keep_idx)
            and np.array_equal(other.scale, sel.scale))
    assert t3.cache_hit == same


def _tokens(server, text):
    from ifp_jax.selection.prompt import predictor_tokens
    return predictor_tokens(server.vocab, text, server.cfg.predictor.max_prompt_len)
