"""Hugging Face Llama <-> our decoder: config fields and tensors, both directions.

Our parameter names follow HF Llama (layers.py), so each tensor is a transpose + reshape:
    HF  *_proj.weight [out, in]    ours  kernel [in, *out]  (q: [D, H, hd], o: [H, hd, D], ...)
    HF  embed_tokens.weight [V, D] ours  embedding [Vpad, D]  (zero rows up to padded_vocab_size)
    HF  lm_head.weight [V, D]      ours  lm_head.kernel [D, Vpad]  (absent when tied)
    HF  *norm.weight [D]           ours  scale [D]
RoPE needs no permutation: HF Llama and layers.apply_rope both use rotate_half (first half /
second half pairs); the parity tests check this against transformers.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Mapping

import ml_dtypes  # noqa: F401  registers bfloat16 with numpy, so safetensors' numpy API reads bf16
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from ifp_jax.config import ConfigError, ModelConfig

# ModelConfig fields that describe the pretrained network (the rest are training choices).
ARCH_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ffn",
               "rope_theta", "norm_eps", "tie_embeddings", "max_len")
CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
_WHY_NOT = {  # model types close to Llama that this decoder cannot represent exactly
    "qwen2": "Qwen2 has q/k/v projection biases, which this decoder does not have",
    "gemma": "Gemma uses GeGLU, (1 + w) norms and scaled embeddings",
    "phi3": "Phi-3 fuses qkv and gate/up projections",
}


# ----------------------------------------------------------------------------- config

def _rope_theta(hf: dict) -> float:
    """rope_theta, refusing any RoPE scaling (transformers 5 keeps both in `rope_parameters`,
    4.x has top-level `rope_theta` + `rope_scaling`)."""
    theta = hf.get("rope_theta")
    for key in ("rope_parameters", "rope_scaling"):
        rope = hf.get(key) or {}
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in (None, "default"):
            raise ConfigError(f"config.json {key} type '{kind}' is not supported: only unscaled "
                              f"RoPE (rope_type 'default') can be imported")
        theta = rope.get("rope_theta", theta)
    return float(10000.0 if theta is None else theta)


def _check_supported(hf: dict) -> None:
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if model_type in _WHY_NOT:
        raise ConfigError(f"config.json model_type '{model_type}' is not supported: "
                          f"{_WHY_NOT[model_type]}")
    if model_type not in _ARCHITECTURES or any(a != _ARCHITECTURES[model_type] for a in archs):
        raise ConfigError(f"config.json model_type '{model_type}' (architectures {archs}) is not "
                          f"supported: only Llama-family causal LMs (LlamaForCausalLM, or "
                          f"MistralForCausalLM without sliding_window) can be imported")
    if model_type == "mistral" and hf.get("sliding_window") is not None:
        raise ConfigError(f"config.json sliding_window={hf['sliding_window']} is not supported "
                          f"(this decoder attends to the whole prefix); only a Mistral with "
                          f"sliding_window null is a Llama")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ConfigError(f"config.json {key}=true is not supported: this decoder's "
                              f"projections have no bias")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"config.json hidden_act '{act}' is not supported: the FFN is SwiGLU "
                          f"(hidden_act 'silu')")


def model_config_from_hf(hf_config: dict, **keep) -> ModelConfig:
    """A LlamaConfig dict (config.json) -> ModelConfig; `keep` sets training-only fields
    (vocab_pad_multiple, remat_policy, scan_layers, attention). Defaults are LlamaConfig's."""
    bad = sorted(set(keep) & set(ARCH_FIELDS))
    if bad:
        raise ConfigError(f"model_config_from_hf: {bad[0]} comes from config.json, not **keep")
    _check_supported(hf_config)
    hf = hf_config
    heads = int(hf.get("num_attention_heads", 32))
    hidden = int(hf.get("hidden_size", 4096))
    head_dim = hf.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ConfigError(f"config.json hidden_size={hidden} is not a multiple of "
                              f"num_attention_heads={heads} and head_dim is not set")
        head_dim = hidden // heads
    return ModelConfig(
        vocab_size=int(hf.get("vocab_size", 32000)),
        d_model=hidden,
        n_layers=int(hf.get("num_hidden_layers", 32)),
        n_heads=heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        d_ffn=int(hf.get("intermediate_size", 11008)),
        rope_theta=_rope_theta(hf),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_len=int(hf.get("max_position_embeddings", 2048)),
        **keep)


def hf_config_from_model_config(cfg: ModelConfig, *, bos_token_id: int | None,
                                eos_token_id: int | None, pad_token_id: int | None,
                                torch_dtype: str = "float32") -> dict:
    """ModelConfig -> a LlamaConfig dict that transformers 4.x and 5.x load as the same model
    (rope_theta both top-level (4.x) and in rope_parameters (5.x))."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ffn,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": torch_dtype,
        "use_cache": True,
    }


# ----------------------------------------------------------------------------- tensors

@dataclasses.dataclass(frozen=True)
class _Tensor:
    hf_name: str
    path: tuple[str, ...]  # inside our decoder tree (under 'layers_<i>' for a layer tensor)
    hf_shape: tuple[int, ...]
    kind: str  # 'linear' (kernel = W^T reshaped), 'norm', 'embed' or 'lm_head'


def _layer_tensors(c: ModelConfig) -> list[_Tensor]:
    """Tensors of one layer; their hf_name has '{i}' for the layer index."""
    d, h, kv, hd, f = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ffn
    lin = lambda name, sub, shape: _Tensor(f"model.layers.{{i}}.{name}.weight",
                                           (*sub, "kernel"), shape, "linear")
    return [
        lin("self_attn.q_proj", ("self_attn", "q_proj"), (h * hd, d)),
        lin("self_attn.k_proj", ("self_attn", "k_proj"), (kv * hd, d)),
        lin("self_attn.v_proj", ("self_attn", "v_proj"), (kv * hd, d)),
        lin("self_attn.o_proj", ("self_attn", "o_proj"), (d, h * hd)),
        lin("mlp.gate_proj", ("mlp", "gate_proj"), (f, d)),
        lin("mlp.up_proj", ("mlp", "up_proj"), (f, d)),
        lin("mlp.down_proj", ("mlp", "down_proj"), (d, f)),
        _Tensor("model.layers.{i}.input_layernorm.weight", ("input_layernorm", "scale"), (d,),
                "norm"),
        _Tensor("model.layers.{i}.post_attention_layernorm.weight",
                ("post_attention_layernorm", "scale"), (d,), "norm"),
    ]


def _our_shape(t: _Tensor, c: ModelConfig) -> tuple[int, ...]:
    d, h, kv, hd = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim
    if t.kind == "embed":
        return (c.padded_vocab_size, d)
    if t.kind == "lm_head":
        return (d, c.padded_vocab_size)
    if t.kind == "norm":
        return t.hf_shape
    proj = t.path[-2]
    return {"q_proj": (d, h, hd), "k_proj": (d, kv, hd), "v_proj": (d, kv, hd),
            "o_proj": (h, hd, d)}.get(proj, t.hf_shape[::-1])


def _global_tensors(c: ModelConfig) -> list[_Tensor]:
    out = [_Tensor("model.embed_tokens.weight", ("embed_tokens", "embedding"),
                   (c.vocab_size, c.d_model), "embed"),
           _Tensor("model.norm.weight", ("norm", "scale"), (c.d_model,), "norm")]
    if not c.tie_embeddings:
        out.append(_Tensor("lm_head.weight", ("lm_head", "kernel"), (c.vocab_size, c.d_model),
                           "lm_head"))
    return out


def _all_tensors(c: ModelConfig) -> list[tuple[_Tensor, int | None]]:
    """(tensor, layer index or None) for every HF tensor of `c`, in HF file order."""
    out = [(t, None) for t in _global_tensors(c)[:1]]
    out += [(t, i) for i in range(c.n_layers) for t in _layer_tensors(c)]
    return out + [(t, None) for t in _global_tensors(c)[1:]]


def _hf_name(t: _Tensor, i: int | None) -> str:
    return t.hf_name.format(i=i) if i is not None else t.hf_name


def _ignored(name: str, c: ModelConfig) -> bool:
    # RoPE frequency buffers (old checkpoints) are recomputed; a tied lm_head is the embedding
    # (transformers ignores the stored copy too).
    return name.endswith("rotary_emb.inv_freq") or (c.tie_embeddings and name == "lm_head.weight")


def _names_list(names: list[str]) -> str:
    head = ", ".join(names[:3])
    return head + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


def _to_ours(t: _Tensor, w: np.ndarray, c: ModelConfig) -> np.ndarray:
    w = np.asarray(w, np.float32)
    if t.kind == "norm":
        return w
    if t.kind == "linear":
        return np.ascontiguousarray(w.T.reshape(_our_shape(t, c)))
    pad = c.padded_vocab_size - c.vocab_size
    padded = np.concatenate([w, np.zeros((pad, c.d_model), np.float32)])  # [Vpad, D]
    return padded if t.kind == "embed" else np.ascontiguousarray(padded.T)


def _to_hf(t: _Tensor, x, c: ModelConfig) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if t.kind == "norm":
        return x
    if t.kind == "linear":
        return np.ascontiguousarray(x.reshape(t.hf_shape[::-1]).T)
    rows = x if t.kind == "embed" else x.T  # [Vpad, D]
    return np.ascontiguousarray(rows[:c.vocab_size])


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def params_from_hf(tensors: Mapping[str, np.ndarray], cfg: ModelConfig) -> dict:
    """HF tensor dict -> our decoder params tree (numpy f32), stacked under 'layers' when
    cfg.scan_layers (leading axis L) else 'layers_0', 'layers_1', ..."""
    expected = {_hf_name(t, i): (t, i) for t, i in _all_tensors(cfg)}
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise ConfigError(f"checkpoint lacks {len(missing)} tensor(s) the config needs: "
                          f"{_names_list(missing)}")
    extra = sorted(n for n in tensors if n not in expected and not _ignored(n, cfg))
    if extra:
        raise ConfigError(f"checkpoint has {len(extra)} tensor(s) a Llama of this config does not "
                          f"have: {_names_list(extra)}")
    tree: dict = {}
    for name, (t, i) in expected.items():
        w = tensors[name]
        if tuple(w.shape) != t.hf_shape:
            raise ConfigError(f"tensor {name} has shape {tuple(w.shape)} but config.json implies "
                              f"{t.hf_shape}")
        _set(tree, ((f"layers_{i}",) if i is not None else ()) + t.path, _to_ours(t, w, cfg))
    if cfg.scan_layers:
        layers = [tree.pop(f"layers_{i}") for i in range(cfg.n_layers)]
        tree["layers"] = stack_layers(layers)
    return tree


def hf_from_params(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Our decoder params (numpy or jax, scan-stacked or per-layer) -> HF tensor dict (f32),
    vocab unpadded; tied -> no lm_head.weight. The exact inverse of params_from_hf."""
    out = {}
    for t, i in _all_tensors(cfg):
        if i is None:
            x = _get(params, t.path)
        elif "layers" in params:
            x = _get(params["layers"], t.path)[i]
        else:
            x = _get(params[f"layers_{i}"], t.path)
        out[_hf_name(t, i)] = _to_hf(t, x, cfg)
    return out


def param_shapes(cfg: ModelConfig) -> dict:
    """Our decoder params tree of `cfg` with shape tuples as leaves (layout per scan_layers)."""
    tree: dict = {}
    for t, i in _all_tensors(cfg):
        shape = _our_shape(t, cfg)
        if i is None:
            _set(tree, t.path, shape)
        elif cfg.scan_layers:
            _set(tree, ("layers",) + t.path, (cfg.n_layers,) + shape)
        else:
            _set(tree, (f"layers_{i}",) + t.path, shape)
    return tree


def stack_layers(layers: list[dict]) -> dict:
    """Per-layer trees -> one tree with a leading layer axis (the nn.scan layout)."""
    first = layers[0]
    if isinstance(first, dict):
        return {k: stack_layers([layer[k] for layer in layers]) for k in first}
    return np.stack([np.asarray(x) for x in layers])


def unstack_layers(stacked: dict, n_layers: int) -> list[dict]:
    """The inverse of stack_layers."""
    def take(node, i):
        return {k: take(v, i) for k, v in node.items()} if isinstance(node, dict) else node[i]
    return [take(stacked, i) for i in range(n_layers)]


# ----------------------------------------------------------------------------- files

def _safetensors_files(src: str) -> list[str]:
    index = os.path.join(src, INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map", {})
        files = sorted({str(name) for name in weight_map.values()})
        # A downloaded index must not point outside its directory (../x, /etc/x).
        escaping = [n for n in files if os.path.basename(n) != n or n in ("", ".", "..")]
        if escaping:
            raise ConfigError(f"{index} names shard(s) outside {src}: "
                              f"{_names_list(escaping)}; "
                              f"shards must be plain file names beside the index")
        missing = [n for n in files if not os.path.isfile(os.path.join(src, n))]
        if missing:
            raise ConfigError(f"{index} names shard(s) that are not there: "
                              f"{_names_list(missing)}; download the complete checkpoint")
        return [os.path.join(src, n) for n in files]
    single = os.path.join(src, SAFETENSORS_FILE)
    if os.path.isfile(single):
        return [single]
    hint = (" (only safetensors are read: re-save with save_pretrained(safe_serialization=True))"
            if glob.glob(os.path.join(src, "*.bin")) else "")
    raise ConfigError(f"{single} (or {INDEX_FILE}) not found: {src} has no safetensors "
                      f"weights{hint}")


def read_hf_checkpoint(src_dir: str) -> tuple[dict, dict[str, np.ndarray]]:
    """A Hugging Face model directory -> (config.json dict, {tensor name: f32 numpy array}).

    Reads model.safetensors, or every shard listed in model.safetensors.index.json; bf16/f16
    tensors are widened to f32.
    """
    path = os.path.join(src_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"{path} not found: the source must be a Hugging Face model directory "
                          f"(config.json + model.safetensors)")
    with open(path) as f:
        hf_config = json.load(f)
    tensors = {}
    for file in _safetensors_files(src_dir):
        with safe_open(file, framework="np") as f:
            for name in f.keys():
                tensors[name] = np.asarray(f.get_tensor(name), np.float32)
    return hf_config, tensors


def _clear_weights(out_dir: str) -> None:
    # A stale model.safetensors beside new shards would be loaded instead of them.
    for pattern in (SAFETENSORS_FILE, INDEX_FILE, "model-*-of-*.safetensors"):
        for path in glob.glob(os.path.join(out_dir, pattern)):
            os.remove(path)


def write_hf_checkpoint(out_dir: str, hf_config: dict, tensors: Mapping[str, np.ndarray],
                        max_shard_bytes: int | None = None) -> list[str]:
    """Writes config.json + model.safetensors, or model-0000i-of-0000n.safetensors shards and
    model.safetensors.index.json when the tensors exceed `max_shard_bytes`. Tensors are written
    in their own dtype (pass bf16 ml_dtypes arrays for a bf16 checkpoint). Returns the files."""
    os.makedirs(out_dir, exist_ok=True)
    _clear_weights(out_dir)
    with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    total = sum(a.nbytes for a in arrays.values())
    shards: list[dict] = [{}]
    size = 0
    for name, a in arrays.items():
        if max_shard_bytes and shards[-1] and size + a.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = a
        size += a.nbytes
    metadata = {"format": "pt"}  # transformers refuses safetensors without this
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out_dir, SAFETENSORS_FILE), metadata=metadata)
        return [CONFIG_FILE, SAFETENSORS_FILE]
    names = [f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors" for j in range(len(shards))]
    weight_map = {}
    for shard, name in zip(shards, names):
        save_file(shard, os.path.join(out_dir, name), metadata=metadata)
        weight_map.update({k: name for k in shard})
    with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return [CONFIG_FILE, *names, INDEX_FILE]
