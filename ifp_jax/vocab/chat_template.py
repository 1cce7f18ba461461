"""A tokenizer's chat template, rendered as transformers' `apply_chat_template` renders it.

The template is the jinja source in tokenizer_config.json's "chat_template" (a string, or a list
of {"name", "template"} whose "default" is used) or in chat_template.jinja beside tokenizer.json.
It runs in jinja2's ImmutableSandboxedEnvironment with transformers' settings (trim_blocks,
lstrip_blocks, loopcontrols; tojson without HTML escaping, raise_exception, strftime_now) and
sees `messages`, `add_generation_prompt` and the special tokens (bos_token, eos_token, unk_token,
pad_token) by name. The rendered text is tokenized without the post-processor's specials
(vocab/decoder_prefix.py): the template writes its own.
"""

from __future__ import annotations

import functools
import json
import os
from datetime import datetime

from ifp_jax.errors import DataError

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _directory(vocabulary: str) -> str:
    path = os.path.abspath(os.path.expanduser(vocabulary))
    return os.path.dirname(path) if path.endswith(".json") else path


def template_source(vocabulary: str) -> str:
    """The jinja source of `vocabulary`'s chat template; one-line DataError when it has none."""
    fix = ("use a model whose tokenizer has one (an Instruct model's tokenizer_config.json "
           "\"chat_template\"), or drop --chat / data.chat_template")
    if vocabulary == "byte" or vocabulary.endswith(".model"):
        raise DataError(f"vocabulary {vocabulary!r} has no chat template; {fix}")
    directory = _directory(vocabulary)
    jinja_file = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(jinja_file):
        with open(jinja_file, encoding="utf-8") as f:
            return f.read()
    config = os.path.join(directory, "tokenizer_config.json")
    template = None
    if os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            template = json.load(f).get("chat_template")
    if isinstance(template, list):  # named templates: transformers' default is "default"
        template = {t.get("name"): t.get("template") for t in template}.get("default")
    if not isinstance(template, str) or not template.strip():
        raise DataError(f"{directory} has no chat template (tokenizer_config.json "
                        f"\"chat_template\" or chat_template.jinja); {fix}")
    return template


def special_tokens(vocabulary: str) -> dict[str, str]:
    """{'bos_token': '<s>', ...}: the names the template may use (tokenizer_json's reading)."""
    from ifp_jax.vocab.tokenizer_json import special_token_names
    return special_token_names(_directory(vocabulary))


@functools.lru_cache(maxsize=None)
def _compiled(source: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes HTML characters; transformers' does not.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, _Generation])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _generation_extension():
    import jinja2.ext
    import jinja2.nodes

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (marks assistant text for transformers'
        assistant masks): rendered as its body."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(
                lineno)

        def _body(self, caller):
            return caller()

    return Generation


_Generation = _generation_extension()


def render(vocabulary: str, messages: list[dict], *, add_generation_prompt: bool) -> str:
    """The chat `messages` ([{'role', 'content'}]) as `vocabulary`'s template writes them.

    A special token the template uses but the tokenizer does not name is a one-line DataError
    (transformers would render it as ''; a model would then miss its BOS silently)."""
    import jinja2
    import jinja2.meta
    source = template_source(vocabulary)
    names = special_tokens(vocabulary)
    template = _compiled(source)
    used = jinja2.meta.find_undeclared_variables(template.environment.parse(source))
    missing = sorted(k for k in _SPECIAL_KEYS if k in used and k not in names)
    if missing:
        raise DataError(f"{_directory(vocabulary)}: the chat template uses {', '.join(missing)} "
                        f"but the tokenizer names none; add \"{missing[0]}\" to its "
                        f"tokenizer_config.json")
    try:
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               **names)
    except jinja2.exceptions.TemplateError as e:
        raise DataError(f"{_directory(vocabulary)}: its chat template failed ({e}); fix the "
                        f"template or drop --chat / data.chat_template") from None


def user_prompt(vocabulary: str, prompt: str) -> str:
    """A user message, formatted for the assistant's reply (add_generation_prompt=True)."""
    return render(vocabulary, [{"role": "user", "content": prompt}], add_generation_prompt=True)


def assistant_reply(vocabulary: str, prompt: str, response: str, eos_token: str | None) -> str:
    """The text after `user_prompt(prompt)` in the whole exchange: the response and what the
    template ends the assistant turn with, cut before eos_token when that ends it (the pipeline
    appends the EOS id itself)."""
    before = user_prompt(vocabulary, prompt)
    whole = render(vocabulary, [{"role": "user", "content": prompt},
                                {"role": "assistant", "content": response}],
                   add_generation_prompt=False)
    if not whole.startswith(before):
        raise DataError(f"{_directory(vocabulary)}: the chat template does not write the "
                        f"assistant turn after its generation prompt; it cannot format SFT "
                        f"examples (drop data.chat_template)")
    reply = whole[len(before):]
    end = reply.rfind(eos_token) if eos_token else -1
    if eos_token and end >= len(response):
        reply = reply[:end]
    return reply
