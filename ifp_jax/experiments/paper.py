"""The paper's configurations (docs/method.md#paper-sizes): 6B and 9B sources pruned to 3B.

LLM: d_model 2048, 56 layers, 16 query / 2 KV heads of dim 128, FFN 16384 (6B) or 24576 (9B),
keeping 6656 units per layer (the 3B shape). Vocabulary 128,256 (Llama 3's; the paper does not
state one) with rope theta 500,000; sequences of 4,096 tokens, 256 per step (~1M tokens).
Predictor: a 302M-parameter backbone as in the paper (d 1024, 16 layers, 16/8 heads of 64, FFN
2816, the same 128k vocabulary: 131M of it embeddings) reading prompts of up to 512 tokens,
and the paper's head d -> 128 -> L*F (176M more for the 9B source; its unit axis is sharded).

Per-hardware defaults (`ifp train` picks them from the devices it runs on, `ifp compile` from
--topology; any of them can be overridden on the command line):

| hardware | mesh | remat | micro-batches | compute | logits |
|---|---|---|---|---|---|
| v5p (95 GiB/chip) | fsdp over all chips | full | 1 | bf16 | chunks of 1024 |
| v5e (16 GiB/chip) | fsdp over all chips | full | 1 | bf16 | chunks of 512 |
| v4  (16 GiB/core) | fsdp over all cores | full | 1 | bf16 | chunks of 512 |
| v6e (32 GiB/chip) | fsdp over all chips | full | 1 | bf16 | chunks of 1024 |
| gpu (80 GB, 8/host) | fsdp over all GPUs | full | 4 | bf16 | chunks of 1024 |

FSDP alone (ZeRO-3 style: params, grads and Adam state sharded over every chip, gathered layer
by layer) fits both sources on every listed slice from 64 chips up; with more chips than
sequences per step, raise data.global_batch_size or move chips to mesh.tensor.
Data: `data.vocabulary` must name the source model's tokenizer for a real run (the byte
vocabulary default only keeps the config loadable).
"""

from ifp_jax.config import (CheckpointConfig, DataConfig, ExperimentConfig, ModelConfig,
                            OptimizerConfig, PredictorConfig, PruningConfig, TrainConfig)
from ifp_jax.experiments import register

VOCAB = 128256
KEEP_K = 6656  # the 3B model's FFN width


def _llm(d_ffn: int) -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, d_model=2048, n_layers=56, n_heads=16, n_kv_heads=2,
                       head_dim=128, d_ffn=d_ffn, rope_theta=500000.0, max_len=4096,
                       remat_policy="full")


PREDICTOR = PredictorConfig(
    backbone=ModelConfig(vocab_size=VOCAB, d_model=1024, n_layers=16, n_heads=16, n_kv_heads=8,
                         head_dim=64, d_ffn=2816, rope_theta=500000.0, max_len=512,
                         remat_policy="full"),
    head_hidden=128, head_activation="gelu", max_prompt_len=512)

_FSDP = ["mesh.data=1", "mesh.fsdp=-1", "mesh.tensor=1", "model.remat_policy=full",
         "predictor.backbone.remat_policy=full", "train.compute_dtype=bfloat16"]
HARDWARE = {
    "v5p": _FSDP + ["optimizer.grad_accum_steps=1", "train.logits_chunk_len=1024"],
    "v5e": _FSDP + ["optimizer.grad_accum_steps=1", "train.logits_chunk_len=512"],
    "v4": _FSDP + ["optimizer.grad_accum_steps=1", "train.logits_chunk_len=512"],
    "v6e": _FSDP + ["optimizer.grad_accum_steps=1", "train.logits_chunk_len=1024"],
    "gpu": _FSDP + ["optimizer.grad_accum_steps=4", "train.logits_chunk_len=1024"],
}


def _paper(name: str, d_ffn: int) -> ExperimentConfig:
    return ExperimentConfig(
        name=name,
        model=_llm(d_ffn),
        predictor=PREDICTOR,
        pruning=PruningConfig(mode="soft", keep_k=KEEP_K, temperature_start=1.0,
                              temperature_end=0.1, temperature_anneal_steps=20000,
                              balance_weight=1.0, eval_mask="lambda"),
        data=DataConfig(mixture="ifp_multiskill_cpt", seq_len=4096, global_batch_size=256,
                        cpt_chunk_len=2048, cpt_num_chunks=2),
        optimizer=OptimizerConfig(lr_llm=1e-5, lr_predictor=1e-4, warmup_steps=500,
                                  weight_decay=0.01, b2=0.95),
        checkpoint=CheckpointConfig(every_steps=500, keep=3),
        train=TrainConfig(steps=60000, log_every=10, compute_dtype="bfloat16",
                          logits_chunk_len=1024),
    )


@register("paper_6b_to_3b", hardware=HARDWARE)
def paper_6b_to_3b() -> ExperimentConfig:
    return _paper("paper_6b_to_3b", 16384)


@register("paper_9b_to_3b", hardware=HARDWARE)
def paper_9b_to_3b() -> ExperimentConfig:
    return _paper("paper_9b_to_3b", 24576)
