"""GGUF tensor types: which type each tensor is written in, and turning stored tensors back into
floats (gguf.quants does the block arithmetic both ways).

Per-tensor choice, as llama.cpp's tools make it:
  * 1-D tensors (the RMSNorm weights) stay F32 in every file type (convert_hf_to_gguf.py,
    ModelBase.prepare_tensors: `n_dims <= 1 or new_name.endswith("_norm.weight")` -> F32);
  * f32 / f16 / q8_0: every other tensor in that type (the converter's --outtype);
  * q4_0 (llama-quantize's Q4_0; the converter has no Q4_0): every other tensor Q4_0, except the
    output projection (output.weight, or token_embd.weight when the embeddings are tied), which
    llama-quantize keeps at more bits (Q6_K, or Q8_0 when its rows are not whole 256-blocks);
    gguf.quants cannot write Q6_K, so it is Q8_0 here;
  * a tensor whose rows are not whole blocks (32 values for Q8_0 / Q4_0) is F16, as the converter
    falls back when gguf.quants.quantize raises QuantError.
"""

from __future__ import annotations

import gguf
import numpy as np

from ifp_jax.config import ConfigError
from ifp_jax.gguf_file.gguf_types import DEFAULT_GGUF_TYPE, GGUF_TYPES  # noqa: F401

Q = gguf.GGMLQuantizationType
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
_MAIN = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}
_OUTPUT = {"q4_0": Q.Q8_0}  # the output projection's type where it differs from the main one


def check_gguf_type(gguf_type: str) -> None:
    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"GGUF type {gguf_type!r} is not supported; use one of "
                          f"{', '.join(GGUF_TYPES)}")


def tensor_type(gguf_name: str, shape: tuple, gguf_type: str, tied: bool) -> Q:
    """The GGML type `gguf_name` (llama.cpp name, numpy shape [rows, cols]) is written in."""
    check_gguf_type(gguf_type)
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight"):
        return Q.F32
    is_output = gguf_name == "output.weight" or (tied and gguf_name == "token_embd.weight")
    qtype = _OUTPUT.get(gguf_type, _MAIN[gguf_type]) if is_output else _MAIN[gguf_type]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if shape[-1] % block == 0 else Q.F16


def encode(arr: np.ndarray, qtype: Q) -> np.ndarray:
    """f32 [rows, cols] -> what the file stores: f32 / f16 arrays, or uint8 [rows, bytes]."""
    if qtype == Q.F32:
        return np.ascontiguousarray(arr, np.float32)
    if qtype == Q.F16:
        return np.ascontiguousarray(arr, np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(arr, np.float32), qtype)


def stored_nbytes(shape: tuple, qtype: Q) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape[:-1], dtype=np.int64)) * shape[-1] // block * size


def byte_shape(shape: tuple, qtype: Q) -> tuple:
    """The shape of a tensor of `shape` stored as `qtype`, viewed as bytes (the last axis)."""
    return tuple(gguf.quants.quant_shape_to_byte_shape(shape, qtype))


def decode(tensor: gguf.ReaderTensor, path: str) -> np.ndarray:
    """A tensor of a GGUFReader -> numpy, numpy shape: F32 / F16 as stored, every other type
    gguf.quants can dequantise (Q4_0, Q4_1, Q8_0, BF16, K-quants, ...) as f32."""
    if tensor.tensor_type in (Q.F32, Q.F16):
        return np.array(tensor.data)
    try:
        return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float32)
    except NotImplementedError:
        raise ConfigError(
            f"{path}: tensor {tensor.name} is {tensor.tensor_type.name}, which the gguf package "
            f"cannot dequantise; re-quantise the file with llama-quantize to Q8_0, Q4_0 or a "
            f"K-quant (or convert the original model to f16)") from None
