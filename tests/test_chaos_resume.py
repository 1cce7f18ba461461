"""SIGKILL chaos (tests/chaos.py): the rerun of a killed `ifp train` ends bitwise where an
uninterrupted run ends (every logged loss, the final params, the final evaluation).

CI runs the small scenario (chaos.SMALL): 1 process, 12 steps, 3 kills (during an async
checkpoint save, during training steps, during start-up), then a final uninterrupted attempt;
about 2 minutes on the 2-core VM (a reference run that compiles, then four launches reading the
XLA compilation cache).

The full scenario is marked slow (`make test-all`): 10 kills during start-up, steps, async saves
and evaluations, with 1 and with 2 processes; on this 2-core VM it took 21 minutes (1280 s) with
nothing else running: 508 s for 1 process and 771 s for 2 (twice that while other work shared the
cores); each restart re-imports TensorFlow and JAX and reads the XLA compilation cache.
"""

import pytest

from tests import chaos


def test_three_sigkills_save_step_startup_resume_bitwise(tmp_path):
    report = chaos.run(str(tmp_path), processes=1, kills=len(chaos.SMALL_PHASES), seed=0,
                       scale=chaos.SMALL, phases=chaos.SMALL_PHASES)
    text = "\n".join(report)
    assert [line.split()[0] for line in report] == list(chaos.SMALL_PHASES), text
    assert all(": killed at " in line for line in report), text
    save, step = report[chaos.SMALL_PHASES.index("save")], report[chaos.SMALL_PHASES.index("step")]
    # The save kill landed while the async checkpoint write was in flight (not after it).
    assert "save was torn" in save or "save had not started writing" in save, save
    assert ", after step " in step, step


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_sigkill_at_random_moments_resumes_bitwise(tmp_path, processes):
    report = chaos.run(str(tmp_path), processes=processes, kills=10, seed=processes)
    assert len(report) == 10
    assert all(": killed at " in line for line in report), "\n".join(report)
    phases = [line.split()[0] for line in report]
    assert all(phases.count(p) >= 2 for p in chaos.PHASES), phases
    evals = [line for line in report if line.startswith("eval")]
    assert all("evaluation was running" in line for line in evals), "\n".join(evals)
