"""One keep-the-last-P rule: the data pipeline and selection read a prompt alike."""

import numpy as np
import pytest

from ifp_jax.config import ConfigError
from ifp_jax.data.pipeline import to_contract
from ifp_jax.selection.prompt import kept_window, predictor_tokens
from ifp_jax.vocab.light import get_light_vocabulary


def test_kept_window_keeps_the_last_tokens():
    start, count = kept_window(np.array([3, 9, 4]), 4)
    assert start.tolist() == [0, 5, 0] and count.tolist() == [3, 4, 4]


@pytest.mark.parametrize("text", ["short", "a prompt much longer than the predictor reads, " * 3])
def test_training_rows_and_selection_give_the_predictor_the_same_tokens(text):
    vocab, p = get_light_vocabulary("byte"), 16
    ids = np.asarray(vocab.encode(text), np.int32)
    rows = to_contract({"predictor_tokens": [ids], "inputs": [ids[:4]],
                        "targets": [np.array([5, 6], np.int32)]}, predictor_max_len=p, seq_len=32,
                       prefix=(0,))
    one = predictor_tokens(vocab, text, p)
    np.testing.assert_array_equal(rows["predictor_tokens"], one)
    assert one[0, min(len(ids), p) - 1] == ids[-1]  # the last real token is the prompt's last
    assert rows["predictor_truncated"][0] == (len(ids) > p)


def test_an_empty_prompt_is_refused():
    with pytest.raises(ConfigError, match="prompt is empty"):
        predictor_tokens(get_light_vocabulary("byte"), "", 8)
