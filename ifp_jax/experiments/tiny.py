"""The embedded CPU pipeline (`ifp demo`): a ~1M-parameter Llama-style LLM on the multi-skill
mixture + Python-stdlib text, pruned to k = F/4 FFN units per layer by IFPruning.

Stages (each its own workdir; the demo chains them with train.init_*_from):
  tiny_multiskill_dense  dense source: skills + text, every FFN unit on
  tiny_multiskill_cpt    IFP continued pre-training on text chunks (mask from chunk k, loss on k+1)
  tiny_multiskill        IFP SFT on the skill mixture (the main experiment)
  tiny_multiskill_static static-pruning baseline: one learned input-independent mask
"""

from ifp_jax.config import (CheckpointConfig, DataConfig, ExperimentConfig, ModelConfig,
                            OptimizerConfig, PredictorConfig, PruningConfig, TrainConfig, replace)
from ifp_jax.experiments import register

MODEL = ModelConfig(vocab_size=259, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
                    head_dim=32, d_ffn=512, max_len=128)
PREDICTOR = PredictorConfig(
    backbone=ModelConfig(vocab_size=259, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                         head_dim=32, d_ffn=256, max_len=128),
    head_hidden=128, max_prompt_len=48)


def _base(name: str, mode: str, mixture: str, steps: int, lr: float) -> ExperimentConfig:
    return ExperimentConfig(
        name=name,
        model=MODEL,
        predictor=PREDICTOR,
        pruning=PruningConfig(mode=mode, keep_k=MODEL.d_ffn // 4, temperature_start=1.0,
                              temperature_end=0.1, temperature_anneal_steps=steps,
                              balance_weight=1.0, eval_mask="lambda"),
        data=DataConfig(mixture=mixture, seq_len=40, global_batch_size=64, cpt_chunk_len=20),
        optimizer=OptimizerConfig(lr_llm=lr, lr_predictor=lr, warmup_steps=min(100, steps // 10)),
        checkpoint=CheckpointConfig(every_steps=200, keep=2),
        train=TrainConfig(steps=steps, log_every=50),
    )


@register("tiny_multiskill_dense")
def tiny_multiskill_dense() -> ExperimentConfig:
    return _base("tiny_multiskill_dense", "dense", "ifp_multiskill_cpt", steps=700, lr=3e-3)


@register("tiny_multiskill_cpt")
def tiny_multiskill_cpt() -> ExperimentConfig:
    return _base("tiny_multiskill_cpt", "soft", "ifp_cpt", steps=80, lr=1e-3)


@register("tiny_multiskill")
def tiny_multiskill() -> ExperimentConfig:
    return _base("tiny_multiskill", "soft", "ifp_multiskill", steps=400, lr=2e-3)


@register("tiny_multiskill_static")
def tiny_multiskill_static() -> ExperimentConfig:
    cfg = _base("tiny_multiskill_static", "static", "ifp_multiskill", steps=400, lr=2e-3)
    return replace(cfg, pruning=replace(cfg.pruning, balance_weight=0.0))
