"""GGUF (llama.cpp, arch "llama") from a Hugging Face Llama state dict, and back.

`write_gguf` takes the HF tensor names and LlamaConfig dict the HF export writes and follows
llama.cpp's own converter (convert_hf_to_gguf.py, LlamaModel) for the model part: its tensor
names, the llama.* hyper-parameter keys, Q/K rows permuted for its rope. It adds a tokenizer
('byte' = our seqio ByteVocabulary, or a BPE tokenizer.json) and our metadata as "ifp.*" keys.
`read_gguf` inverts it (HF names, un-permuted, same values), to check a file.
"""

from __future__ import annotations

import json
import os
import re

import gguf
import numpy as np

from ifp_jax.config import ConfigError
from ifp_jax.gguf_file import gguf_quant

ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]  # "llama"
_T = gguf.MODEL_TENSOR
_TOP = {"model.embed_tokens.weight": _T.TOKEN_EMBD, "model.norm.weight": _T.OUTPUT_NORM,
        "lm_head.weight": _T.OUTPUT}
_LAYER = {"input_layernorm": _T.ATTN_NORM, "self_attn.q_proj": _T.ATTN_Q,
          "self_attn.k_proj": _T.ATTN_K, "self_attn.v_proj": _T.ATTN_V,
          "self_attn.o_proj": _T.ATTN_OUT, "post_attention_layernorm": _T.FFN_NORM,
          "mlp.gate_proj": _T.FFN_GATE, "mlp.up_proj": _T.FFN_UP, "mlp.down_proj": _T.FFN_DOWN}
_ROWS = ".row_lengths"  # companion key of a list-of-lists metadata value (see _put_metadata)
_BYTE_SPECIALS = ("<pad>", "</s>", "<unk>")  # seqio ByteVocabulary ids 0, 1, 2
_SPACE = "\u2581"  # what llama.cpp's SPM tokenizer turns ' ' into before the lookup


def gguf_tensor_name(hf_name: str) -> str | None:
    """HF Llama tensor name -> llama.cpp's (None for a name llama.cpp's Llama has no use for)."""
    if hf_name in _TOP:
        return gguf.TENSOR_NAMES[_TOP[hf_name]] + ".weight"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf_name)
    if m and m.group(2) in _LAYER:
        return gguf.TENSOR_NAMES[_LAYER[m.group(2)]].format(bid=int(m.group(1))) + ".weight"
    return None


# Rope layouts. HF Llama's rotate_half pairs dimension i of a head with i + d/2 (the checkpoint
# conversion from Meta's weights permuted the q/k rows into that "half-split" layout). llama.cpp
# runs arch "llama" with LLAMA_ROPE_TYPE_NORM: ggml's rotate_pairs with n_offset 1 rotates
# dimensions (2i, 2i+1). Both rotate pair i by position * base^(-2i/d). Moving the q/k output rows
# of each head from (half s, i) to (i, half s) therefore makes llama.cpp rotate exactly HF's
# pairs; q.k is a sum over head dimensions, so a common order change leaves every attention score
# unchanged (v and o are not rotated: untouched). This is llama.cpp's own LlamaModel.permute
# (conversion/llama.py), q with n_heads and k with n_kv_heads; tests check it numerically.
def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF q/k_proj rows [n_heads*d, ...] -> llama.cpp's interleaved-pair order."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]) \
            .swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of `permute_qk`."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]) \
            .swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: str, hf_config: dict, tensors: dict, tokenizer: str, metadata: dict, *,
               dtype: str = "f32", name: str = "ifp_jax pruned llama",
               bpe_pre: str | None = None) -> None:
    """Writes a llama.cpp GGUF of the HF Llama `tensors` (numpy, HF names) to `path`.

    tokenizer: 'byte' (seqio ByteVocabulary) or the path of a tokenizer.json with a BPE model.
    metadata: written as "ifp.<key>" (str, bool, int, float, lists of those, lists of int lists).
    dtype: one of gguf_quant.GGUF_TYPES, 'f32', 'f16', 'q8_0' or 'q4_0' (norms stay f32; the
    per-tensor choice and fallbacks are llama.cpp's, see gguf_file/gguf_quant.py).
    bpe_pre: llama.cpp's pre-tokenizer name for a BPE tokenizer.json whose pre-tokenizer is not
    recognised (GPT-2 and Llama-3 ones are).
    The file appears whole or not at all (written beside `path`, then renamed).
    """
    gguf_quant.check_gguf_type(dtype)
    hp = _hparams(hf_config)
    out = _gguf_tensors(hp, tensors)
    tmp = f"{path}.tmp{os.getpid()}"
    writer = gguf.GGUFWriter(tmp, ARCH)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        writer.add_file_type(gguf_quant.FILE_TYPES[dtype])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_vocab_size(hp["vocab_size"])
        writer.add_context_length(hp["max_position_embeddings"])
        writer.add_embedding_length(hp["hidden_size"])
        writer.add_block_count(hp["num_hidden_layers"])
        writer.add_feed_forward_length(hp["intermediate_size"])
        writer.add_head_count(hp["num_attention_heads"])
        writer.add_head_count_kv(hp["num_key_value_heads"])
        writer.add_key_length(hp["head_dim"])
        writer.add_value_length(hp["head_dim"])
        writer.add_rope_dimension_count(hp["head_dim"])
        writer.add_rope_freq_base(hp["rope_theta"])
        writer.add_layer_norm_rms_eps(hp["rms_norm_eps"])
        if tokenizer == "byte":
            _put_byte_vocab(writer, hp)
        else:
            _put_bpe_vocab(writer, hp, tokenizer, bpe_pre)
        _put_metadata(writer, metadata)
        # Tensor infos first, data one tensor at a time: memory stays at the caller's tensors
        # plus one converted tensor (a converted copy of every tensor would add up to 100%).
        qtypes = {name: gguf_quant.tensor_type(name, arr.shape, dtype,
                                               hp["tie_word_embeddings"])
                  for name, (arr, _) in out.items()}
        for name, (arr, _) in out.items():
            shape = gguf_quant.byte_shape(tuple(arr.shape), qtypes[name])
            writer.add_tensor_info(name, shape, np.dtype(np.uint8), gguf_quant.stored_nbytes(
                tuple(arr.shape), qtypes[name]), raw_dtype=qtypes[name])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, (arr, heads) in out.items():
            arr = np.asarray(arr, np.float32)
            if heads is not None:
                arr = permute_qk(arr, heads)
            writer.write_tensor_data(gguf_quant.encode(arr, qtypes[name]))
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_gguf(path: str) -> tuple[dict, dict, dict, list]:
    """A GGUF of arch llama (`write_gguf`'s or llama.cpp's) -> (LlamaConfig-like dict, {HF name:
    array (HF layout; f32 or f16 as stored, other types dequantised to f32)}, {ifp metadata key:
    value}, token strings).

    The config's floats (rope_theta, rms_norm_eps) are stored as f32: read back as the shortest
    decimal of that f32 (1e-6 stays 1e-6, a value with more digits than f32 holds does not).
    """
    reader = gguf.GGUFReader(path)
    kv = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    if kv.get("general.architecture") != ARCH:
        raise ConfigError(f"{path} is a GGUF of architecture {kv.get('general.architecture')!r}, "
                          f"not {ARCH!r}; read it with gguf.GGUFReader")
    k = lambda key: kv.get(key.format(arch=ARCH))  # noqa: E731
    _check_plain_rope(path, kv, k)
    stored = {t.name: gguf_quant.decode(t, path) for t in reader.tensors}
    embed = stored.get("token_embd.weight")
    heads, hidden = k(gguf.Keys.Attention.HEAD_COUNT), k(gguf.Keys.LLM.EMBEDDING_LENGTH)
    # llama.cpp's converter writes key_length and vocab_size only when they differ from the
    # defaults it derives (n_embd / n_head, the token list's length).
    head_dim = k(gguf.Keys.Attention.KEY_LENGTH) or (hidden // heads if heads else None)
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
           "vocab_size": k(gguf.Keys.LLM.VOCAB_SIZE) or (
               None if embed is None else int(embed.shape[0])),
           "max_position_embeddings": k(gguf.Keys.LLM.CONTEXT_LENGTH),
           "hidden_size": k(gguf.Keys.LLM.EMBEDDING_LENGTH),
           "num_hidden_layers": k(gguf.Keys.LLM.BLOCK_COUNT),
           "intermediate_size": k(gguf.Keys.LLM.FEED_FORWARD_LENGTH),
           "num_attention_heads": k(gguf.Keys.Attention.HEAD_COUNT),
           "num_key_value_heads": k(gguf.Keys.Attention.HEAD_COUNT_KV) or heads,
           "head_dim": head_dim,
           "rope_theta": _f32_float(k(gguf.Keys.Rope.FREQ_BASE)),
           "rms_norm_eps": _f32_float(k(gguf.Keys.Attention.LAYERNORM_RMS_EPS)),
           "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
           "tie_word_embeddings": "output.weight" not in stored,
           "bos_token_id": kv.get(gguf.Keys.Tokenizer.BOS_ID),
           "eos_token_id": kv.get(gguf.Keys.Tokenizer.EOS_ID),
           "pad_token_id": kv.get(gguf.Keys.Tokenizer.PAD_ID)}
    if cfg["rope_theta"] is None:  # llama.cpp's default for arch llama
        cfg["rope_theta"] = 10000.0
    hf_names = [n for n in _expected_names(cfg["num_hidden_layers"] or 0)
                if not (cfg["tie_word_embeddings"] and n == "lm_head.weight")]
    by_gguf = {gguf_tensor_name(n): n for n in hf_names}
    extra = sorted(set(stored) - set(by_gguf))
    missing = [n for n in by_gguf if n not in stored]
    if extra or missing:
        what = (f"has tensor {extra[0]}, which a plain Llama has not" if extra else
                f"lacks tensor {missing[0]}")
        raise ConfigError(f"{path} {what} ({len(extra)} extra, {len(missing)} missing); only a "
                          f"plain llama.cpp Llama (arch llama, no rope scaling) can be read")
    tensors = {}
    for hf_name in hf_names:
        arr = stored[gguf_tensor_name(hf_name)]
        if hf_name.endswith("q_proj.weight"):
            arr = unpermute_qk(arr, cfg["num_attention_heads"])
        elif hf_name.endswith("k_proj.weight"):
            arr = unpermute_qk(arr, cfg["num_key_value_heads"])
        tensors[hf_name] = arr
    return cfg, tensors, _get_metadata(kv), list(kv.get(gguf.Keys.Tokenizer.LIST) or [])


def _check_plain_rope(path: str, kv: dict, k) -> None:
    """Refuses rope scaling and partial rope, which this Llama (and read_gguf) does not model."""
    scaling = k(gguf.Keys.Rope.SCALING_TYPE)
    if scaling not in (None, "none"):
        raise ConfigError(f"{path} uses rope scaling {scaling!r}; only plain rope is supported "
                          f"(import the HF checkpoint of a model without rope scaling)")
    dims, heads = k(gguf.Keys.Rope.DIMENSION_COUNT), k(gguf.Keys.Attention.HEAD_COUNT)
    head_dim = k(gguf.Keys.Attention.KEY_LENGTH) or (
        k(gguf.Keys.LLM.EMBEDDING_LENGTH) // heads if heads else None)
    if dims is not None and head_dim is not None and dims != head_dim:
        raise ConfigError(f"{path} rotates {dims} of {head_dim} head dimensions (partial rope); "
                          f"only full-head rope is supported")


def _f32_float(v: float | None) -> float | None:
    return None if v is None else float(str(np.float32(v)))


def _hparams(c: dict) -> dict:
    """The LlamaConfig fields llama.cpp needs, checked (transformers 4 and 5 spellings)."""
    missing = [f for f in ("vocab_size", "hidden_size", "num_hidden_layers",
                           "num_attention_heads", "intermediate_size", "rms_norm_eps",
                           "max_position_embeddings") if c.get(f) is None]
    if missing:
        raise ConfigError(f"the HF config lacks {', '.join(missing)}; pass a full LlamaConfig "
                          f"dict (config.to_dict())")
    rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"rope type {rope_type!r} is not supported by the GGUF export (only "
                          f"plain rope); export the HF format and convert it with llama.cpp")
    for flag in ("attention_bias", "mlp_bias"):
        if c.get(flag):
            raise ConfigError(f"{flag}=true is not supported by the GGUF export; export the HF "
                              f"format and convert it with llama.cpp")
    if c.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act {c['hidden_act']!r} is not Llama's 'silu'; llama.cpp's "
                          f"llama architecture computes SwiGLU")
    hp = {f: int(c[f]) for f in ("vocab_size", "hidden_size", "num_hidden_layers",
                                 "num_attention_heads", "intermediate_size",
                                 "max_position_embeddings")}
    hp["num_key_value_heads"] = int(c.get("num_key_value_heads") or hp["num_attention_heads"])
    hp["head_dim"] = int(c.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"])
    hp["rope_theta"] = float(c.get("rope_theta") or rope.get("rope_theta") or 10000.0)
    hp["rms_norm_eps"] = float(c["rms_norm_eps"])
    hp["tie_word_embeddings"] = bool(c.get("tie_word_embeddings", False))
    for f in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = c.get(f)
        if isinstance(v, list):  # transformers allows several EOS ids; llama.cpp takes one
            v = v[0] if v else None
        hp[f] = None if v is None else int(v)
    return hp


def _expected_names(n_layers: int) -> list[str]:
    layers = [f"model.layers.{i}.{part}.weight" for i in range(n_layers) for part in _LAYER]
    return ["model.embed_tokens.weight", *layers, "model.norm.weight", "lm_head.weight"]


def _gguf_tensors(hp: dict, tensors: dict) -> dict:
    """HF tensors -> {llama.cpp name: (HF array, heads to permute q/k rows by, else None)},
    names and shapes checked."""
    h, d, f, v = hp["hidden_size"], hp["head_dim"], hp["intermediate_size"], hp["vocab_size"]
    nq, nkv = hp["num_attention_heads"], hp["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,),
              "lm_head.weight": (v, h), "input_layernorm": (h,), "self_attn.q_proj": (nq * d, h),
              "self_attn.k_proj": (nkv * d, h), "self_attn.v_proj": (nkv * d, h),
              "self_attn.o_proj": (h, nq * d), "post_attention_layernorm": (h,),
              "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f)}
    # The rotary inverse frequencies some transformers versions keep in the state dict are a
    # function of the config (rope_theta, head_dim): llama.cpp recomputes them.
    given = {n: t for n, t in tensors.items() if not n.endswith("rotary_emb.inv_freq")}
    expected = _expected_names(hp["num_hidden_layers"])
    tied = hp["tie_word_embeddings"]
    if tied:
        expected.remove("lm_head.weight")
        if "lm_head.weight" in given:  # a torch state dict of a tied model lists it too
            embed = given.get("model.embed_tokens.weight")
            if embed is not None and not np.array_equal(given["lm_head.weight"], embed):
                raise ConfigError("lm_head.weight differs from model.embed_tokens.weight but "
                                  "tie_word_embeddings is true; set tie_word_embeddings=false")
            given.pop("lm_head.weight")
    missing = [n for n in expected if n not in given]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"tensor {missing[0]} is missing{more}; pass the full HF Llama state "
                          f"dict of a {hp['num_hidden_layers']}-layer model")
    unexpected = sorted(set(given) - set(expected))
    if unexpected:
        raise ConfigError(f"tensor {unexpected[0]} is not part of a plain HF Llama with "
                          f"{hp['num_hidden_layers']} layers; drop it or fix num_hidden_layers")
    out = {}
    for hf_name in expected:
        arr = given[hf_name]
        part = re.sub(r"^model\.layers\.\d+\.|\.weight$", "", hf_name)
        want = shapes.get(hf_name) or shapes[part]
        if tuple(arr.shape) != want:
            raise ConfigError(f"{hf_name} has shape {tuple(arr.shape)} but the HF config implies "
                              f"{want}; fix the config (e.g. intermediate_size after pruning)")
        heads = {"self_attn.q_proj": nq, "self_attn.k_proj": nkv}.get(part)
        out[gguf_tensor_name(hf_name)] = (arr, heads)
    return out


def byte_vocab_tokens(vocab_size: int = 259) -> tuple[list[str], list[int]]:
    """seqio ByteVocabulary as llama.cpp SPM ("llama") tokens and token types.

    llama.cpp's SPM tokenizer (llm_tokenizer_spm_session, llama-vocab.cpp) replaces every ' ' by
    U+2581 before splitting the text into UTF-8 characters, merges a pair of symbols only when
    their concatenation is a token (none is: no token here is two characters), and maps each
    symbol to the token of that exact text, else to the byte tokens "<0xNN>" (upper-case hex) of
    its bytes. So byte b -> "<0xNN>" (type BYTE, decoded back to the raw byte) at id b + 3, except
    the space byte, whose id 35 gets the text U+2581 (type NORMAL, decoded back to ' '): a space
    then still encodes to 35, and byte 0x20 itself is never looked up (no space survives the
    escape). Verified by reading llama.cpp's source (and, when llama-cpp-python is installed, by
    the slow test). Not reproducible: text that itself contains U+2581 (llama.cpp gives 35, seqio
    the 3 bytes of U+2581) or invalid UTF-8 around a space (a multi-byte lead swallows the
    escaped space's bytes).
    Ids past 259 (a padded embedding) are unused "[PAD<i>]" tokens, as llama.cpp's converter pads.
    """
    tokens = list(_BYTE_SPECIALS) + [_SPACE if b == 0x20 else f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.CONTROL, gguf.TokenType.CONTROL, gguf.TokenType.UNKNOWN] + [
        gguf.TokenType.NORMAL if b == 0x20 else gguf.TokenType.BYTE for b in range(256)]
    return _pad_vocab(tokens, [int(t) for t in types], vocab_size, "the byte vocabulary")


def _pad_vocab(tokens: list, types: list, vocab_size: int, what: str) -> tuple[list, list]:
    # llama.cpp sizes token_embd by the token list: it must have exactly vocab_size entries.
    if len(tokens) > vocab_size:
        raise ConfigError(f"{what} has {len(tokens)} tokens but the model's vocab_size is "
                          f"{vocab_size}; set vocab_size >= {len(tokens)}")
    n = len(tokens)
    return (tokens + [f"[PAD{i}]" for i in range(n, vocab_size)],
            types + [int(gguf.TokenType.UNUSED)] * (vocab_size - n))


def _put_byte_vocab(w: gguf.GGUFWriter, hp: dict) -> None:
    for f, want in (("eos_token_id", 1), ("pad_token_id", 0)):
        if hp[f] is not None and hp[f] != want:
            raise ConfigError(f"the HF config has {f}={hp[f]} but the byte vocabulary's is "
                              f"{want}; set {f}={want}")
    tokens, types = byte_vocab_tokens(hp["vocab_size"])
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))  # no merges happen: scores only order merges
    w.add_token_types(types)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)
    w.add_unk_token_id(2)
    if hp["bos_token_id"] is not None:  # seqio has no BOS; an id llama.cpp may show, never adds
        w.add_bos_token_id(hp["bos_token_id"])
    # seqio encodes text as is: no leading space, no BOS / EOS inserted by the tokenizer.
    w.add_add_space_prefix(False)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)


# tokenizer.json pre-tokenizers llama.cpp reproduces, by its "tokenizer.ggml.pre" name.
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
                 r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _bpe_pre(tok: dict) -> str | None:
    pre = tok.get("pre_tokenizer") or {}
    byte_level = lambda p, regex: (p.get("type") == "ByteLevel"  # noqa: E731
                                   and not p.get("add_prefix_space")
                                   and p.get("use_regex", True) == regex)
    if tok.get("normalizer"):
        return None
    if byte_level(pre, True):
        return "gpt-2"
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (len(steps) == 2 and steps[0].get("type") == "Split"
            and steps[0].get("pattern", {}).get("Regex") == _LLAMA3_REGEX
            and byte_level(steps[1], False)):
        return "llama-bpe"
    # SmolLM2 / StarCoder: each digit on its own, then GPT-2's split (llama.cpp's "smollm"
    # pre-tokenizer is exactly that: \p{N} first, then the GPT-2 regex).
    if (len(steps) == 2 and steps[0].get("type") == "Digits"
            and steps[0].get("individual_digits") and byte_level(steps[1], True)):
        return "smollm"
    return None


def _bos_to_add(path: str) -> int | None:
    """The id llama.cpp must put before a prompt so that it reads what transformers'
    tokenizer(prompt) gives (vocab/decoder_prefix.py): the post-processor's one special id, or
    None when it adds none."""
    from ifp_jax.vocab.decoder_prefix import decoder_prefix
    prefix = decoder_prefix(path)
    if len(prefix) > 1:
        raise ConfigError(f"{path}'s post-processor puts {len(prefix)} tokens {list(prefix)} "
                          f"before a prompt; llama.cpp adds one BOS: export --format hf orbax")
    return prefix[0] if prefix else None


def _put_chat_template(w: gguf.GGUFWriter, path: str) -> None:
    """tokenizer.chat_template, when the tokenizer has one (llama.cpp's chat formatting)."""
    from ifp_jax.errors import DataError
    from ifp_jax.vocab.chat_template import template_source
    try:
        w.add_chat_template(template_source(path))
    except DataError:  # no template: nothing to keep
        pass


def _put_bpe_vocab(w: gguf.GGUFWriter, hp: dict, path: str, bpe_pre: str | None) -> None:
    if not os.path.isfile(path):
        raise ConfigError(f"tokenizer {path!r} is neither 'byte' nor an existing tokenizer.json")
    with open(path, encoding="utf-8") as f:
        tok = json.load(f)
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise ConfigError(f"{path} has a {model.get('type')} model; the GGUF export supports "
                          f"BPE tokenizer.json files (and 'byte') only")
    pre = bpe_pre or _bpe_pre(tok)
    if pre is None:
        raise ConfigError(f"{path}'s pre-tokenizer is not the GPT-2 or Llama-3 one; pass "
                          f"bpe_pre=<llama.cpp tokenizer.ggml.pre name> if llama.cpp knows it")
    # As llama.cpp's converter: added special tokens are CONTROL, other added USER_DEFINED, the
    # rest NORMAL; ids without a token are UNUSED "[PAD<i>]".
    by_id = {i: (t, int(gguf.TokenType.NORMAL)) for t, i in model["vocab"].items()}
    for a in tok.get("added_tokens", []):
        by_id[a["id"]] = (a["content"], int(gguf.TokenType.CONTROL if a.get("special")
                                           else gguf.TokenType.USER_DEFINED))
    if max(by_id) >= hp["vocab_size"]:
        raise ConfigError(f"{path} has token id {max(by_id)} but the model's vocab_size is "
                          f"{hp['vocab_size']}; set vocab_size > {max(by_id)}")
    tokens = [by_id.get(i, (f"[PAD{i}]", int(gguf.TokenType.UNUSED)))
              for i in range(hp["vocab_size"])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list([t for t, _ in tokens])
    w.add_token_types([t for _, t in tokens])
    if merges:
        w.add_token_merges(merges)
    added_bos = _bos_to_add(path)
    ids = dict(hp, bos_token_id=added_bos if added_bos is not None else hp["bos_token_id"])
    for f, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                   ("pad_token_id", w.add_pad_token_id)):
        if ids[f] is not None:
            add(ids[f])
    w.add_add_bos_token(added_bos is not None)
    _put_chat_template(w, path)
    w.add_add_eos_token(False)


def _put_metadata(w: gguf.GGUFWriter, metadata: dict) -> None:
    """Each value as its GGUF type; a list of int lists as the flat ints under "ifp.<key>" plus
    their lengths under "ifp.<key>.row_lengths" (llama.cpp refuses arrays of arrays)."""
    T = gguf.GGUFValueType
    for key, value in metadata.items():
        if not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", key) or key.endswith(_ROWS):
            raise ConfigError(f"metadata key {key!r} is not a dotted name of letters, digits "
                              f"and '_' (not ending in {_ROWS}); rename it")
        full = f"ifp.{key}"
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, (list, tuple)) and value and all(
                isinstance(r, (list, tuple, np.ndarray)) for r in value):
            rows = [list(np.asarray(r).tolist()) for r in value]
            _put_list(w, full, [x for r in rows for x in r], key)
            w.add_key_value(full + _ROWS, [len(r) for r in rows], T.ARRAY, T.INT64)
        elif isinstance(value, (list, tuple)):
            _put_list(w, full, list(value), key)
        else:
            vtype = _scalar_type(value)
            if vtype is None:
                raise ConfigError(f"metadata {key!r} is a {type(value).__name__}; give a str, "
                                  f"bool, int, float or a list of them (or of int lists)")
            w.add_key_value(full, _plain(value), vtype)


def _scalar_type(v) -> gguf.GGUFValueType | None:
    T = gguf.GGUFValueType
    if isinstance(v, (bool, np.bool_)):
        return T.BOOL
    if isinstance(v, (int, np.integer)):
        return T.INT64
    if isinstance(v, (float, np.floating)):
        return T.FLOAT64
    return T.STRING if isinstance(v, str) else None


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _put_list(w: gguf.GGUFWriter, full: str, items: list, key: str) -> None:
    # The gguf writer refuses empty arrays, and a mixed array has no GGUF type.
    types = {_scalar_type(x) for x in items}
    if not items or len(types) != 1 or None in types:
        raise ConfigError(f"metadata {key!r} is an empty or mixed-type list; GGUF arrays hold "
                          f"one type and at least one item: drop the key or fix its value")
    w.add_key_value(full, [_plain(x) for x in items], gguf.GGUFValueType.ARRAY, types.pop())


def _get_metadata(kv: dict) -> dict:
    meta = {k[len("ifp."):]: v for k, v in kv.items() if k.startswith("ifp.")}
    for key in [k for k in meta if k.endswith(_ROWS)]:
        lengths, flat = meta.pop(key), meta[key[:-len(_ROWS)]]
        ends = np.cumsum([0, *lengths])
        meta[key[:-len(_ROWS)]] = [flat[a:b] for a, b in zip(ends[:-1], ends[1:])]
    return meta
