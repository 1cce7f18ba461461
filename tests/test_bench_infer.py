"""`ifp bench infer` runs its Table 3 rows end to end at a tiny size (figures are not asserted:
speed targets live in the benchmark's printout, never in unit tests)."""

import json

import pytest

from ifp_jax.benchmarks.infer_bench import (decoder_param_count, format_report, run_infer_bench,
                                       size_config, weight_bytes_per_token)
from ifp_jax.config import ConfigError


def test_weight_bytes_count_every_weight_read_per_token():
    cfg = size_config("2m", 0.25, []).model
    # Untied: all decoder params except the embedding table, plus the one row read of it.
    embed = cfg.padded_vocab_size * cfg.d_model
    assert weight_bytes_per_token(cfg) == 4 * (decoder_param_count(cfg) - embed + cfg.d_model)
    tied = size_config("2m", 0.25, ["model.tie_embeddings=true"]).model
    assert weight_bytes_per_token(tied) == 4 * decoder_param_count(tied)


def test_infer_bench_rows_and_ratios():
    pytest.importorskip("transformers")
    r = run_infer_bench(("2m",), prompt_len=32, new_tokens=8, repeats=1, log=lambda m: None)
    s = r["sizes"][0]
    assert set(s["rows"]) == {"dense-full", "dense-small", "IFP", "transformers"}
    ifp = s["rows"]["IFP"]
    assert ifp["d_ffn"] == s["keep_k"] == 128 and s["rows"]["dense-full"]["d_ffn"] == 512
    assert ifp["cache_hit_second_request"] is True
    assert ifp["loading_cached_s"] < ifp["loading_s"]
    assert 0 < s["ratios"]["select_load_share"] < 1
    for row in s["rows"].values():
        assert row["decode_tokens_per_s"] > 0 and row["bound_tokens_per_s"] > 0
        assert row["read_bandwidth"] > 0 and row["of_bound"] > 0
    json.dumps(r)  # --json prints it as one object
    text = format_report(r)
    assert "IFP decode / dense-small decode" in text and "transformers" in text


def test_prompt_longer_than_the_model_is_refused():
    with pytest.raises(ConfigError, match="max_len"):
        run_infer_bench(("2m",), prompt_len=1020, new_tokens=8, peer=False, log=lambda m: None)
    with pytest.raises(ConfigError, match="unknown size"):
        size_config("7b", 0.25, [])
