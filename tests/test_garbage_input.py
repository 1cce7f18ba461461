"""Generated garbage thrown at the config parser and the JSONL readers (hypothesis): every input
either parses or fails with a one-line ConfigError/DataError; never another exception."""

import json
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ifp_jax.config import ConfigError, ExperimentConfig, apply_overrides, to_dict, validate
from ifp_jax.data.errors import DataError
from ifp_jax.data.user_tasks import is_multitask, read_jsonl, read_user_tasks

BASE = ExperimentConfig()


def _dotted(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and prefix + k != "data.rates":  # a section
            yield from _dotted(v, prefix + k + ".")
        yield prefix + k


KEYS = sorted(_dotted(to_dict(BASE)))
text = st.text(alphabet=string.printable + "éλ\x00\u2028", max_size=24)
values = st.one_of(text, st.integers(-10**12, 10**12).map(str), st.floats().map(repr),
                   st.sampled_from(["true", "false", "null", "[]", "{}", "{a: 1}", "[1, 2",
                                    "'", "1e-3", "-0", "nan", "inf", "~", "&a", "!!python/int 3"]))
override = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), values),
    st.builds(lambda k, v: f"{k}={v}", text, values),
    text)


def _one_line_or_ok(fn, *args, errors=(ConfigError,)):
    try:
        return fn(*args)
    except errors as e:
        assert "\n" not in str(e).strip(), repr(str(e))
        assert str(e).strip(), "an empty error message"
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(override, max_size=4))
def test_config_overrides_parse_or_fail_in_one_line(items):
    cfg = _one_line_or_ok(apply_overrides, BASE, items)
    if cfg is not None:
        _one_line_or_ok(validate, cfg)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.binary(max_size=40),
    st.builds(lambda p, r: json.dumps({"prompt": p, "response": r}).encode(), text, text),
    st.builds(lambda o: json.dumps(o).encode(),
              st.dictionaries(st.sampled_from(["prompt", "response", "task", "x"]),
                              st.one_of(text, st.integers(), st.none(), st.lists(text)))),
), max_size=6))
def test_jsonl_files_parse_or_fail_in_one_line(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("garbage") / "tasks.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    examples = _one_line_or_ok(read_jsonl, str(path), errors=(DataError,))
    if examples is not None:
        assert all(isinstance(e["prompt"], str) and e["prompt"].strip() for e in examples)
    if is_multitask(str(path)):  # lines with "task": the multi-task reader and its checks
        _one_line_or_ok(read_user_tasks, str(path), errors=(DataError,))
