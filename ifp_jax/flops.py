"""Analytic model FLOPs of one train step (the MFU numerator).

Per token of a Llama-family decoder, training costs 6 * N_matmul (forward 2N, backward 4N) plus
attention 12 * L * (H * hd) * T (scores and values, forward and backward; PaLM appendix B, no
causal discount). N_matmul counts every matmul weight, the LM head included, embeddings excluded.
In IFP training the masked LLM computes all F units (the mask multiplies them), so its cost
equals the dense model's; the predictor adds its backbone on the prompt and its head per example.
Rematerialisation is not counted (model FLOPs, not hardware FLOPs).
"""

from __future__ import annotations

from ifp_jax.config import ExperimentConfig, ModelConfig


def matmul_params(m: ModelConfig, with_lm_head: bool = True) -> int:
    per_layer = (m.d_model * m.head_dim * (2 * m.n_heads + 2 * m.n_kv_heads)
                 + 3 * m.d_model * m.d_ffn)
    head = m.d_model * m.vocab_size if with_lm_head else 0
    return m.n_layers * per_layer + head


def decoder_train_flops(m: ModelConfig, batch: int, seq_len: int, with_lm_head: bool = True
                        ) -> float:
    tokens = batch * seq_len
    attention = 12 * m.n_layers * m.n_heads * m.head_dim * seq_len
    return float(tokens * (6 * matmul_params(m, with_lm_head) + attention))


def train_step_flops(cfg: ExperimentConfig) -> dict[str, float]:
    """{'llm', 'predictor', 'total'} model FLOPs of one global train step."""
    b = cfg.data.global_batch_size
    llm = decoder_train_flops(cfg.model, b, cfg.data.seq_len)
    pred = 0.0
    if cfg.pruning.mode in ("soft", "hard"):
        p = cfg.predictor
        head = p.backbone.d_model * p.head_hidden + p.head_hidden * cfg.model.n_layers * cfg.model.d_ffn
        pred = decoder_train_flops(p.backbone, b, p.max_prompt_len, with_lm_head=False)
        pred += 6.0 * b * head
    return {"llm": llm, "predictor": pred, "total": llm + pred}
