"""A llama.cpp GGUF (arch llama) as the pieces of a Hugging Face checkpoint directory, for
`ifp import-hf MODEL.gguf`: config.json dict, HF tensors (f32) and tokenizer files.

Tensors are dequantised by the gguf package (gguf_file/gguf_quant.decode), renamed to HF and their
q/k rows un-permuted (gguf_file/gguf_writer.read_gguf). The tokenizer is rebuilt from the
tokenizer.ggml.* keys (hf/gguf_tokenizer.py); a GGUF the project wrote with the byte vocabulary
(tokenizer model "llama" with exactly our byte tokens) imports as the "byte" vocabulary.
"""

from __future__ import annotations

import gguf
import numpy as np

from ifp_jax.config import ConfigError


def is_gguf(src: str) -> bool:
    return str(src).lower().endswith(".gguf")


def read_gguf_checkpoint(path: str) -> tuple[dict, dict[str, np.ndarray], dict | None]:
    """A local .gguf -> (LlamaConfig dict, {HF name: f32 array}, {file name: contents} of its HF
    tokenizer, or None for the byte vocabulary)."""
    from ifp_jax.gguf_file.gguf_writer import ARCH, byte_vocab_tokens, read_gguf
    from ifp_jax.hf.gguf_tokenizer import hf_tokenizer_files
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise ConfigError(f"{path} is not a readable GGUF file ({e}); pass a llama.cpp .gguf "
                          f"or a Hugging Face model directory") from None
    kv = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    arch = kv.get(gguf.Keys.General.ARCHITECTURE)
    if arch != ARCH:
        raise ConfigError(f"{path} is a GGUF of architecture {arch!r}; only {ARCH!r} (Llama) "
                          f"can be imported: convert a Llama-architecture model")
    del reader
    hf_config, tensors, _, tokens = read_gguf(path)
    tensors = {name: np.asarray(a, np.float32) for name, a in tensors.items()}
    hf_config["torch_dtype"] = "float32"
    n_byte = len(byte_vocab_tokens()[0])
    if kv.get(gguf.Keys.Tokenizer.MODEL) == "llama" and tokens[:n_byte] == \
            byte_vocab_tokens(n_byte)[0]:
        return hf_config, tensors, None
    files = hf_tokenizer_files(kv, path, int(hf_config["max_position_embeddings"]))
    return hf_config, tensors, files
