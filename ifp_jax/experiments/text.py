"""Continued pre-training on a local text corpus (the paper's first stage), streamed from disk.

  text_cpt   IFP CPT over the task 'ifp_text' (data.text_files and/or data.text_datasets): the
             predictor reads chunk k (128 bytes), the masked LLM is trained on chunk k + 1.

A byte-level Llama of ~6M parameters (d = 256, 6 layers, F = 1024 kept to k = F/2, the paper's
6B -> 3B ratio) so a CPU runs ~1 step/s; the data shape matches `ifp bench data` (sequence 256,
chunks of 128, 2 per example, predictor prompt 128), so a corpus prepared by the bench trains
here unchanged:

    ifp data prepare text_cpt --out data/web data.text_files=corpus/
    ifp train text_cpt --workdir runs/web data.text_files=corpus/ data.prepared_dir=data/web
"""

from ifp_jax.config import (CheckpointConfig, DataConfig, ExperimentConfig, ModelConfig,
                            OptimizerConfig, PredictorConfig, PruningConfig, TrainConfig)
from ifp_jax.experiments import register

MODEL = ModelConfig(vocab_size=259, d_model=256, n_layers=6, n_heads=4, n_kv_heads=2,
                    head_dim=64, d_ffn=1024, max_len=256)
PREDICTOR = PredictorConfig(
    backbone=ModelConfig(vocab_size=259, d_model=64, n_layers=2, n_heads=2, n_kv_heads=1,
                         head_dim=32, d_ffn=256, max_len=128),
    head_hidden=128, max_prompt_len=128)
STEPS = 1000


@register("text_cpt")
def text_cpt() -> ExperimentConfig:
    return ExperimentConfig(
        name="text_cpt",
        model=MODEL,
        predictor=PREDICTOR,
        pruning=PruningConfig(mode="soft", keep_k=MODEL.d_ffn // 2, temperature_start=1.0,
                              temperature_end=0.1, temperature_anneal_steps=STEPS,
                              balance_weight=1.0),
        data=DataConfig(mixture="ifp_text", seq_len=256, global_batch_size=16,
                        cpt_chunk_len=128, cpt_num_chunks=2),
        optimizer=OptimizerConfig(lr_llm=1e-3, lr_predictor=1e-3, warmup_steps=50),
        checkpoint=CheckpointConfig(every_steps=250, keep=2),
        train=TrainConfig(steps=STEPS, log_every=25),
    )
