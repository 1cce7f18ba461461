"""Shared tiny configurations for tests (small shapes, one compile each)."""

import socket

from ifp_jax.config import (CheckpointConfig, DataConfig, ExperimentConfig, MeshConfig,
                            ModelConfig, OptimizerConfig, PredictorConfig, PruningConfig,
                            TrainConfig)

TINY_MODEL = ModelConfig(vocab_size=259, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         head_dim=8, d_ffn=64, max_len=64)
TINY_PREDICTOR = PredictorConfig(
    backbone=ModelConfig(vocab_size=259, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2,
                         head_dim=16, d_ffn=64, max_len=64),
    head_hidden=16, max_prompt_len=48)


def tiny_config(name: str = "test_tiny", mode: str = "soft", steps: int = 20,
                mixture: str = "ifp_multiskill_cpt", mesh: MeshConfig = MeshConfig(data=1),
                **train_kwargs) -> ExperimentConfig:
    return ExperimentConfig(
        name=name, model=TINY_MODEL, predictor=TINY_PREDICTOR,
        pruning=PruningConfig(mode=mode, keep_k=16, temperature_anneal_steps=steps),
        data=DataConfig(mixture=mixture, seq_len=64, global_batch_size=16,
                        eval_examples_per_task=8),
        optimizer=OptimizerConfig(lr_llm=3e-3, lr_predictor=3e-3, warmup_steps=2),
        mesh=mesh,
        checkpoint=CheckpointConfig(every_steps=5, keep=5, async_save=True),
        train=TrainConfig(steps=steps, log_every=5, **train_kwargs),
    )


# The same tiny shapes as command-line overrides of `tiny_multiskill`, for tests that run the
# `ifp` command in subprocesses.
TINY_OVERRIDES = [
    "model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
    "model.head_dim=8", "model.d_ffn=64", "predictor.backbone.d_model=32",
    "predictor.backbone.n_layers=1", "predictor.backbone.d_ffn=64",
    "predictor.backbone.n_kv_heads=2", "predictor.head_hidden=16", "pruning.keep_k=16",
    "data.global_batch_size=16", "train.log_every=1", "checkpoint.every_steps=3",
    "optimizer.warmup_steps=2", "optimizer.final_lr_fraction=1.0"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (for a coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
