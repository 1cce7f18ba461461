"""What `ifp generate` generates from: a trained run (with the prompt's mask) or an exported model.

from_workdir: the run's config and latest params; the predictor reads the prompt once and picks the
FFN mask in the run's pruning mode (none when dense), as evaluation and export do
(selection/units.py). from_exported: an exported model directory (dense, d_ffn = k, its mask folded
into the weights). The prompt is formatted as in training: the decoder reads [0] + prompt tokens
(targets shifted right), the predictor the last max_prompt_len prompt tokens in its own
vocabulary.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Generator(NamedTuple):
    """What `generate` needs: decoder params and config, an optional FFN mask, vocabulary."""

    params: Any
    model_cfg: Any  # ModelConfig
    mask: Any  # [1, L, F] or None
    vocab: Any  # vocab/light.py.LightVocabulary (no TensorFlow)
    prompt_ids: list[int]  # the decoder's prompt, formatted as in training
    dtype: Any
    note: str  # how the mask was chosen (for --verbose)


def decoder_prompt(vocab, prompt: str) -> list[int]:
    # Training inputs are the targets shifted right with 0 first (data/pipeline.py).
    return [0] + list(vocab.encode(prompt))


def from_workdir(workdir: str, prompt: str, eval_mask: str | None) -> Generator:
    """Restores a run (params only) and selects the prompt's mask with its predictor."""
    from ifp_jax.train.runs import open_run
    from ifp_jax.selection.prompt import predictor_tokens
    from ifp_jax.selection.units import Selector
    from ifp_jax.vocab.light import get_light_vocabulary

    run = open_run(workdir)
    cfg, model, params, step = run.cfg, run.model, run.params, run.step
    vocab = get_light_vocabulary(cfg.data.vocabulary)
    tokens = predictor_tokens(get_light_vocabulary(cfg.data.predictor_vocabulary), prompt,
                              cfg.predictor.max_prompt_len)
    sel = Selector(model, cfg, eval_mask)(params, tokens)
    note = f"{workdir} @ step {step}, mode={sel.mode}"
    mask = None
    if sel.mode != "dense":  # dense keeps every unit: no mask at all
        mask = sel.dense_mask(cfg.model.d_ffn)[None]
        note += f", eval_mask={sel.eval_mask}, k={cfg.pruning.keep_k}/{cfg.model.d_ffn}"
    return Generator(params["decoder"], model.model_cfg, mask, vocab,
                     decoder_prompt(vocab, prompt), model.dtype, note)


def from_exported(model_dir: str, prompt: str) -> Generator:
    """An exported (already gathered, dense) model: no predictor, no mask."""
    import jax.numpy as jnp

    from ifp_jax.vocab.light import get_light_vocabulary
    from ifp_jax.export.orbax_io import load_exported

    model_cfg, params, vocab_spec = load_exported(model_dir)
    vocab = get_light_vocabulary(vocab_spec)
    if vocab.vocab_size > model_cfg.vocab_size:  # a larger id would be clamped silently
        from ifp_jax.config import ConfigError
        raise ConfigError(f"{model_dir}: its vocabulary has {vocab.vocab_size} ids but the "
                          f"model has vocab_size={model_cfg.vocab_size}; export the model again "
                          f"with the vocabulary it was trained with")
    return Generator(params, model_cfg, None, vocab, decoder_prompt(vocab, prompt),
                     jnp.float32, f"{model_dir} (exported, d_ffn={model_cfg.d_ffn})")
