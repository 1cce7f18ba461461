"""Config system: typed overrides, one-line errors naming the closest key, JSON round trip."""

import json

import pytest

from ifp_jax import experiments
from ifp_jax.commands import main as cli
from ifp_jax.config import (ConfigError, ExperimentConfig, apply_overrides, from_dict, to_json)


def test_overrides_are_typed_and_nested():
    cfg = apply_overrides(experiments.get("tiny_multiskill"),
                          ["pruning.keep_k=64", "optimizer.lr_llm=1e-3", "model.tie_embeddings=true",
                           "data.rates={ifp_cpt_stdlib: 0.5}", "pruning.eval_mask=hard"])
    assert cfg.pruning.keep_k == 64 and isinstance(cfg.optimizer.lr_llm, float)
    assert cfg.optimizer.lr_llm == 1e-3 and cfg.model.tie_embeddings is True
    assert cfg.data.rates == {"ifp_cpt_stdlib": 0.5} and cfg.pruning.eval_mask == "hard"


@pytest.mark.parametrize("override, fragment", [
    ("prunning.keep_k=3", "did you mean 'pruning'"),
    ("pruning.kep_k=3", "did you mean 'pruning.keep_k'"),
    ("pruning.keep_k=abc", "must be an integer"),
    ("pruning.keep_k=0", "pruning.keep_k=0 must be in 1..model.d_ffn=512"),
    ("pruning.keep_k=513", "must be in 1..model.d_ffn=512"),
    ("pruning.mode=sparse", "must be one of"),
    ("model=3", "is a section"),
    ("train.steps", "must look like section.key=value"),
    ("model.n_kv_heads=3", "multiple of"),
])
def test_bad_overrides_fail_with_one_line(override, fragment):
    with pytest.raises(ConfigError) as e:
        apply_overrides(experiments.get("tiny_multiskill"), [override])
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_json_round_trip():
    cfg = apply_overrides(experiments.get("tiny_multiskill"), ["pruning.keep_k=32"])
    assert from_dict(ExperimentConfig, json.loads(to_json(cfg))) == cfg


def test_unknown_experiment_names_closest():
    with pytest.raises(ConfigError, match="did you mean 'tiny_multiskill'"):
        experiments.get("tiny_multiskil")


def test_cli_config_error_is_one_line(capsys):
    assert cli.main(["config", "tiny_multiskill", "pruning.kep_k=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ifp: error:") and "pruning.keep_k" in err and "\n" not in err


def test_cli_config_prints_resolved(capsys):
    assert cli.main(["config", "tiny_multiskill", "train.steps=7"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["steps"] == 7
