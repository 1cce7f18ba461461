"""What `ifp generate` generates from: a trained run (with the prompt's mask), an exported model
or an `ifp import-hf` directory.

from_workdir: the run's config and latest params; the predictor reads the prompt once and picks the
FFN mask in the run's pruning mode (none when dense), as evaluation and export do
(selection/units.py). from_exported: an exported model directory (dense, d_ffn = k, its mask folded
into the weights). from_import: an import directory (the pretrained model as imported, dense).
The prompt is formatted as in training: the decoder reads the vocabulary's prefix (its BOS, or
none; seqio's 0 for 'byte': vocab/decoder_prefix.py) + the prompt tokens, the predictor the last
max_prompt_len prompt tokens in its own vocabulary. With `chat`, the prompt is first written as a
user message by the tokenizer's chat template (vocab/chat_template.py), as data.chat_template
formats training prompts.
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


def prompt_text(vocab, prompt: str, chat: bool) -> str:
    """The text the model reads: the prompt, or under `chat` the chat template's user turn."""
    if not chat:
        return prompt
    from ifp_jax.vocab.chat_template import user_prompt
    return user_prompt(vocab.spec, prompt)


def decoder_prompt(vocab, prompt: str, chat: bool = False) -> list[int]:
    """The decoder's prompt ids as training reads them (data/pipeline.py): the vocabulary's
    prefix, then the (chat-formatted) prompt's tokens."""
    from ifp_jax.vocab.decoder_prefix import decoder_prefix
    return list(decoder_prefix(vocab.spec, chat)) + list(vocab.encode(
        prompt_text(vocab, prompt, chat)))


def from_workdir(workdir: str, prompt: str, eval_mask: str | None,
                 chat: bool = False) -> Generator:
    """Restores a run (params only) and selects the prompt's mask with its predictor."""
    from ifp_jax.train.runs import open_run
    from ifp_jax.selection.prompt import predictor_tokens
    from ifp_jax.selection.units import Selector
    from ifp_jax.vocab.light import get_light_vocabulary

    run = open_run(workdir)
    cfg, model, params, step = run.cfg, run.model, run.params, run.step
    vocab = get_light_vocabulary(cfg.data.vocabulary)
    chat = chat or cfg.data.chat_template  # as the run was trained
    tokens = predictor_tokens(get_light_vocabulary(cfg.data.predictor_vocabulary),
                              prompt_text(vocab, prompt, chat), cfg.predictor.max_prompt_len)
    sel = Selector(model, cfg, eval_mask)(params, tokens)
    note = f"{workdir} @ step {step}, mode={sel.mode}"
    mask = None
    if sel.mode != "dense":  # dense keeps every unit: no mask at all
        mask = sel.dense_mask(cfg.model.d_ffn)[None]
        note += f", eval_mask={sel.eval_mask}, k={cfg.pruning.keep_k}/{cfg.model.d_ffn}"
    return Generator(params["decoder"], model.model_cfg, mask, vocab,
                     decoder_prompt(vocab, prompt, chat), model.dtype, note)


def from_import(import_dir: str, prompt: str, chat: bool = False) -> Generator:
    """An `ifp import-hf` directory: the imported model, dense, in f32 (as transformers runs
    it)."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from ifp_jax.hf.imported import load_import, restore_import_params
    from ifp_jax.hf.weights import param_shapes
    from ifp_jax.vocab.light import get_light_vocabulary

    meta, cfg = load_import(import_dir)
    cfg = dataclasses.replace(cfg, scan_layers=True)  # the import's stored layout
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=device),
        param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
    params = restore_import_params(import_dir, abstract)
    vocab = get_light_vocabulary(meta["vocabulary"])
    return Generator(params, cfg, None, vocab, decoder_prompt(vocab, prompt, chat), jnp.float32,
                     f"{import_dir} (imported {meta['kind']} from {meta['source']}, "
                     f"d_ffn={cfg.d_ffn})")


def from_exported(model_dir: str, prompt: str, chat: bool = False) -> Generator:
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
    return Generator(params, model_cfg, None, vocab, decoder_prompt(vocab, prompt, chat),
                     jnp.float32, f"{model_dir} (exported, d_ffn={model_cfg.d_ffn})")
