"""data.chat_template: prompt/response examples formatted by the LLM tokenizer's chat template.

The prompt becomes a user message followed by the assistant's generation prompt (what `ifp
generate --chat` feeds the model), the response the assistant turn ended as the template ends it
(vocab/chat_template.py); the LLM and the predictor read the same formatted prompt text. The
decoder prefix is then () (vocab/decoder_prefix.py): the template writes its own BOS.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ifp_jax.tf_import import tf
from ifp_jax.vocab import chat_template


def chat_example(vocabulary: str, eos_token: str | None, prompt: str,
                 response: str) -> tuple[str, str]:
    """(formatted prompt, formatted response) of one example."""
    return (chat_template.user_prompt(vocabulary, prompt),
            chat_template.assistant_reply(vocabulary, prompt, response, eos_token))


def chat_formatted(dataset_fn: Callable, vocabulary: str) -> Callable:
    """`dataset_fn` (split, ...) -> tf.data of {'prompt', 'response'} strings, with both texts
    formatted by the chat template. The template is checked at once (a missing one is a
    one-line DataError at registration, not inside tf.data)."""
    from ifp_jax.vocab.tokenizer_json import HFTokenizerFile
    chat_template.render(vocabulary, [{"role": "user", "content": "x"}],
                         add_generation_prompt=True)
    file = HFTokenizerFile(vocabulary)
    eos_token = file.tokenizer.id_to_token(file.eos_id)

    def format_pair(prompt, response):
        p, r = chat_example(vocabulary, eos_token, prompt.decode("utf-8"),
                            response.decode("utf-8"))
        return np.bytes_(p.encode("utf-8")), np.bytes_(r.encode("utf-8"))

    def formatted(ex):
        p, r = tf.numpy_function(format_pair, [ex["prompt"], ex["response"]],
                                 [tf.string, tf.string], stateful=False)
        p.set_shape([])
        r.set_shape([])
        return {**ex, "prompt": p, "response": r}

    def fn(split, shuffle_files=False, seed=None):
        return dataset_fn(split, shuffle_files=shuffle_files, seed=seed).map(formatted)

    return fn
