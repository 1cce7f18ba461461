"""Tiny random Hugging Face Llama checkpoints (+ tokenizer.json), built offline, for the
import/export parity tests. transformers and torch are the independent reference."""

from __future__ import annotations

import json
import os

# Sentences the fixture tokenizer is trained on (the skills' words, so the pipeline's text
# encodes to multi-character tokens as well as single bytes).
CORPUS = [
    "reverse the letters of abc to get cba",
    "sort these letters: dcba becomes abcd",
    "add the numbers 12 and 30 to get 42",
    "are the brackets ([]) balanced? yes",
    "recall the value of key k in a=1 b=2 k=3",
    "upper case: hello world becomes HELLO WORLD",
    "rotate the word pruning by one letter",
    "instruction following pruning of large language models",
] * 4
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3: id 0 is padding, as the pipeline wants


def make_tokenizer(directory: str, vocab_size: int) -> str:
    """Trains a byte-level BPE tokenizer (ids < vocab_size; 4 specials + 256 bytes + merges)
    on CORPUS and writes tokenizer.json + tokenizer_config.json; returns the json's path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "tokenizer.json")
    tok.save(path)
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "pad_token": "<pad>"}, f)
    return path


def make_random_llama(directory: str, *, vocab: int = 320, hidden: int = 32, layers: int = 2,
                      heads: int = 4, kv_heads: int = 2, head_dim: int | None = None,
                      intermediate: int | None = None, tie: bool = False,
                      rope_theta: float = 10000.0, max_position_embeddings: int = 128,
                      dtype: str = "float32", seed: int = 0, tokenizer: bool = True,
                      max_shard_size: str | None = None):
    """Saves a random LlamaForCausalLM (safetensors, `dtype` on disk) and, with `tokenizer`, a
    tokenizer.json of at most `vocab` ids into `directory`; returns the model (float32).

    Weights are drawn with std 0.2 and norm scales in [0.5, 1.5], so logits are O(1) and a
    wrong transpose, norm or RoPE convention shows far above the parity tolerance.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim or hidden // heads, rope_theta=rope_theta,
        max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-5,
        tie_word_embeddings=tie, hidden_act="silu", attention_bias=False, mlp_bias=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.2)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.2)
    model.eval()
    save_dtype = getattr(torch, dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(save_dtype).save_pretrained(directory, safe_serialization=True, **kwargs)
    if save_dtype != torch.float32:
        # The reference is what transformers makes of the file: bf16 weights widened to f32,
        # RoPE frequencies recomputed in f32 (casting this model back would keep them rounded).
        import transformers
        key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        model = LlamaForCausalLM.from_pretrained(directory, **{key: torch.float32})
        model.eval()
    if tokenizer:
        make_tokenizer(directory, vocab)
    return model


def hf_logits(model, tokens):
    """transformers' logits [B, T, V] (float32 numpy) for int tokens [B, T]."""
    import numpy as np
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(np.asarray(tokens), dtype=torch.long))
    return out.logits.float().numpy()
