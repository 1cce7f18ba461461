"""The comparison on embedded fact tables (`ifp compare tiny_facts`): does per-prompt FFN
selection beat its rivals where FFN capacity decides (ifp_jax/data/facts.py)?

A 2-layer d = 64 Llama-style LLM with F = 512 FFN units, pruned to k = F/4 = 128 per layer, the
shape of the trial run of docs/findings.md#the-trial-run. Stages (chained by `ifp compare`):
  tiny_facts_dense  the dense source on all 8 tables
  tiny_facts        IFP SFT from the source on the same tables (no CPT stage: the mixture has no
                    text; every arm after the source trains the same SFT steps)
Kernels start at std 0.125 (~1/sqrt(d_model)) rather than Llama's 0.02: at 0.02 this narrow model
stayed at chance loss on fact tables for 2,000 steps; at 0.125 it learned them (training loss
0.05 at step 750 on a 1,024-fact version). The predictor reads the task's bare instruction for
half of its training prompts (data.predictor_instruction_rate), so the per-task mask, selected
from that text, is in its training distribution.
"""

from ifp_jax.config import (CheckpointConfig, DataConfig, ExperimentConfig, ModelConfig,
                            OptimizerConfig, PredictorConfig, PruningConfig, TrainConfig)
from ifp_jax.experiments import register

MODEL = ModelConfig(vocab_size=259, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                    head_dim=32, d_ffn=512, max_len=32, init_std=0.125)
# The predictor reads the prompt ("color of aq D7 =", 16 bytes) and must find the task in it. Two
# layers: with one (as in the trial run, docs/findings.md#the-trial-run) the IFP stage's training
# loss ended at 0.167 against 0.017 with two (seed 0, same source and batches): one layer mixed up
# tasks whose prompts differ only in the instruction words (mask overlap between 'food' and 'tool'
# 0.91).
PREDICTOR = PredictorConfig(
    backbone=ModelConfig(vocab_size=259, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                         head_dim=32, d_ffn=256, max_len=32, init_std=0.125),
    head_hidden=128, max_prompt_len=24)


def _base(name: str, mode: str, steps: int, lr: float) -> ExperimentConfig:
    return ExperimentConfig(
        name=name,
        model=MODEL,
        predictor=PREDICTOR,
        pruning=PruningConfig(mode=mode, keep_k=MODEL.d_ffn // 4, temperature_start=1.0,
                              temperature_end=0.1, temperature_anneal_steps=steps,
                              balance_weight=1.0, eval_mask="lambda"),
        data=DataConfig(mixture="ifp_facts", seq_len=20, global_batch_size=128,
                        eval_examples_per_task=250,
                        predictor_instruction_rate=0.5),
        optimizer=OptimizerConfig(lr_llm=lr, lr_predictor=lr, warmup_steps=min(100, steps // 10)),
        checkpoint=CheckpointConfig(every_steps=1000, keep=1),
        train=TrainConfig(steps=steps, log_every=250),
    )


@register("tiny_facts_dense")
def tiny_facts_dense() -> ExperimentConfig:
    return _base("tiny_facts_dense", "dense", steps=2500, lr=3e-3)


@register("tiny_facts")
def tiny_facts() -> ExperimentConfig:
    return _base("tiny_facts", "soft", steps=1000, lr=3e-3)
