"""The peer arm: Hugging Face transformers (PyTorch, CPU, f32) training the same Llama shape.

LlamaForCausalLM from a LlamaConfig (random init), AdamW, global-norm clipping like ours, the
same batch shape. Imported lazily: torch and transformers are optional (`peer_unavailable()`
says why the arm cannot run, or None).
"""

from __future__ import annotations

import time

from ifp_jax.config import ExperimentConfig


def peer_unavailable() -> str | None:
    """None if torch + transformers import; else a one-line reason with the install command."""
    missing = []
    try:
        import torch  # noqa: F401
    except ImportError:
        missing.append("torch")
    try:
        import transformers  # noqa: F401
    except ImportError:
        missing.append("transformers")
    if missing:
        return (f"transformers peer skipped: {' and '.join(missing)} not installed "
                f"(pip install torch transformers)")
    return None


class TorchArm:
    """One training step of LlamaForCausalLM per `step()`; returns its wall time in seconds."""

    name = "transformers"

    def __init__(self, cfg: ExperimentConfig, seed: int = 0):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        m, o = cfg.model, cfg.optimizer
        torch.manual_seed(seed)
        hf_cfg = LlamaConfig(
            vocab_size=m.vocab_size, hidden_size=m.d_model, intermediate_size=m.d_ffn,
            num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads,
            num_key_value_heads=m.n_kv_heads, head_dim=m.head_dim,
            max_position_embeddings=max(m.max_len, cfg.data.seq_len), rms_norm_eps=m.norm_eps,
            rope_theta=m.rope_theta, tie_word_embeddings=m.tie_embeddings,
            attention_bias=False, mlp_bias=False, hidden_act="silu")
        hf_cfg._attn_implementation = "sdpa"
        self.torch = torch
        self.model = LlamaForCausalLM(hf_cfg).to(torch.float32)
        self.model.train()
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.n_embedding = self.model.model.embed_tokens.weight.numel()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=o.lr_llm, betas=(o.b1, o.b2),
                                     weight_decay=o.weight_decay)
        self.clip = o.grad_clip_norm
        g = torch.Generator().manual_seed(seed)
        b, t = cfg.data.global_batch_size, cfg.data.seq_len
        self.input_ids = torch.randint(1, m.vocab_size, (b, t), generator=g)
        self.labels = torch.randint(1, m.vocab_size, (b, t), generator=g)
        self.num_threads = torch.get_num_threads()
        self.versions = {"torch": torch.__version__,
                         "transformers": __import__("transformers").__version__}

    def step(self) -> float:
        t0 = time.perf_counter()
        logits = self.model(input_ids=self.input_ids).logits
        loss = self.torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), self.labels.reshape(-1))
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.last_loss = float(loss.detach())
        return time.perf_counter() - t0
