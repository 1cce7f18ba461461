"""Hugging Face import: logits parity with transformers, exact tensor round trips, the import
directory, the tokenizer vocabulary, refusals, and a short training run from an import."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ifp_jax.config import ConfigError, replace
from ifp_jax.data import pipeline
from ifp_jax.errors import DataError
from ifp_jax.vocab.seqio_vocab import get_vocabulary
from ifp_jax.hf import imported
from ifp_jax.hf.import_layout import is_import_dir
from ifp_jax.commands.import_hf import add_parser
from ifp_jax.hf.import_hf import import_hf
from ifp_jax.vocab.hf_seqio import HFTokenizerVocabulary
from ifp_jax.hf.weights import (hf_config_from_model_config, hf_from_params,
                                model_config_from_hf, param_shapes, params_from_hf,
                                read_hf_checkpoint, write_hf_checkpoint)
from ifp_jax.model.decoder import Decoder
from ifp_jax.train.loop import train
from tests.hf_models import hf_logits, make_random_llama, make_tokenizer
from tests.helpers import tiny_config

# name -> make_random_llama kwargs. vocab 300 is not a multiple of 128: padding rows exist.
VARIANTS = {
    "gqa": dict(heads=4, kv_heads=2),
    "mha_tied_theta_headdim": dict(heads=4, kv_heads=4, tie=True, rope_theta=5e5, head_dim=12),
    "bf16_gqa": dict(vocab=300, heads=4, kv_heads=1, dtype="bfloat16"),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: (str(root / name), make_random_llama(str(root / name), seed=i, **kw))
            for i, (name, kw) in enumerate(VARIANTS.items())}


def _tokens(vocab, shape=(2, 24), seed=0):
    return np.random.RandomState(seed).randint(0, vocab, shape).astype(np.int32)


def _ours(params, cfg, tokens):
    return np.asarray(jax.jit(Decoder(cfg).apply)({"params": params}, jnp.asarray(tokens)))


def _assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_transformers(models, name):
    src, model = models[name]
    hf_config, tensors = read_hf_checkpoint(src)
    # bf16 also runs the per-layer (unscanned) layout; the others the scanned one.
    cfg = model_config_from_hf(hf_config, attention="xla", scan_layers=name != "bf16_gqa")
    assert (cfg.tie_embeddings, cfg.rope_theta) == (VARIANTS[name].get("tie", False),
                                                     VARIANTS[name].get("rope_theta", 1e4))
    tokens = _tokens(cfg.vocab_size)
    ref = hf_logits(model, tokens)
    ours = _ours(params_from_hf(tensors, cfg), cfg, tokens)
    assert ours.shape == ref.shape
    assert np.abs(ref).max() > 1.0  # large enough for 1e-4 to mean something
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["gqa", "mha_tied_theta_headdim"])
@pytest.mark.parametrize("scan", [True, False])
def test_tensors_round_trip_exactly(models, name, scan):
    hf_config, tensors = read_hf_checkpoint(models[name][0])
    cfg = model_config_from_hf(hf_config, scan_layers=scan)
    params = params_from_hf(tensors, cfg)
    assert params["embed_tokens"]["embedding"].shape == (cfg.padded_vocab_size, cfg.d_model)
    assert not params["embed_tokens"]["embedding"][cfg.vocab_size:].any()
    assert ("lm_head" in params) == (not cfg.tie_embeddings)
    assert ("layers" in params) == scan
    back = hf_from_params(params, cfg)
    expected = {k: v for k, v in tensors.items()
                if not (cfg.tie_embeddings and k == "lm_head.weight")}
    assert sorted(back) == sorted(expected)
    for k in expected:
        assert back[k].dtype == np.float32
        np.testing.assert_array_equal(back[k], expected[k], err_msg=k)


def test_sharded_checkpoints_read_and_written(models, tmp_path):
    src, model = models["gqa"]
    sharded = str(tmp_path / "hf_sharded")
    make_random_llama(sharded, seed=0, max_shard_size="20KB", tokenizer=False, **VARIANTS["gqa"])
    assert os.path.isfile(os.path.join(sharded, "model.safetensors.index.json"))
    hf_config, tensors = read_hf_checkpoint(sharded)
    _, single = read_hf_checkpoint(src)
    assert sorted(tensors) == sorted(single)
    for k in single:
        np.testing.assert_array_equal(tensors[k], single[k])
    # Our writer (the export side): sharded, from our params + our LlamaConfig dict; transformers
    # loads it as the same model (tied, rope_theta and head_dim included).
    src, model = models["mha_tied_theta_headdim"]
    hf_config, tensors = read_hf_checkpoint(src)
    cfg = model_config_from_hf(hf_config)
    out = str(tmp_path / "ours")
    hf_cfg = hf_config_from_model_config(cfg, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    files = write_hf_checkpoint(out, hf_cfg, hf_from_params(params_from_hf(tensors, cfg), cfg),
                                max_shard_bytes=30_000)
    assert "model.safetensors.index.json" in files and len(files) > 3
    _, again = read_hf_checkpoint(out)
    assert sorted(again) == sorted(k for k in tensors if k != "lm_head.weight")
    for k in again:
        np.testing.assert_array_equal(again[k], tensors[k])
    from transformers import LlamaForCausalLM
    reloaded = LlamaForCausalLM.from_pretrained(out)
    tokens = _tokens(cfg.vocab_size)
    np.testing.assert_allclose(hf_logits(reloaded, tokens), hf_logits(model, tokens), atol=1e-5)


# ----------------------------------------------------------------------------- config

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 100,
         "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "max_position_embeddings": 256}


def test_config_fields_and_rope_locations():
    cfg = model_config_from_hf({**LLAMA, "rope_parameters": {"rope_type": "default",
                                                             "rope_theta": 5e5}})
    assert (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ffn, cfg.max_len,
            cfg.rope_theta, cfg.tie_embeddings) == (32, 4, 4, 8, 64, 256, 5e5, False)
    old_style = model_config_from_hf({**LLAMA, "rope_theta": 2e5, "rope_scaling": None,
                                      "num_key_value_heads": 2, "head_dim": 16})
    assert (old_style.rope_theta, old_style.n_kv_heads, old_style.head_dim) == (2e5, 2, 16)
    mistral = model_config_from_hf({**LLAMA, "model_type": "mistral", "sliding_window": None,
                                    "architectures": ["MistralForCausalLM"]})
    assert mistral.d_model == 32
    assert model_config_from_hf(LLAMA, vocab_pad_multiple=64).padded_vocab_size == 128
    # Our LlamaConfig dict is read back as the same architecture.
    back = model_config_from_hf(hf_config_from_model_config(
        cfg, bos_token_id=None, eos_token_id=1, pad_token_id=0))
    assert back == cfg


@pytest.mark.parametrize("change, names", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "model_type 'gpt2'"),
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}, "biases"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "LlamaForSequenceClassification"),
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": 4096},
     "sliding_window=4096"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling type 'llama3'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope_parameters type 'yarn'"),
])
def test_unsupported_configs_are_refused_in_one_line(change, names):
    with pytest.raises(ConfigError) as e:
        model_config_from_hf({**LLAMA, **change})
    assert names in str(e.value) and len(str(e.value).splitlines()) == 1


def test_missing_unexpected_and_misshapen_tensors_are_named(models):
    hf_config, tensors = read_hf_checkpoint(models["gqa"][0])
    cfg = model_config_from_hf(hf_config)
    missing = {k: v for k, v in tensors.items() if "layers.1.mlp.up_proj" not in k}
    with pytest.raises(ConfigError, match=r"lacks 1 tensor.*model\.layers\.1\.mlp\.up_proj"):
        params_from_hf(missing, cfg)
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.self_attn\.q_proj\.bias"):
        params_from_hf({**tensors, "model.layers.0.self_attn.q_proj.bias": np.zeros(32)}, cfg)
    bad = {**tensors, "model.norm.weight": np.zeros(7, np.float32)}
    with pytest.raises(ConfigError, match=r"model\.norm\.weight has shape \(7,\)"):
        params_from_hf(bad, cfg)
    # Buffers of old checkpoints are accepted and ignored.
    params_from_hf({**tensors, "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4)}, cfg)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config.json not found"):
        read_hf_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"model\.safetensors .*not found.*safe_serialization"):
        read_hf_checkpoint(str(tmp_path))


# ----------------------------------------------------------------------------- tokenizer

TEXTS = ["reverse the letters of abc", "add 12 and 30 = 42", "héllo wörld ✓ (new words)", ""]


def test_tokenizer_vocabulary_matches_tokenizers(models):
    from tokenizers import Tokenizer
    import tensorflow as tf
    directory = models["gqa"][0]
    path = os.path.join(directory, "tokenizer.json")
    vocab = get_vocabulary(path)
    assert isinstance(vocab, HFTokenizerVocabulary)
    assert get_vocabulary(directory) == vocab
    tok = Tokenizer.from_file(path)
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)
    assert vocab.id0_is_special and vocab.vocab_size == tok.get_vocab_size() <= 320
    for text in TEXTS:
        ids = list(vocab.encode(text))
        assert ids == tok.encode(text, add_special_tokens=False).ids
        assert vocab.decode(ids) == text
        assert vocab.decode(ids + [vocab.eos_id, 0, 57]) == text  # stops at EOS
        assert list(vocab.encode_tf(tf.constant(text)).numpy()) == ids
        padded = tf.constant([ids + [vocab.eos_id, 0, 0]], tf.int32)
        assert vocab.decode_tf(padded).numpy()[0].decode() == text
    # Inside tf.data, where seqio calls it.
    ds = tf.data.Dataset.from_tensor_slices(TEXTS[:2]).map(vocab.encode_tf)
    assert [list(x) for x in ds.as_numpy_iterator()] == [list(vocab.encode(t)) for t in TEXTS[:2]]


def test_tokenizer_without_eos_and_with_an_ordinary_id0(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({"!": 0, "a": 1, "<unk>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(DataError, match="no EOS token"):
        HFTokenizerVocabulary(str(tmp_path / "tokenizer.json"))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "a"}))
    vocab = HFTokenizerVocabulary(str(tmp_path))
    assert vocab.eos_id == 1 and vocab.unk_id == 2 and not vocab.id0_is_special
    with pytest.raises(DataError, match="tokenizer.json or a directory"):
        get_vocabulary(str(tmp_path / "nothing_here"))


# ----------------------------------------------------------------------------- import dir

def _cli(argv):
    """`ifp import-hf ...` through the sub-command's own argparse definition."""
    import argparse
    parser = argparse.ArgumentParser(prog="ifp")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.fn(args)


def _abstract(params):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])), params)


def test_import_dir_round_trip(models, tmp_path, capsys):
    src = models["mha_tied_theta_headdim"][0]
    out = str(tmp_path / "imp")
    _cli(["import-hf", src, "--out", out])
    assert "imported" in capsys.readouterr().out
    meta, cfg = imported.load_import(out)
    assert meta["kind"] == "llm" and meta["source"] == os.path.abspath(src)
    assert meta["vocabulary"] == os.path.join(out, "tokenizer.json")
    assert os.path.isfile(os.path.join(out, "tokenizer_config.json"))
    hf_config, tensors = read_hf_checkpoint(src)
    assert meta["hf_config"] == hf_config and cfg == model_config_from_hf(hf_config)
    expected = params_from_hf(tensors, cfg)
    _assert_trees_equal(imported.restore_import_params(out, _abstract(expected)), expected)
    # Another layout and vocab padding, and a backbone-like target without lm_head.
    other = replace(cfg, scan_layers=False, vocab_pad_multiple=1, tie_embeddings=False)
    want = params_from_hf({**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]},
                          other)
    del want["lm_head"]
    _assert_trees_equal(imported.restore_import_params(out, _abstract(want)), want)
    with pytest.raises(ConfigError, match=r"import .*: parameter .* this model needs"):
        imported.restore_import_params(out, _abstract(params_from_hf(
            read_hf_checkpoint(models["gqa"][0])[1],
            model_config_from_hf(read_hf_checkpoint(models["gqa"][0])[0]))))


def test_first_layers_import_is_transformers_cut_to_those_layers(models, tmp_path):
    """--layers N: the import is the source's first N layers; transformers loading the same
    checkpoint with num_hidden_layers=N (later layers' weights unused) gives the same logits."""
    import torch
    from transformers import LlamaForCausalLM
    src = models["mha_tied_theta_headdim"][0]
    out = str(tmp_path / "cut")
    _cli(["import-hf", src, "--out", out, "--as", "predictor", "--layers", "1"])
    meta, cfg = imported.load_import(out)
    assert (meta["kind"], cfg.n_layers, meta["hf_config"]["num_hidden_layers"]) == \
        ("predictor", 1, 1)
    ref_model = LlamaForCausalLM.from_pretrained(src, num_hidden_layers=1,
                                                 torch_dtype=torch.float32)
    ours_cfg = replace(cfg, attention="xla")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = imported.restore_import_params(out, jax.tree_util.tree_map(
        lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=device),
        param_shapes(ours_cfg), is_leaf=lambda x: isinstance(x, tuple)))
    tokens = _tokens(cfg.vocab_size)
    ref = hf_logits(ref_model, tokens)
    full = hf_logits(models["mha_tied_theta_headdim"][1], tokens)
    assert np.abs(ref - full).max() > 1e-2  # the second layer matters: the cut is a real test
    np.testing.assert_allclose(_ours(params, ours_cfg, tokens), ref, atol=1e-4, rtol=0)
    for bad in ("0", "3"):
        with pytest.raises(ConfigError, match=r"--layers .*pass 1\.\.2"):
            _cli(["import-hf", src, "--out", str(tmp_path / "never"), "--layers", bad])
    assert not os.path.exists(tmp_path / "never")


def test_existing_out_is_refused_and_untouched(models, tmp_path):
    src = models["gqa"][0]
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for flags in ([], ["--overwrite"]):  # --overwrite only replaces an earlier import
        with pytest.raises(ConfigError, match="--out"):
            _cli(["import-hf", src, "--out", str(out), *flags])
        assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    imp = str(tmp_path / "imp")
    import_hf(src, imp)
    import_hf(models["mha_tied_theta_headdim"][0], imp, kind="predictor", overwrite=True)
    assert imported.load_import(imp)[0]["kind"] == "predictor"
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_tokenizer_bigger_than_the_model_is_refused(models, tmp_path):
    small = str(tmp_path / "small")
    make_random_llama(small, vocab=270, tokenizer=False, **VARIANTS["gqa"])
    make_tokenizer(small, 300)
    with pytest.raises(DataError, match="vocab_size=270"):
        import_hf(small, str(tmp_path / "never"))
    assert not os.path.exists(tmp_path / "never")
    # An import dir whose tokenizer was swapped afterwards: train refuses before any write.
    imp = str(tmp_path / "imp")
    os.remove(os.path.join(small, "tokenizer.json"))
    import_hf(small, imp)
    make_tokenizer(imp, 300)
    meta = json.loads(open(os.path.join(imp, "ifp_import.json")).read())
    meta["vocabulary"] = os.path.join(imp, "tokenizer.json")
    with open(os.path.join(imp, "ifp_import.json"), "w") as f:
        json.dump(meta, f)
    cfg = tiny_config(steps=1)
    cfg = replace(cfg, train=replace(cfg.train, init_llm_from=imp))
    with pytest.raises(DataError, match="its model's vocab_size=270"):
        train(cfg, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_adoption_refusals_and_predictor_backbone(models, tmp_path):
    imp = str(tmp_path / "imp")
    import_hf(models["gqa"][0], imp, kind="predictor")
    cfg = tiny_config()
    as_llm = replace(cfg, train=replace(cfg.train, init_llm_from=imp))
    with pytest.raises(ConfigError, match="--as llm"):
        imported.adopt_imports(as_llm)
    adopted = imported.adopt_imports(replace(cfg, train=replace(cfg.train,
                                                                init_predictor_from=imp)))
    backbone = adopted.predictor.backbone
    assert (backbone.d_model, backbone.d_ffn, backbone.vocab_size, backbone.max_len) == \
        (32, 64, 320, 128)
    assert backbone.scan_layers == cfg.predictor.backbone.scan_layers
    assert adopted.data.predictor_vocabulary == os.path.join(imp, "tokenizer.json")
    assert adopted.model == cfg.model and adopted.data.vocabulary == "byte"
    llm = str(tmp_path / "llm")
    import_hf(models["gqa"][0], llm)  # d_ffn = 64
    big_k = replace(cfg, pruning=replace(cfg.pruning, keep_k=64),
                    model=replace(cfg.model, d_ffn=256),
                    train=replace(cfg.train, init_llm_from=llm))
    imported.adopt_imports(big_k)  # k = F is fine
    with pytest.raises(ConfigError, match=r"pruning\.keep_k=65 exceeds"):
        imported.adopt_imports(replace(big_k, pruning=replace(big_k.pruning, keep_k=65)))


# ----------------------------------------------------------------------------- training

def test_train_from_an_import(tmp_path):
    """2 dense steps with lr_llm=0 from an imported llama: the decoder stays the import, the
    first logged loss is transformers' loss on that batch, config.json holds the adoption."""
    src = str(tmp_path / "hf")
    model = make_random_llama(src, vocab=320, hidden=48, heads=4, kv_heads=2, intermediate=96,
                              rope_theta=5e5, seed=3)
    imp = str(tmp_path / "imp")
    import_hf(src, imp)
    cfg = tiny_config(name="from_hf", mode="dense", steps=2, mixture="ifp_skill_reverse")
    cfg = replace(cfg, optimizer=replace(cfg.optimizer, lr_llm=0.0),
                  train=replace(cfg.train, init_llm_from=imp, log_every=1))
    workdir = str(tmp_path / "run")
    state = train(cfg, workdir)

    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert {k: saved["model"][k] for k in ("vocab_size", "d_model", "d_ffn", "head_dim",
                                           "rope_theta", "max_len")} == \
        {"vocab_size": 320, "d_model": 48, "d_ffn": 96, "head_dim": 12, "rope_theta": 5e5,
         "max_len": 128}
    assert saved["data"]["vocabulary"] == os.path.join(imp, "tokenizer.json")
    adopted = imported.adopt_imports(cfg)
    _, tensors = read_hf_checkpoint(src)
    _assert_trees_equal(jax.device_get(state.params["decoder"]),
                        params_from_hf(tensors, adopted.model))

    batch = pipeline.make_train_batches(adopted.data, cfg.predictor.max_prompt_len).batch_at(0)
    assert batch["decoder_target_tokens"].max() >= 259  # BPE merges beyond the 256 bytes
    logits = hf_logits(model, batch["decoder_input_tokens"])
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    ce = -np.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
    w = batch["decoder_loss_weights"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        first = next(json.loads(line) for line in f if "loss" in line)
    np.testing.assert_allclose(first["loss"], (ce * w).sum() / w.sum(), rtol=1e-4)

    # A stage chained from this run (CPT -> SFT) keeps the import's tokenizer and architecture:
    # the experiment's default byte vocabulary would feed the BPE model byte ids.
    chained = tiny_config(name="chained", mode="soft", steps=1, mixture="ifp_skill_reverse")
    chained = replace(chained, train=replace(chained.train, init_llm_from=workdir))
    assert chained.data.vocabulary == "byte"
    after = imported.adopt_imports(chained)
    assert after.data.vocabulary == os.path.join(imp, "tokenizer.json")
    assert (after.model.d_ffn, after.model.vocab_size, after.model.rope_theta) == (96, 320, 5e5)
    np.testing.assert_array_equal(
        pipeline.make_train_batches(after.data, cfg.predictor.max_prompt_len).batch_at(0)[
            "decoder_target_tokens"], batch["decoder_target_tokens"])


def test_an_import_into_a_bucket_restores_the_same_params(models, bucket):
    """`ifp import-hf --out gs://...`: uploaded with its marker last; params read by orbax from
    the bucket; the tokenizer fetched beside its side files."""
    src = models["mha_tied_theta_headdim"][0]
    out = f"{bucket}/imports/imp"
    _cli(["import-hf", src, "--out", out])
    assert is_import_dir(out)
    meta, cfg = imported.load_import(out)
    assert os.path.isfile(meta["vocabulary"])  # a local copy tokenizers can open
    assert os.path.isfile(os.path.join(os.path.dirname(meta["vocabulary"]),
                                       "tokenizer_config.json"))
    hf_config, tensors = read_hf_checkpoint(src)
    expected = params_from_hf(tensors, model_config_from_hf(hf_config))
    _assert_trees_equal(imported.restore_import_params(out, _abstract(expected)), expected)
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):
        _cli(["import-hf", src, "--out", out])
