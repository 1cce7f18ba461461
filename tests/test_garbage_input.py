"""Generated garbage thrown at the config parser, the JSONL readers and `ifp train` (hypothesis):
every input either parses or fails with a one-line ConfigError/DataError, never another
exception, and a rejected `ifp train` leaves no workdir."""

import json
import os
import string

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ifp_jax import experiments
from ifp_jax.commands import main as cli
from ifp_jax.config import ConfigError, ExperimentConfig, apply_overrides, to_dict, validate
from ifp_jax.errors import DataError
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


def _fails_to_parse(items) -> bool:
    try:
        apply_overrides(experiments.get("tiny_multiskill"), items)
    except ConfigError:
        return True
    return False


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.filter_too_much])
@given(st.lists(override, min_size=1, max_size=3), st.booleans())
def test_garbage_overrides_stop_train_in_one_line_without_a_workdir(tmp_path_factory, capsys,
                                                                    items, after):
    """`ifp train` with overrides that do not parse: exit 2, one line, and no workdir (only
    rejected overrides are drawn: accepted ones would start a real run). Overrides go before
    --workdir or after it; after it, argparse itself refuses a word without '='."""
    assume(not any(item.startswith("-") for item in items))  # argparse options, not overrides
    assume(not after or all("=" in item for item in items))
    assume(_fails_to_parse(items))
    workdir = str(tmp_path_factory.mktemp("garbage_train") / "run")
    argv = (["--workdir", workdir, *items] if after else [*items, "--workdir", workdir])
    code = cli.main(["train", "tiny_multiskill", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("ifp: error: ") and err.count("\n") == 1, err
    assert not os.path.exists(workdir)
