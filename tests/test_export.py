"""`ifp export`: the small dense model of one selection, in HF / orbax / GGUF, equals the masked
model it came from (transformers as the independent reference for the HF files)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifp_jax import sharding as shd
from ifp_jax.config import ConfigError
from ifp_jax.vocab.light import get_light_vocabulary
from ifp_jax.export.orbax_io import load_exported
from ifp_jax.export.run import export_workdir
from ifp_jax.selection.units import Selection
from ifp_jax.train import checkpoint as ckpt_lib
from ifp_jax.train.loop import train
from ifp_jax.train.state import build_model, params_layout
from tests.helpers import tiny_config

PROMPT = "reverse abcde ="
TOL = 1e-4  # f32 logits of a 2-layer d=32 model: exact folding leaves ~1e-6


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short IFP run (soft mode, lambda eval mask) to export from, with its params."""
    workdir = str(tmp_path_factory.mktemp("export_src"))
    cfg = tiny_config(name="test_export", steps=6, mixture="ifp_multiskill")
    train(cfg, workdir)
    model = build_model(cfg)
    step, params = ckpt_lib.restore_latest_params(
        workdir, params_layout(model, cfg, shd.make_mesh(cfg.mesh)))
    return cfg, workdir, model, jax.device_get(params)


@pytest.fixture(scope="module", params=["lambda", "hard"])
def exported(run, request, tmp_path_factory):
    cfg, workdir, model, params = run
    out = str(tmp_path_factory.mktemp("exp") / request.param)
    meta = export_workdir(workdir, out, prompt=PROMPT, eval_mask=request.param, log=lambda m: None)
    return request.param, out, meta


def _masked_logits(model, params, mask_lf, tokens):
    batch = {"predictor_tokens": jnp.ones((tokens.shape[0], 4), jnp.int32),
             "decoder_input_tokens": jnp.asarray(tokens)}
    mask = jnp.broadcast_to(jnp.asarray(mask_lf), (tokens.shape[0],) + mask_lf.shape)
    return np.asarray(model.apply({"params": params}, batch, mode="given",
                                  given_mask=mask).logits)


def _tokens(cfg, n=2, t=12, seed=0):
    return np.random.default_rng(seed).integers(3, cfg.model.vocab_size, (n, t)).astype(np.int32)


def test_metadata_names_the_selection(run, exported):
    cfg, workdir, _, _ = run
    eval_mask, out, meta = exported
    with open(os.path.join(out, "export.json")) as f:
        assert json.load(f) == meta
    assert meta["text"] == PROMPT and meta["selected_by"] == "prompt"
    assert meta["source_workdir"] == os.path.abspath(workdir) and meta["source_step"] == 6
    idx = np.asarray(meta["kept_units"])
    assert idx.shape == (cfg.model.n_layers, cfg.pruning.keep_k)
    assert all(np.all(np.diff(row) > 0) for row in idx)  # ascending, distinct
    assert meta["eval_mask"] == eval_mask and len(meta["content_hash"]) == 64


def test_orbax_export_is_the_gathered_masked_model(run, exported):
    """The orbax small model reproduces the masked model's logits, and reloads exactly."""
    cfg, _, model, params = run
    eval_mask, out, meta = exported
    small_cfg, small, vocab = load_exported(out)
    assert small_cfg.d_ffn == cfg.pruning.keep_k and vocab == "byte"
    from ifp_jax.export.manifest import content_hash
    assert content_hash(small) == meta["content_hash"]  # identical params after the round trip
    # The mask the masked model multiplies by: recompute the selection independently.
    from ifp_jax.vocab.light import get_light_vocabulary
    from ifp_jax.selection.prompt import predictor_tokens
    from ifp_jax.selection.units import select_units
    sel = select_units(model, params, cfg, predictor_tokens(
        get_light_vocabulary("byte"), PROMPT, cfg.predictor.max_prompt_len), eval_mask)
    np.testing.assert_array_equal(sel.keep_idx, np.asarray(meta["kept_units"]))
    if eval_mask == "hard":
        np.testing.assert_array_equal(sel.scale, 1.0)
    tokens = _tokens(cfg)
    want = _masked_logits(model, params, sel.dense_mask(cfg.model.d_ffn), tokens)
    from ifp_jax.model.decoder import Decoder
    got = np.asarray(Decoder(small_cfg).apply({"params": small}, jnp.asarray(tokens)))
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_hf_export_loads_in_transformers_with_the_masked_logits(run, exported):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg, _, model, params = run
    eval_mask, out, meta = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(out, "hf"))
    assert hf.config.intermediate_size == cfg.pruning.keep_k
    sel = Selection(np.asarray(meta["kept_units"], np.int32), _scales(run, eval_mask),
                    "soft", eval_mask)
    tokens = _tokens(cfg, seed=1)
    want = _masked_logits(model, params, sel.dense_mask(cfg.model.d_ffn), tokens)
    with torch.no_grad():
        got = hf(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(out, "hf"))
    ids = tok(PROMPT, add_special_tokens=False).input_ids
    assert ids == get_light_vocabulary("byte").encode(PROMPT)
    with open(os.path.join(out, "hf", "ifp_export.json")) as f:
        assert json.load(f)["content_hash"] == meta["content_hash"]


def _scales(run, eval_mask):
    cfg, _, model, params = run
    from ifp_jax.selection.prompt import predictor_tokens
    from ifp_jax.selection.units import select_units
    return select_units(model, params, cfg, predictor_tokens(
        get_light_vocabulary("byte"), PROMPT, cfg.predictor.max_prompt_len), eval_mask).scale


def test_gguf_export_reads_back_to_the_hf_tensors(run, exported):
    from ifp_jax.gguf_file.gguf_writer import read_gguf
    from ifp_jax.hf.weights import hf_from_params
    eval_mask, out, meta = exported
    small_cfg, small, _ = load_exported(out)
    _, tensors, gguf_meta, _ = read_gguf(os.path.join(out, "gguf", "model.gguf"))
    want = hf_from_params(small, small_cfg)
    assert set(tensors) == set(want)
    for name, arr in want.items():  # the default --gguf-type f16: norms stay f32
        stored = np.float16 if arr.ndim > 1 else np.float32
        assert tensors[name].dtype == stored, name
        np.testing.assert_array_equal(tensors[name], arr.astype(stored), err_msg=name)
    assert gguf_meta["content_hash"] == meta["content_hash"]
    assert [list(r) for r in gguf_meta["kept_units"]] == meta["kept_units"]
    report = meta["gguf"]
    assert report["type"] == "f16"
    assert report["file_bytes"] == os.path.getsize(os.path.join(out, "gguf", "model.gguf"))
    assert 0 < report["vs_f32"]["max_abs_logit_diff"] < 1e-2
    with open(os.path.join(out, "export.json")) as f:
        assert json.load(f)["gguf"] == report


def _transformers_logits(hf_config, tensors, ids):
    """Logits [B, T, V] of transformers' LlamaForCausalLM holding `tensors` (HF names)."""
    import torch
    import transformers
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config)).eval()
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in
                           tensors.items()}, strict=False)
    if hf_config.get("tie_word_embeddings"):
        model.tie_weights()
    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("gguf_type", ["f32", "q8_0", "q4_0"])
def test_quantised_gguf_report_matches_transformers_on_the_read_back_file(run, tmp_path,
                                                                          gguf_type):
    """export.json's logit error of the GGUF vs f32, recomputed independently: transformers on
    the f32 HF export vs transformers on the file's dequantised tensors, on the same texts."""
    pytest.importorskip("transformers")
    from ifp_jax.export.gguf_report import _batch
    from ifp_jax.gguf_file.gguf_writer import read_gguf
    from ifp_jax.hf.weights import read_hf_checkpoint
    _, workdir, _, _ = run
    out = str(tmp_path / gguf_type)
    meta = export_workdir(workdir, out, prompt=PROMPT, formats=("hf", "gguf"),
                          gguf_type=gguf_type, log=lambda m: None)
    report = meta["gguf"]
    hf_config, hf_tensors = read_hf_checkpoint(os.path.join(out, "hf"))
    _, gguf_tensors, _, _ = read_gguf(os.path.join(out, "gguf", "model.gguf"))
    ids, real = _batch("byte", tuple(report["vs_f32"]["texts"]), hf_config[
        "max_position_embeddings"])
    want = _transformers_logits(hf_config, hf_tensors, ids)
    got = _transformers_logits(hf_config, gguf_tensors, ids)
    diff = np.abs(got - want).max(-1)[real]
    assert report["vs_f32"]["positions"] == int(real.sum())
    np.testing.assert_allclose(report["vs_f32"]["max_abs_logit_diff"], diff.max(), rtol=1e-2,
                               atol=1e-4)
    np.testing.assert_allclose(report["vs_f32"]["top1_agreement"],
                               (got.argmax(-1) == want.argmax(-1))[real].mean(), atol=0.02)
    assert report["file_bytes"] == os.path.getsize(os.path.join(out, "gguf", "model.gguf"))
    if gguf_type == "f32":  # the forwards are skipped only because the weights read back equal
        assert report["vs_f32"] == dict(report["vs_f32"], max_abs_logit_diff=0.0,
                                        top1_agreement=1.0, weights_bit_exact=True)
    else:
        assert diff.max() > 1e-4  # the weights really were quantised
        assert report["vs_f32"]["weights_bit_exact"] is False
    print(f"{gguf_type}: {report['file_bytes']} bytes, max |dlogit| "
          f"{report['vs_f32']['max_abs_logit_diff']:.3g}, top-1 "
          f"{report['vs_f32']['top1_agreement']:.3f}")


def test_task_export_uses_the_skill_instruction(run, tmp_path):
    from ifp_jax.data import skills
    _, workdir, _, _ = run
    meta = export_workdir(workdir, str(tmp_path / "t"), task="ifp_skill_reverse",
                          formats=("orbax",), log=lambda m: None)
    assert meta["selected_by"] == "task"
    assert meta["text"] == skills.SKILLS["reverse"].wordings[0]
    with pytest.raises(ConfigError, match="--instruction"):
        export_workdir(workdir, str(tmp_path / "u"), task="no_such_task", log=lambda m: None)
    assert not os.path.exists(tmp_path / "u")


def test_existing_out_is_refused_untouched_and_replaced_with_overwrite(run, tmp_path):
    _, workdir, _, _ = run
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--overwrite"):
        export_workdir(workdir, str(out), prompt=PROMPT, formats=("orbax",), log=lambda m: None)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="empty"):
        export_workdir(workdir, str(tmp_path / "e"), prompt="  ", log=lambda m: None)
    export_workdir(workdir, str(out), prompt=PROMPT, formats=("orbax",), overwrite=True,
                   log=lambda m: None)
    assert not (out / "keep.txt").exists() and (out / "orbax" / "ifp_model.json").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".ifp-export-")]


def test_light_vocabulary_matches_seqio_byte_ids():
    import seqio
    v, light = seqio.ByteVocabulary(), get_light_vocabulary("byte")
    text = "héllo wörld = 42"
    assert light.encode(text) == list(v.encode(text))
    assert light.decode(v.encode(text) + [1, 0]) == v.decode(list(v.encode(text)))


def test_open_run_gives_the_runs_config_and_its_latest_params(run):
    from ifp_jax.train.runs import open_run
    cfg, workdir, model, params = run
    opened = open_run(workdir)
    assert opened.cfg == cfg and opened.step == cfg.train.steps
    assert dict(opened.mesh.shape) == dict(shd.make_mesh(cfg.mesh).shape)
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(opened.params), params)


def test_open_run_of_a_directory_without_a_run_is_one_line(run, tmp_path):
    import shutil

    from ifp_jax.train.runs import open_run
    with pytest.raises(ConfigError, match="config.json not found"):
        open_run(str(tmp_path))
    shutil.copy(os.path.join(run[1], "config.json"), tmp_path / "config.json")
    with pytest.raises(ConfigError, match="no checkpoint in .*: train that stage first"):
        open_run(str(tmp_path), hint="train that stage first")


def test_bit_exact_read_back_needs_every_path_and_bit():
    from ifp_jax.export.gguf_report import _bit_exact
    a = {"x": np.arange(4, dtype=np.float32), "y": {"z": np.ones((2, 2), np.float32)},
         "embed_tokens": {"embedding": np.ones((8, 2), np.float32)}}  # vocabulary 6, padded to 8
    same = {"x": a["x"].copy(), "y": {"z": a["y"]["z"].copy()},
            "embed_tokens": {"embedding": np.concatenate([np.ones((6, 2)), np.zeros((2, 2))])
                             .astype(np.float32)}}  # only the padding rows differ
    assert _bit_exact(same, a, vocab_size=6)
    assert not _bit_exact(same, a, vocab_size=7)
    nudged = dict(same, x=np.nextafter(a["x"], np.float32(9)))  # one ulp each
    assert not _bit_exact(nudged, a, vocab_size=6)
    assert not _bit_exact({"x": a["x"]}, a, vocab_size=6)
