"""Checks before training: an unwritable workdir and a disk too small for a checkpoint are one-line
errors before anything is built; the estimate counts every array of the state."""

import jax
import jax.numpy as jnp
import pytest

from ifp_jax.config import ConfigError
from ifp_jax.train import preflight


def test_an_unwritable_workdir_is_one_line_and_nothing_is_created(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    for workdir in (str(blocker / "run"), "/proc/ifp_no_such_dir/run"):
        with pytest.raises(ConfigError, match=r"workdir .* is not writable \(\w+Error: .*\); "
                                              r"choose another --workdir") as error:
            preflight.check_workdir_writable(workdir)
        assert "\n" not in str(error.value)
    preflight.check_workdir_writable(str(tmp_path / "new" / "run"))
    assert list((tmp_path / "new" / "run").iterdir()) == []  # the probe file is removed


def test_train_refuses_an_unwritable_workdir_before_building_anything(tmp_path):
    from ifp_jax.train.loop import train
    from tests.helpers import tiny_config
    (tmp_path / "a_file").write_text("in the way")
    with pytest.raises(ConfigError, match="not writable"):
        train(tiny_config(steps=1), str(tmp_path / "a_file" / "run"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_the_disk_estimate_counts_the_state_and_refuses_what_cannot_fit(tmp_path):
    state = {"params": jax.ShapeDtypeStruct((1000, 10), jnp.float32),
             "opt": (jax.ShapeDtypeStruct((1000, 10), jnp.float32),
                     jax.ShapeDtypeStruct((5,), jnp.int32)), "step": 3}
    one = preflight.state_bytes(state)
    assert one == 2 * 1000 * 10 * 4 + 5 * 4
    fine = preflight.check_disk(str(tmp_path), one, keep=2, free_bytes=10 * one)
    assert "up to 3 at once" in fine and "WARNING" not in fine
    tight = preflight.check_disk(str(tmp_path), one, keep=2, free_bytes=2 * one)
    assert "WARNING: fewer than 3 fit: lower checkpoint.keep" in tight
    with pytest.raises(ConfigError, match="one checkpoint needs .* GB; free space"):
        preflight.check_disk(str(tmp_path), one, keep=2, free_bytes=one - 1)


@pytest.mark.parametrize("override, fragment", [
    ("mesh.data=16", "devices"),  # more devices than there are: found when the mesh is built
    ("data.prepared_dir={empty}", "ifp data prepare"),  # found when the batches are built
])
def test_a_setup_error_leaves_no_workdir_behind(tmp_path, capsys, override, fragment):
    """`ifp train` writes config.json and its lock before it builds the mesh and the data; an
    error found there removes the workdir it had just created (an existing one is kept)."""
    from ifp_jax.commands import main as cli
    from tests.helpers import TINY_OVERRIDES
    (tmp_path / "empty").mkdir()
    workdir = tmp_path / "run"
    argv = ["train", "tiny_multiskill", "--workdir", str(workdir), *TINY_OVERRIDES,
            override.format(empty=tmp_path / "empty")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ifp: error:") and fragment in err[0], err
    assert not workdir.exists()
    workdir.mkdir()  # a workdir that existed before the call is left as it was
    (workdir / "notes.txt").write_text("mine")
    assert cli.main(argv) == 2
    assert (workdir / "notes.txt").read_text() == "mine"
