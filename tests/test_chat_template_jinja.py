"""Chat-template rendering vs transformers' apply_chat_template on templates that exercise the
jinja settings transformers uses (vocab/chat_template.py): block tags on their own lines
(trim_blocks, lstrip_blocks), `tojson` without HTML escaping, loop controls. The one-line
templates of tests/test_bos_chat.py render the same with or without those settings."""

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ifp_jax.vocab import chat_template

# Zephyr's layout: every block tag on its own, indented line, turns ended by eos_token.
BLOCK_LINES_TEMPLATE = (
    "{% for message in messages %}\n"
    "  {% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "  {% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "  {% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "  {% endif %}\n"
    "  {% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "  {% endif %}\n"
    "{% endfor %}")
# Messages as JSON (tool-calling templates do this), skipping empty ones with `continue`.
TOJSON_TEMPLATE = (
    "{% for m in messages %}{% if not m['content'] %}{% continue %}{% endif %}"
    "{{ m | tojson }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}")

CHATS = [[{"role": "user", "content": "add 12 & 30 <b>\"x\"</b> é"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ""},
          {"role": "user", "content": "sort dcba"}, {"role": "assistant", "content": "abcd"}]]


def _template_dir(tmp_path, template):
    from tests.hf_models import make_tokenizer
    directory = str(tmp_path / "tok")
    make_tokenizer(directory, 320)
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "pad_token": "<pad>", "chat_template": template}, f)
    return directory


@pytest.mark.parametrize("template", [BLOCK_LINES_TEMPLATE, TOJSON_TEMPLATE],
                         ids=["block_lines", "tojson"])
@pytest.mark.parametrize("chat", CHATS, ids=["user", "system_multi_turn"])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_rendering_equals_transformers_on_jinja_settings(tmp_path, template, chat,
                                                         generation_prompt):
    from transformers import AutoTokenizer
    directory = _template_dir(tmp_path, template)
    want = AutoTokenizer.from_pretrained(directory).apply_chat_template(
        chat, tokenize=False, add_generation_prompt=generation_prompt)
    assert chat_template.render(directory, chat,
                                add_generation_prompt=generation_prompt) == want
