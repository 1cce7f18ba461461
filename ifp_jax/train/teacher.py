"""A frozen distillation teacher (config.DistillConfig): its top-k next-token distribution per
position, computed on device by its own compiled forward pass and handed to the train step as
two extra batch arrays, so the step's signature and the train state stay as they are.

The teacher is any dense LLM with the student's vocabulary: another run's workdir (its latest
checkpoint, params only) or an `ifp import-hf` dir. It is read once at start-up and never
checkpointed: a resumed run reads it again.

Extra batch arrays (K = distill.top_k):
  teacher_ids [B, T, K] int32        the teacher's K most likely next tokens at each position
  teacher_logprobs [B, T, K] f32     their log-probabilities, renormalised over those K
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from ifp_jax import sharding as shd
from ifp_jax.config import ConfigError, ExperimentConfig, load_workdir_config
from ifp_jax.hf import imported
from ifp_jax.model.decoder import Decoder
from ifp_jax.storage import paths
from ifp_jax.train.loss import lm_head_kernel
from ifp_jax.train.stage_init import source_params
from ifp_jax.train.state import build_model, params_layout

def teacher_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The teacher's config (dense mode), with the student's data and batch settings; a
    teacher whose vocabulary differs from the student's is a one-line ConfigError."""
    path = cfg.distill.teacher
    dense = dataclasses.replace(cfg.pruning, mode="dense")
    if imported.is_import_dir(path):
        tcfg = imported.adopt_imports(dataclasses.replace(
            cfg, pruning=dense, train=dataclasses.replace(cfg.train, init_llm_from=path,
                                                          init_predictor_from="")))
    else:
        own = load_workdir_config(path)
        tcfg = dataclasses.replace(cfg, model=own.model, predictor=own.predictor, pruning=dense,
                                   data=dataclasses.replace(cfg.data,
                                                            vocabulary=own.data.vocabulary))
    if (tcfg.model.vocab_size != cfg.model.vocab_size
            or not same_vocabulary(tcfg.data.vocabulary, cfg.data.vocabulary)):
        raise ConfigError(
            f"distill.teacher={path} has vocabulary {tcfg.data.vocabulary!r} of size "
            f"{tcfg.model.vocab_size}, the student {cfg.data.vocabulary!r} of size "
            f"{cfg.model.vocab_size}; distil only between models with the same vocabulary")
    return tcfg


def same_vocabulary(a: str, b: str) -> bool:
    """The same vocabulary spec, or two tokenizer files with the same bytes (two imports of one
    model, e.g. the student's import and the teacher's, each hold their own tokenizer.json)."""
    if a == b:
        return True
    try:
        return (paths.exists(a) and paths.exists(b)
                and paths.read_bytes(a) == paths.read_bytes(b))
    except (OSError, ValueError):  # a spec that is not a path ("byte", "sp:...")
        return False


def topk_logprobs(logits: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """[..., V] logits -> ([..., k] int32 ids, [..., k] f32 log-probs renormalised over them)."""
    values, ids = jax.lax.top_k(logits.astype(jnp.float32), k)
    return ids.astype(jnp.int32), values - jax.nn.logsumexp(values, axis=-1, keepdims=True)


class Teacher:
    """`teacher(batch) -> {teacher_ids, teacher_logprobs}` for a global device batch."""

    def __init__(self, cfg: ExperimentConfig, mesh: Mesh):
        self.cfg = tcfg = teacher_config(cfg)
        model = build_model(tcfg)
        decoder_layout = params_layout(model, tcfg, mesh)["decoder"]
        path = cfg.distill.teacher
        src = (source_params(path, mesh, decoder_layout) if imported.is_import_dir(path)
               else source_params(path, mesh)["decoder"])
        self.params = src
        decoder = Decoder(model.model_cfg, model.dtype)
        k, chunk, vocab = cfg.distill.top_k, cfg.train.logits_chunk_len, tcfg.model.vocab_size

        def forward(params, tokens):  # params: the decoder's; tokens: [B, T]
            if chunk == 0:
                return topk_logprobs(decoder.apply({"params": params}, tokens), k)
            # Chunk by chunk, so that [B, T, V] logits of a large vocabulary never exist.
            hidden = decoder.apply({"params": params}, tokens, return_hidden=True)
            kernel = lm_head_kernel(params, tcfg.model.tie_embeddings)
            b, t, d = hidden.shape
            hs = jnp.swapaxes(hidden.reshape(b, t // chunk, chunk, d), 0, 1)

            def one_chunk(h):
                logits = jnp.einsum("bcd,dv->bcv", h, kernel.astype(h.dtype))
                valid = jnp.arange(logits.shape[-1]) < vocab
                return topk_logprobs(jnp.where(valid, logits.astype(jnp.float32), -1e30), k)

            ids, logp = jax.lax.map(one_chunk, hs)
            return tuple(jnp.swapaxes(x, 0, 1).reshape(b, t, k) for x in (ids, logp))

        out_sharding = shd.batch_sharding(mesh, 3)
        tokens = jax.ShapeDtypeStruct((cfg.data.global_batch_size, cfg.data.seq_len), jnp.int32,
                                      sharding=shd.batch_sharding(mesh, 2))
        with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
            self._forward = jax.jit(forward, out_shardings=(out_sharding, out_sharding)).lower(
                self.params, tokens).compile()

    def __call__(self, batch: dict) -> dict:
        ids, logp = self._forward(self.params, batch["decoder_input_tokens"])
        return {"teacher_ids": ids, "teacher_logprobs": logp}

