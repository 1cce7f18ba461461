"""An offline stand-in for a pretrained Hugging Face Llama: random weights + a BPE tokenizer.

    python -m ifp_jax.experiments.random_hf_llama --out DIR [--d-model 128 --layers 4 ...]

writes DIR/config.json + model.safetensors (LlamaForCausalLM layout, written by ifp_jax's own HF
writer, so no torch is needed) and DIR/tokenizer.json (+ tokenizer_config.json): a byte-level
BPE trained with `tokenizers` on the embedded skill prompts and Python-stdlib text, with <pad>=0,
</s>=1, <unk>=2 (id 0 is padding in the ifp_jax pipeline). It exists so the README's
import -> train -> export -> generate example runs on a fresh machine with no model hub.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

SPECIALS = ["<pad>", "</s>", "<unk>"]


def training_text(max_bytes: int = 400_000) -> list[str]:
    """Skill prompts/responses + stdlib text (the data the README example trains on)."""
    from ifp_jax.data import skills
    from ifp_jax.data.tasks import stdlib_texts
    lines = []
    for name in skills.SKILLS:
        lines += [e["prompt"] + " " + e["response"] for e in skills.generate(name, "train", 300)]
    return lines + list(stdlib_texts("train", max_bytes=max_bytes))


def train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    return tok


def random_params(cfg, seed: int = 0) -> dict:
    """Our decoder params tree of `cfg`, numpy f32: N(0, 0.02) weights (like the model's own
    init), unit norm scales. NumPy only: no JAX (nor its TPU probing) for a file generator."""
    from ifp_jax.hf.weights import param_shapes
    rng = np.random.default_rng(seed)

    def fill(tree, name=""):
        if isinstance(tree, dict):
            return {k: fill(v, k) for k, v in tree.items()}
        if name == "scale":
            return np.ones(tree, np.float32)
        return (0.02 * rng.standard_normal(tree)).astype(np.float32)

    return fill(param_shapes(cfg))


def random_llama(out: str, *, d_model: int, layers: int, heads: int, kv_heads: int,
                 d_ffn: int, vocab_size: int, seed: int = 0) -> None:
    from ifp_jax.config import ModelConfig
    from ifp_jax.hf import weights
    cfg = ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layers=layers, n_heads=heads,
                      n_kv_heads=kv_heads, head_dim=d_model // heads, d_ffn=d_ffn, max_len=512)
    hf_config = weights.hf_config_from_model_config(cfg, bos_token_id=None, eos_token_id=1,
                                                    pad_token_id=0)
    weights.write_hf_checkpoint(out, hf_config, weights.hf_from_params(random_params(cfg, seed),
                                                                       cfg))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--d-ffn", type=int, default=512)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if os.path.exists(a.out):
        raise SystemExit(f"random_hf_llama: error: {a.out} exists; choose another --out")
    os.makedirs(a.out)
    tok = train_tokenizer(a.vocab_size)
    tok.save(os.path.join(a.out, "tokenizer.json"))
    with open(os.path.join(a.out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>",
                   "eos_token": "</s>", "unk_token": "<unk>"}, f, indent=2)
    random_llama(a.out, d_model=a.d_model, layers=a.layers, heads=a.heads, kv_heads=a.kv_heads,
                 d_ffn=a.d_ffn, vocab_size=a.vocab_size, seed=a.seed)
    print(f"random Llama (d {a.d_model}, {a.layers} layers, FFN {a.d_ffn}, vocab "
          f"{a.vocab_size}) + BPE tokenizer ({tok.get_vocab_size()} tokens) -> {a.out}")


if __name__ == "__main__":
    main()
