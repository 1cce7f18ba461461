"""Tokenizer files for a Hugging Face export, whose ids equal the run's seqio vocabulary.

  'byte'            seqio.ByteVocabulary (pad 0, eos 1, unk 2, byte b -> b + 3) is exactly
                    transformers' ByT5Tokenizer with extra_ids=0: only a tokenizer_config.json.
  tokenizer.json    (an imported HF tokenizer) copied with the config files beside it (its
                    chat template included).
generation_config.json carries the vocabulary's bos/eos/pad ids (`write_generation_config`).
  *.model           a SentencePiece model, copied as tokenizer.model for LlamaTokenizer with
                    BOS/EOS insertion off (seqio adds neither to the prompt).
"""

from __future__ import annotations

import json
import os
import shutil

_BESIDE_TOKENIZER_JSON = ("tokenizer_config.json", "special_tokens_map.json",
                          "chat_template.jinja")


def write_hf_tokenizer(out_dir: str, vocabulary: str, model_max_length: int) -> None:
    """Writes the tokenizer files of `vocabulary` (a get_vocabulary spec) into `out_dir`."""
    if vocabulary == "byte":
        config = {"tokenizer_class": "ByT5Tokenizer", "extra_ids": 0, "pad_token": "<pad>",
                  "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": model_max_length}
    elif vocabulary.endswith(".model"):
        shutil.copyfile(vocabulary, os.path.join(out_dir, "tokenizer.model"))
        config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": False,
                  "add_eos_token": False, "model_max_length": model_max_length}
    else:
        src = vocabulary if vocabulary.endswith(".json") else os.path.join(vocabulary,
                                                                           "tokenizer.json")
        shutil.copyfile(src, os.path.join(out_dir, "tokenizer.json"))
        copied = False
        for name in _BESIDE_TOKENIZER_JSON:
            beside = os.path.join(os.path.dirname(src), name)
            if os.path.isfile(beside):
                shutil.copyfile(beside, os.path.join(out_dir, name))
                copied = copied or name == "tokenizer_config.json"
        if copied:
            return
        config = {"tokenizer_class": "PreTrainedTokenizerFast",
                  "model_max_length": model_max_length}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def special_ids(vocabulary: str) -> dict[str, int | None]:
    """{'bos_token_id', 'eos_token_id', 'pad_token_id'} of `vocabulary` as transformers names
    them: the tokenizer's own (pad 0, the pipeline's padding, when it names none); 'byte' and
    SentencePiece have no BOS (seqio adds none)."""
    from ifp_jax.vocab.light import get_light_vocabulary
    vocab = get_light_vocabulary(vocabulary)
    if vocab.kind != "hf":
        return {"bos_token_id": None, "eos_token_id": vocab.eos_id, "pad_token_id": 0}
    from ifp_jax.vocab.tokenizer_json import HFTokenizerFile, special_token_names
    file = HFTokenizerFile(vocabulary)
    names = special_token_names(os.path.dirname(file.path))
    pad = file.tokenizer.token_to_id(names["pad_token"]) if "pad_token" in names else None
    return {"bos_token_id": file.bos_id, "eos_token_id": file.eos_id,
            "pad_token_id": 0 if pad is None else pad}


def write_generation_config(out_dir: str, vocabulary: str,
                            source: dict | None = None) -> dict:
    """generation_config.json (what transformers' `generate` starts from): `source`'s settings
    (a pretrained model's own sampling defaults, if any) with the ids of `vocabulary`."""
    config = {**(source or {}), **special_ids(vocabulary)}
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return config
