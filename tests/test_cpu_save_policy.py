"""checkpoint.async_save=auto: synchronous saves where JAX computes on the CPU (no copy of the
state in the step's own memory), with the arrays in flight to disk bounded; explicit choices win."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ifp_jax.config import CheckpointConfig, ConfigError, ExperimentConfig, apply_overrides
from ifp_jax.train import checkpoint as ckpt_lib
from ifp_jax.train.preflight import GB, save_bytes


def test_auto_is_synchronous_on_cpu_and_an_explicit_choice_wins():
    assert jax.default_backend() == "cpu"
    assert CheckpointConfig().async_save == "auto"
    assert not ckpt_lib.saves_async(CheckpointConfig())
    assert ckpt_lib.saves_async(CheckpointConfig(async_save=True))
    assert not ckpt_lib.saves_async(CheckpointConfig(async_save=False))


def test_overrides_take_auto_true_false_and_refuse_anything_else():
    for raw, want in (("auto", "auto"), ("true", True), ("false", False)):
        cfg = apply_overrides(ExperimentConfig(), [f"checkpoint.async_save={raw}"])
        assert cfg.checkpoint.async_save == want
    with pytest.raises(ConfigError, match="checkpoint.async_save' must be one of"):
        apply_overrides(ExperimentConfig(), ["checkpoint.async_save=sometimes"])


def test_the_write_limit_is_a_whole_gb_above_the_largest_array():
    assert ckpt_lib.write_limit_gb(0) is None  # a checkpointer that only reads
    assert ckpt_lib.write_limit_gb(10 << 20) == 1
    assert ckpt_lib.write_limit_gb(int(GB)) == 2  # orbax refuses an array at its limit
    assert ckpt_lib.write_limit_gb(int(2.5 * GB)) == 3
    state = {"a": jax.ShapeDtypeStruct((1000, 1000), jnp.float32)}  # 4 MB
    assert save_bytes(state, is_async=False, write_limit_gb=1) == 4_000_000  # all of it fits
    assert save_bytes(state, is_async=True, write_limit_gb=1) == 4_000_000
    big = {"a": jax.ShapeDtypeStruct((1000, 1000, 1000), jnp.float32)}  # 4 GB
    assert save_bytes(big, is_async=False, write_limit_gb=1) == int(GB)
    assert save_bytes(big, is_async=True, write_limit_gb=1) == 4 * int(GB)  # the whole copy


def test_a_bounded_synchronous_save_restores_exactly_and_its_params_read_alone(tmp_path):
    rng = np.random.default_rng(0)
    state = {"params": {"w": jnp.asarray(rng.normal(size=(256, 64)), jnp.float32),
                        "b": jnp.asarray(rng.normal(size=(64,)), jnp.float32)},
             "opt": {"mu": jnp.asarray(rng.normal(size=(256, 64)), jnp.float32)}}
    largest = max(x.nbytes for x in jax.tree_util.tree_leaves(state))
    ck = ckpt_lib.Checkpointer(str(tmp_path), CheckpointConfig(keep=2), largest_array_bytes=largest)
    ck.save(3, state, {"position": 7})
    ck.wait()
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    step, restored, data = ck.restore_latest(abstract)
    ck.close()
    assert step == 3 and data == {"position": 7}
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The reading path (stage chaining, export) uses orbax's default handlers on the same files.
    step, params = ckpt_lib.restore_latest_params(str(tmp_path), abstract["params"])
    assert step == 3
    np.testing.assert_array_equal(np.asarray(params["w"]), np.asarray(state["params"]["w"]))
