"""metrics.jsonl stays one JSON object per line across a kill in the middle of a write."""

import json
import os

from ifp_jax.train.metrics import MetricsWriter, drop_torn_tail


def test_a_torn_last_line_is_dropped_and_appending_resumes_cleanly(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.25}\n{"step": 3, "lo')
    writer = MetricsWriter(str(tmp_path), total_steps=4)
    writer.write(3, {"loss": 2.0}, console=False)
    writer.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["loss"] == 2.0
    assert "dropped a torn last line (15 bytes)" in capsys.readouterr().err


def test_only_the_torn_tail_goes_even_past_the_read_block(tmp_path):
    path = str(tmp_path / "m.jsonl")
    with open(path, "w") as f:
        f.write("{}\n" + "x" * 200_000)  # the tail is longer than one 64 KiB block
    drop_torn_tail(path)
    assert open(path).read() == "{}\n"
    with open(path, "w") as f:
        f.write("y" * 70_000)  # no complete line at all
    drop_torn_tail(path)
    assert os.path.getsize(path) == 0
    with open(path, "w") as f:
        f.write("{}\n")  # intact: untouched
    drop_torn_tail(path)
    assert open(path).read() == "{}\n"
