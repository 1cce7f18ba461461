"""GGUF export: a tiny random HF Llama (transformers as the reference) round-trips through
write_gguf / read_gguf exactly, in llama.cpp's names, keys and rope layout; llama.cpp itself
(llama-cpp-python, installed by `make setup`) computes the same logits and tokens."""

import json
import os

import gguf
import numpy as np
import pytest

from ifp_jax.config import ConfigError
from ifp_jax.gguf_file.gguf_writer import (byte_vocab_tokens, gguf_tensor_name, permute_qk,
                                        read_gguf, unpermute_qk, write_gguf)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

META = {"kept_units": [[0, 5, 17, 95], [3, 4, 60, 61]], "text": "reverse abc = ", "task": "",
        "source_workdir": "/runs/demo", "source_step": 1200, "keep_k": 4,
        "content_hash": "9f" * 32, "scales": [0.5, 1.25], "lambda_mask": True}


def tiny_llama(tied: bool, vocab_size: int = 259, init: float = 0.02, seed: int = 0):
    """A random 2-layer GQA Llama -> (model, config dict, {HF name: f32 numpy})."""
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=96, max_position_embeddings=128,
        rms_norm_eps=1e-6, initializer_range=init, tie_word_embeddings=tied,
        bos_token_id=None, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norm weights too, so a swapped norm cannot pass
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    return model, cfg.to_dict(), sd


def _fields(path):
    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()}


@pytest.mark.parametrize("tied", [False, True])
def test_byte_model_round_trips_exactly(tmp_path, tied):
    _, cfg, sd = tiny_llama(tied)
    path = str(tmp_path / "m.gguf")
    write_gguf(path, cfg, sd, "byte", META)
    got_cfg, tensors, meta, tokens = read_gguf(path)

    want = {k: v for k, v in sd.items() if not (tied and k == "lm_head.weight")}
    assert set(tensors) == set(want)
    for name, arr in want.items():
        assert tensors[name].dtype == np.float32
        np.testing.assert_array_equal(tensors[name], arr, err_msg=name)
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "intermediate_size", "rms_norm_eps",
                "max_position_embeddings", "tie_word_embeddings", "eos_token_id", "pad_token_id",
                "bos_token_id"):
        assert got_cfg[key] == cfg[key], key
    assert got_cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"]
    assert meta == META
    # The read-back config builds the same transformers model.
    assert transformers.LlamaConfig(**got_cfg).head_dim == cfg["head_dim"]

    want_tokens = ["<pad>", "</s>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    want_tokens[0x20 + 3] = "\u2581"
    assert tokens == want_tokens
    f = _fields(path)
    T = gguf.TokenType
    assert f["tokenizer.ggml.token_type"] == [T.CONTROL, T.CONTROL, T.UNKNOWN] + [
        T.NORMAL if b == 0x20 else T.BYTE for b in range(256)]
    assert (f["tokenizer.ggml.model"], f["tokenizer.ggml.eos_token_id"],
            f["tokenizer.ggml.padding_token_id"], f["tokenizer.ggml.unknown_token_id"]) == (
        "llama", 1, 0, 2)
    assert not f["tokenizer.ggml.add_space_prefix"] and not f["tokenizer.ggml.add_bos_token"]
    assert "tokenizer.ggml.bos_token_id" not in f  # seqio's byte vocabulary has no BOS


def test_file_uses_llama_cpp_names_keys_and_rope_layout(tmp_path):
    _, cfg, sd = tiny_llama(False)
    path = str(tmp_path / "m.gguf")
    write_gguf(path, cfg, sd, "byte", META)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)  # llama.cpp's own table
    for hf_name in sd:
        assert gguf_tensor_name(hf_name) == name_map.get_name(hf_name, try_suffixes=(".weight",))
    stored = {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}
    assert set(stored) == {gguf_tensor_name(n) for n in sd}
    np.testing.assert_array_equal(stored["blk.1.attn_q.weight"],
                                  permute_qk(sd["model.layers.1.self_attn.q_proj.weight"], 4))
    np.testing.assert_array_equal(stored["blk.1.attn_k.weight"],
                                  permute_qk(sd["model.layers.1.self_attn.k_proj.weight"], 2))
    assert not np.array_equal(stored["blk.1.attn_q.weight"],
                              sd["model.layers.1.self_attn.q_proj.weight"])
    f = _fields(path)
    want = {"context_length": 128, "embedding_length": 64, "block_count": 2,
            "feed_forward_length": 96, "attention.head_count": 4, "attention.head_count_kv": 2,
            "attention.key_length": 16, "attention.value_length": 16,
            "rope.dimension_count": 16, "vocab_size": 259}
    assert {k: f[f"llama.{k}"] for k in want} == want
    assert np.float32(f["llama.rope.freq_base"]) == np.float32(10000.0)
    assert np.float32(f["llama.attention.layer_norm_rms_epsilon"]) == np.float32(1e-6)
    assert f["general.architecture"] == "llama" and f["general.name"]


def test_f16_keeps_norms_f32(tmp_path):
    _, cfg, sd = tiny_llama(True)
    path = str(tmp_path / "m.gguf")
    write_gguf(path, cfg, sd, "byte", META, dtype="f16")
    _, tensors, _, _ = read_gguf(path)
    for name, arr in tensors.items():
        want = np.float32 if arr.ndim == 1 else np.float16
        assert arr.dtype == want, name
        np.testing.assert_array_equal(arr, sd[name].astype(want), err_msg=name)
    with pytest.raises(ConfigError, match="use one of f32, f16, q8_0, q4_0"):
        write_gguf(path, cfg, sd, "byte", META, dtype="q8")


def test_padded_vocab_gets_unused_tokens():
    tokens, types = byte_vocab_tokens(264)
    assert tokens[259:] == [f"[PAD{i}]" for i in range(259, 264)]
    assert types[259:] == [gguf.TokenType.UNUSED] * 5
    with pytest.raises(ConfigError, match="vocab_size >= 259"):
        byte_vocab_tokens(200)


_TEXT = ["the quick brown fox jumps over the lazy dog", "hello world, hello gguf"]
# Long digit runs: GPT-2's pre-tokenizer keeps "1234567" whole, Llama 3's splits it in 3s.
_DIGITS = ["order 1234567 of 7654321 items", "call 1234567 then 12345"]


def _train(model, trainer, pre=None, text=_TEXT):
    from tokenizers import Tokenizer
    tok = Tokenizer(model)
    if pre is not None:
        tok.pre_tokenizer = pre
    tok.train_from_iterator(text * 20, trainer)
    return tok


def _bpe_gguf(tmp_path, digits: bool = False):
    """A GPT-2-style byte-level BPE tokenizer.json trained offline, and a GGUF using it;
    `digits`: SmolLM2's pre-tokenizer (each digit alone, then GPT-2's split)."""
    from tokenizers import decoders, models, pre_tokenizers, trainers
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if digits:
        pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), pre])
    tok = _train(models.BPE(), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>", "<s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()), pre, _TEXT + _DIGITS)
    tok.decoder = decoders.ByteLevel()
    tok_path = str(tmp_path / "tokenizer.json")
    tok.save(tok_path)
    _, cfg, sd = tiny_llama(False, vocab_size=320)
    cfg.update(bos_token_id=2, eos_token_id=1, pad_token_id=0)
    path = str(tmp_path / "m.gguf")
    write_gguf(path, cfg, sd, tok_path, META, dtype="f32")
    return tok, tok_path, sd, path


def test_bpe_tokenizer_json_round_trips_tokens_and_merges(tmp_path):
    tok, tok_path, sd, path = _bpe_gguf(tmp_path)
    got_cfg, tensors, _, tokens = read_gguf(path)

    vocab = tok.get_vocab()
    n = len(vocab)
    assert tokens[:n] == sorted(vocab, key=vocab.get)
    assert tokens[n:] == [f"[PAD{i}]" for i in range(n, 320)]
    f = _fields(path)
    with open(tok_path) as fh:
        merges = json.load(fh)["model"]["merges"]
    assert f["tokenizer.ggml.merges"] == [" ".join(m) for m in merges]
    T = gguf.TokenType
    assert f["tokenizer.ggml.token_type"][:4] == [T.CONTROL, T.CONTROL, T.CONTROL, T.NORMAL]
    assert (f["tokenizer.ggml.model"], f["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    assert (got_cfg["bos_token_id"], got_cfg["eos_token_id"], got_cfg["pad_token_id"]) == (2, 1, 0)
    np.testing.assert_array_equal(tensors["lm_head.weight"], sd["lm_head.weight"])


def _one_line_error(fn, match):
    with pytest.raises(ConfigError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)


def test_bad_input_is_one_line_error(tmp_path):
    from tokenizers import models, pre_tokenizers, trainers
    _, cfg, sd = tiny_llama(False)
    path = str(tmp_path / "m.gguf")
    for name, model, trainer in (
            ("WordPiece", models.WordPiece(unk_token="[UNK]"),
             trainers.WordPieceTrainer(vocab_size=100, special_tokens=["[UNK]"],
                                       show_progress=False)),
            ("Unigram", models.Unigram(), trainers.UnigramTrainer(
                vocab_size=60, special_tokens=["<unk>"], unk_token="<unk>",
                show_progress=False))):
        tok_path = str(tmp_path / f"{name}.json")
        _train(model, trainer, pre_tokenizers.Whitespace()).save(tok_path)
        _one_line_error(lambda: write_gguf(path, cfg, sd, tok_path, META), f"has a {name} model")
    _one_line_error(lambda: write_gguf(path, cfg, sd, str(tmp_path / "none.json"), META),
                    "neither 'byte' nor an existing tokenizer.json")

    missing = {k: v for k, v in sd.items() if k != "model.layers.1.mlp.up_proj.weight"}
    _one_line_error(lambda: write_gguf(path, cfg, missing, "byte", META),
                    r"model\.layers\.1\.mlp\.up_proj\.weight is missing")
    extra = dict(sd, **{"model.layers.2.mlp.up_proj.weight": sd["lm_head.weight"]})
    _one_line_error(lambda: write_gguf(path, cfg, extra, "byte", META),
                    r"model\.layers\.2\.mlp\.up_proj\.weight is not part")
    pruned = dict(cfg, intermediate_size=48)
    _one_line_error(lambda: write_gguf(path, pruned, sd, "byte", META), "intermediate_size")
    _one_line_error(lambda: write_gguf(path, dict(cfg, eos_token_id=2), sd, "byte", META),
                    "set eos_token_id=1")
    untied = dict(sd, **{"lm_head.weight": sd["lm_head.weight"] + 1})
    _one_line_error(lambda: write_gguf(path, dict(cfg, tie_word_embeddings=True), untied, "byte",
                                       META), "tie_word_embeddings=false")
    rope = dict(cfg, rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0})
    _one_line_error(lambda: write_gguf(path, rope, sd, "byte", META), "'llama3'")
    _one_line_error(lambda: write_gguf(path, cfg, sd, "byte", {"units": []}), "empty")
    _one_line_error(lambda: write_gguf(path, cfg, sd, "byte", {"d": {"a": 1}}), "is a dict")
    _one_line_error(lambda: write_gguf(path, cfg, sd, "byte", {"a b": 1}), "rename it")
    assert not [p for p in os.listdir(tmp_path) if p.startswith("m.gguf")]  # nor a partial file


# Rope in numpy, both conventions: pair i of a head is rotated by position * base^(-2i/d).
def _angles(pos, d, base=10000.0):
    return pos * base ** (-np.arange(0, d, 2) / d)  # [d/2]


def rope_half_split(x, pos, n_heads):
    """HF Llama (rotate_half): dimension i pairs with i + d/2."""
    x = x.reshape(n_heads, -1)
    d = x.shape[1]
    cos, sin = np.cos(_angles(pos, d)), np.sin(_angles(pos, d))
    a, b = x[:, :d // 2], x[:, d // 2:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=1)


def rope_interleaved(x, pos, n_heads):
    """llama.cpp LLAMA_ROPE_TYPE_NORM (ggml rotate_pairs, n_offset 1): 2i pairs with 2i+1."""
    x = x.reshape(n_heads, -1)
    d = x.shape[1]
    cos, sin = np.cos(_angles(pos, d)), np.sin(_angles(pos, d))
    a, b = x[:, 0::2], x[:, 1::2]
    out = np.empty_like(x)
    out[:, 0::2], out[:, 1::2] = a * cos - b * sin, a * sin + b * cos
    return out


def test_permutation_turns_hf_rope_into_llama_cpp_rope():
    rng = np.random.default_rng(0)
    n_q, n_kv, d, h = 4, 2, 16, 64
    wq, wk = rng.normal(size=(n_q * d, h)), rng.normal(size=(n_kv * d, h))
    np.testing.assert_array_equal(unpermute_qk(permute_qk(wq, n_q), n_q), wq)
    np.testing.assert_array_equal(permute_qk(unpermute_qk(wk, n_kv), n_kv), wk)
    assert not np.array_equal(permute_qk(wq, n_q), wq)

    def scores(rope, wq_, wk_, xq, xk, pq, pk):
        q = rope(wq_ @ xq, pq, n_q)  # [n_q, d]
        k = rope(wk_ @ xk, pk, n_kv)  # [n_kv, d]
        return np.einsum("hd,hd->h", q, np.repeat(k, n_q // n_kv, axis=0))  # GQA: shared k

    for pq, pk in ((0, 0), (7, 3), (100, 41)):
        xq, xk = rng.normal(size=h), rng.normal(size=h)
        hf = scores(rope_half_split, wq, wk, xq, xk, pq, pk)
        cpp = scores(rope_interleaved, permute_qk(wq, n_q), permute_qk(wk, n_kv), xq, xk, pq, pk)
        np.testing.assert_allclose(cpp, hf, rtol=1e-10, atol=1e-9)
        if pq != pk:  # unpermuted weights under llama.cpp's rope give other scores
            wrong = scores(rope_interleaved, wq, wk, xq, xk, pq, pk)
            assert np.abs(wrong - hf).max() > 1e-3


def _llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: run "
                               "`make setup` (or python .ci/llama_cpp_wheel.py)")


def test_llama_cpp_runs_the_gguf_like_transformers(tmp_path):
    llama_cpp = _llama_cpp()
    model, cfg, sd = tiny_llama(False, init=0.3)  # wide logits: greedy picks are not near-ties
    path = str(tmp_path / "m.gguf")
    write_gguf(path, cfg, sd, "byte", META, dtype="f32")  # f32: the 1e-3 bound is f32 rounding
    f32 = 0  # GGML_TYPE_F32: llama.cpp's default f16 KV cache would round K and V
    llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_batch=64, logits_all=True, verbose=False,
                          n_threads=1, type_k=f32, type_v=f32, seed=0)

    # Spaces, control bytes, multi-byte UTF-8 and texts of our special / byte tokens.
    for text in (b"  two  spaces", "tab\tnew\nline caf\u00e9 \U0001f999 </s> <0x41> <pad>".encode(),
                 bytes(range(1, 128))):
        ids = [b + 3 for b in text]
        assert llm.tokenize(text, add_bos=False, special=False) == ids, text
        assert llm.detokenize(ids) == text
    text = b"some text with spaces"
    ids = [b + 3 for b in text]
    assert llm.tokenize(text, add_bos=False, special=False) == ids

    llm.eval(ids)
    got = np.array(llm.scores[:len(ids)])
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    diff = np.abs(got - want).max()
    print(f"llama.cpp vs transformers: max |logit diff| {diff:.3g}, logit scale "
          f"{np.abs(want).max():.3g}")
    assert diff < 1e-3

    seq = list(ids)
    hf_seq = list(ids)
    for _ in range(8):
        nxt = int(np.argmax(llm.scores[len(seq) - 1]))
        seq.append(nxt)
        llm.eval([nxt])
        with torch.no_grad():
            hf_seq.append(int(model(torch.tensor([hf_seq])).logits[0, -1].argmax()))
    assert seq == hf_seq
    print(f"greedy continuation (8 tokens, equal): {seq[len(ids):]}")


@pytest.mark.parametrize("pre", ["gpt-2", "smollm"])
def test_llama_cpp_tokenizes_the_bpe_gguf_like_tokenizers(tmp_path, pre):
    llama_cpp = _llama_cpp()
    tok, _, _, path = _bpe_gguf(tmp_path, digits=pre == "smollm")
    assert gguf.GGUFReader(path).fields["tokenizer.ggml.pre"].contents() == pre
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    for text in ("the quick brown fox", "hello  world,\nI've 12345 gguf!", "caf\u00e9 \U0001f999 x",
                 "order 1234567 of 7654321"):
        want = tok.encode(text).ids
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == want, text
        assert llm.detokenize(want) == text.encode()
