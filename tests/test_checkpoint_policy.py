"""checkpoint.every_minutes: a save at a logged step once that much time passed since the last
save, on top of checkpoint.every_steps."""

import os

from ifp_jax.config import replace
from ifp_jax.train.loop import train
from tests.helpers import tiny_config


def _saved_steps(workdir) -> list[int]:
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints"))
                  if n.isdigit())


def test_time_based_saves_happen_at_logged_steps_and_only_when_due(tmp_path):
    base = tiny_config(name="test_every_minutes", steps=8)
    base = replace(base, train=replace(base.train, log_every=4),
                   checkpoint=replace(base.checkpoint, every_steps=1000, keep=10))
    due = replace(base, checkpoint=replace(base.checkpoint, every_minutes=1e-6))
    train(due, str(tmp_path / "due"))
    assert _saved_steps(tmp_path / "due") == [4, 8]  # the logged steps; 8 is also the end
    never = replace(base, checkpoint=replace(base.checkpoint, every_minutes=600.0))
    train(never, str(tmp_path / "never"))
    assert _saved_steps(tmp_path / "never") == [8]  # the end only
