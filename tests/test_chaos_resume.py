"""SIGKILL chaos (tests/chaos.py): 10 kills during start-up, steps, async saves and evaluations,
with 1 and with 2 processes; the rerun ends bitwise where an uninterrupted run ends.

Marked slow (`make test-all`): on this 2-core VM the test took 21 minutes (1280 s) with nothing
else running: 508 s for 1 process and 771 s for 2 (twice that while other work shared the cores);
each restart re-imports TensorFlow and JAX and reads the XLA compilation cache.
"""

import pytest

from tests import chaos


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
