"""A GGUF's tokenizer metadata (tokenizer.ggml.*) -> the Hugging Face tokenizer files an HF
checkpoint directory would hold: tokenizer.json, tokenizer_config.json, special_tokens_map.json.

Only llama.cpp's "gpt2" model (byte-level BPE: token strings in GPT-2's byte alphabet + merges)
is rebuilt; the pre-tokenizer comes from "tokenizer.ggml.pre", spelled as llama.cpp splits text
for that name (llama-vocab.cpp, llm_tokenizer_bpe):
    gpt-2                      the GPT-2 regex                     -> ByteLevel(use_regex=True)
    smollm, starcoder, refact,  "\\p{N}" first, then the GPT-2 one -> Digits(individual) +
    codeshell                                                          ByteLevel(use_regex=True)
    llama-bpe (Llama 3)        the Llama-3 regex, ignore_merges    -> Split(regex) +
                                                                       ByteLevel(use_regex=False)
Token types: CONTROL -> special added token, USER_DEFINED -> added token (llama.cpp matches both
whole in text), as llama.cpp's converter derived them from tokenizer.json.
"""

from __future__ import annotations

import gguf

from ifp_jax.config import ConfigError

_TOK = gguf.Keys.Tokenizer
# Llama 3's split regex, exactly as in its tokenizer.json and llama.cpp (LLAMA_VOCAB_PRE_TYPE_LLAMA3)
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
                r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "codeshell")
PRE_TOKENIZERS = ("gpt-2", *_DIGITS_THEN_GPT2, "llama-bpe")


def _pre_tokenizer(pre: str):
    from tokenizers import Regex, pre_tokenizers as pt
    if pre == "gpt-2":
        return pt.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGITS_THEN_GPT2:
        return pt.Sequence([pt.Digits(individual_digits=True),
                            pt.ByteLevel(add_prefix_space=False, use_regex=True)])
    return pt.Sequence([pt.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
                        pt.ByteLevel(add_prefix_space=False, use_regex=False)])


def hf_tokenizer_files(kv: dict, path: str, max_len: int) -> dict[str, dict | str]:
    """GGUF metadata {key: value} (GGUFReader field contents) -> {file name: JSON-able dict or
    tokenizer.json text} of the HF tokenizer it describes."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    model, pre = kv.get(_TOK.MODEL), kv.get(_TOK.PRE) or "default"
    if model != "gpt2":
        raise ConfigError(f"{path} has a {model!r} tokenizer; the GGUF import rebuilds byte-level "
                          f"BPE ('gpt2') tokenizers only: convert the model with transformers "
                          f"(from_pretrained(..., gguf_file=...).save_pretrained(DIR)) and import DIR")
    if pre not in PRE_TOKENIZERS:
        raise ConfigError(f"{path} has BPE pre-tokenizer {pre!r}, which the GGUF import does not "
                          f"reproduce (it knows {', '.join(PRE_TOKENIZERS)}); import the model's "
                          f"HF checkpoint directory instead")
    tokens, merges = list(kv[_TOK.LIST]), list(kv.get(_TOK.MERGES) or [])
    types = list(kv.get(_TOK.TOKEN_TYPE) or [int(gguf.TokenType.NORMAL)] * len(tokens))
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                     merges=[tuple(m.split(" ", 1)) for m in merges],
                     ignore_merges=pre == "llama-bpe", fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = _pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    # Ids stay the GGUF's: every added token is already in the vocab.
    for kind, add in ((gguf.TokenType.CONTROL, tok.add_special_tokens),
                      (gguf.TokenType.USER_DEFINED, tok.add_tokens)):
        add([AddedToken(t, special=kind == gguf.TokenType.CONTROL, normalized=False)
             for t, ty in zip(tokens, types) if ty == kind])

    ids = {name: kv.get(key) for name, key in (("bos", _TOK.BOS_ID), ("eos", _TOK.EOS_ID),
                                               ("pad", _TOK.PAD_ID), ("unk", _TOK.UNK_ID))}
    text = {name: tokens[i] if i is not None and 0 <= i < len(tokens) else None
            for name, i in ids.items()}
    add_bos = bool(kv.get(_TOK.ADD_BOS)) and text["bos"] is not None
    if add_bos:  # what llama.cpp does with add_bos_token: the BOS id before every text
        tok.post_processor = processors.TemplateProcessing(
            single=f"{text['bos']}:0 $A:0", pair=f"{text['bos']}:0 $A:0 {text['bos']}:1 $B:1",
            special_tokens=[(text["bos"], ids["bos"])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = {f"{name}_token": t for name, t in text.items() if t is not None}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
              "add_bos_token": add_bos, "add_eos_token": bool(kv.get(_TOK.ADD_EOS)),
              "clean_up_tokenization_spaces": False, **specials}
    if kv.get(_TOK.CHAT_TEMPLATE):
        config["chat_template"] = kv[_TOK.CHAT_TEMPLATE]
    return {"tokenizer.json": tok.to_str(pretty=True), "tokenizer_config.json": config,
            "special_tokens_map.json": specials}
