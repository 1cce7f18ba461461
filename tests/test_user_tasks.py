"""A user's multi-task instruction mixture: one task per JSONL file (or a 'task' field), a
manifest with instructions and rates, a held-out split per task, and the bad inputs."""

import json
import os

import pytest

from ifp_jax.config import DataConfig
from ifp_jax.errors import DataError
from ifp_jax.data.skills import task_instruction
from ifp_jax.data.user_tasks import read_user_tasks

TASKS = {"upper": str.upper, "rev": lambda s: s[::-1], "double": lambda s: s + s}
WORDS = [f"w{i:03d}x" for i in range(40)]


def _lines(task, fn, with_task=False):
    rows = [{"prompt": f"{task} {w} =", "response": fn(w)} for w in WORDS]
    if with_task:
        rows = [dict(r, task=task) for r in rows]
    return [json.dumps(r) for r in rows]


def _write(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture
def task_dir(tmp_path):
    d = tmp_path / "tasks"
    d.mkdir()
    for task, fn in TASKS.items():
        _write(d / f"{task}.jsonl", _lines(task, fn))
    _write(d / "manifest.json", [json.dumps({
        "upper": {"instruction": "uppercase the word", "rate": 2.0},
        "rev": {"instruction": "reverse the word"}})])
    return str(d)


def test_a_directory_is_one_task_per_file_with_the_manifests_instructions_and_rates(task_dir):
    tasks = {t.name: t for t in read_user_tasks(task_dir)}
    assert sorted(tasks) == ["ifp_user_double", "ifp_user_rev", "ifp_user_upper"]
    assert [t.rate for t in tasks.values()] == [1.0, 1.0, 2.0]
    assert tasks["ifp_user_upper"].examples[3] == {"prompt": "upper w003x =",
                                                   "response": "W003X"}
    assert task_instruction("ifp_user_rev", task_dir) == "reverse the word"
    with pytest.raises(DataError, match="no instruction text.*manifest.json"):
        task_instruction("ifp_user_double", task_dir)


def test_one_file_with_a_task_field_gives_the_same_tasks(tmp_path, task_dir):
    path = tmp_path / "all.jsonl"
    _write(path, [line for task, fn in TASKS.items() for line in _lines(task, fn, True)])
    _write(tmp_path / "all.manifest.json", [json.dumps({"upper": {"rate": 2.0}})])
    one, many = read_user_tasks(str(path)), read_user_tasks(task_dir)
    assert [(t.name, t.examples, t.rate) for t in one] == [(t.name, t.examples, t.rate)
                                                           for t in many]


def test_the_mixture_registers_each_task_with_its_own_held_out_split(task_dir):
    """Through SeqIO exactly as training and `ifp eval` read it: mixture 'ifp_user' with the
    manifest's rates, every task scored separately on its every-20th examples."""
    from ifp_jax.data import pipeline, tasks
    cfg = DataConfig(mixture="ifp_user", jsonl_path=task_dir, seq_len=64)
    tasks.register_all(cfg)
    assert tasks.mixture_rates(cfg) == {"ifp_user_double": 1.0, "ifp_user_rev": 1.0,
                                        "ifp_user_upper": 2.0}
    assert pipeline.eval_task_names(cfg) == ["ifp_user_double", "ifp_user_rev", "ifp_user_upper"]
    held = pipeline.make_eval_examples(cfg, 48, "ifp_user_rev", 10)
    assert list(held["target_text"]) == [WORDS[19][::-1], WORDS[39][::-1]]


@pytest.mark.parametrize("files, message", [
    ({"bad name.jsonl": ['{"prompt": "a", "response": "b"}']}, "rename it"),
    ({"a.jsonl": ['{"prompt": "a", "response": "b"}'],
      "manifest.json": ['{"b": {"rate": 1}}']}, "task 'b' has no examples"),
    ({"a.jsonl": ['{"prompt": "a", "response": "b"}'],
      "manifest.json": ['{"a": {"rate": -1}}']}, "rate must be a number >= 0"),
    ({"a.jsonl": ['{"prompt": "a", "response": "b"}'],
      "manifest.json": ['{"a": {"instructions": "x"}}']}, "keys among instruction, rate"),
    ({"a.jsonl": ['{"prompt": "a", "response": "b"}'], "manifest.json": ["{oops"]},
     "not valid UTF-8 JSON"),
    ({"notes.txt": ["hello"]}, "no \\*.jsonl files"),
])
def test_bad_task_directories_fail_with_one_line_naming_the_fix(tmp_path, files, message):
    for name, lines in files.items():
        _write(tmp_path / name, lines)
    with pytest.raises(DataError, match=message) as e:
        read_user_tasks(str(tmp_path))
    assert "\n" not in str(e.value)


def test_a_task_file_missing_some_task_fields_is_refused(tmp_path):
    path = tmp_path / "mixed.jsonl"
    _write(path, ['{"prompt": "a", "response": "b", "task": "t"}',
                  '{"prompt": "c", "response": "d"}'])
    with pytest.raises(DataError, match="example 2 has no 'task' field"):
        read_user_tasks(str(path))
    _write(path, ['{"prompt": "a", "response": "b", "task": "no spaces"}'])
    with pytest.raises(DataError, match=f"{os.path.basename(path)}:1: 'task' must be a name"):
        read_user_tasks(str(path))


def test_a_task_too_small_to_hold_out_is_refused(tmp_path):
    from ifp_jax.data import tasks
    _write(tmp_path / "tiny.jsonl", ['{"prompt": "a", "response": "b"}'] * 5)
    with pytest.raises(DataError, match="ifp_user_tiny' has 5 examples; it needs at least 20"):
        tasks.register_all(DataConfig(mixture="ifp_user", jsonl_path=str(tmp_path)))


def test_a_user_mixture_prepares_and_streams_the_same_batches(task_dir, tmp_path):
    """Prepared on disk, a user's tasks keep their rates, held-out splits and batches."""
    import numpy as np
    from ifp_jax.config import replace
    from ifp_jax.data import pipeline
    from ifp_jax.data.prepare import prepare
    cfg = DataConfig(mixture="ifp_user", jsonl_path=task_dir, seq_len=24,
                     global_batch_size=16, predictor_instruction_rate=0.5)
    manifest = prepare(cfg, 16, str(tmp_path / "prepared"), log=lambda m: None)
    assert {t: {s: e["examples"] for s, e in splits.items()}
            for t, splits in manifest["tasks"].items()} == {
        f"ifp_user_{t}": {"train": 38, "validation": 2} for t in TASKS}
    memory = pipeline.make_train_batches(cfg, 16)
    disk = pipeline.make_train_batches(replace(cfg, prepared_dir=str(tmp_path / "prepared")), 16)
    for step in range(3):
        a, b = memory.batch_at(step), disk.batch_at(step)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _skill_input(skill, prompt):
    """The input text of an embedded skill's prompt `f"{wording} {input} ="`."""
    wording = max((w for w in skill.wordings if prompt.startswith(w + " ")), key=len)
    return prompt[len(wording) + 1:-len(" =")]


def test_example_tasks_write_ten_user_tasks_whose_held_out_inputs_are_unseen(tmp_path):
    from ifp_jax.data import skills
    from ifp_jax.data.example_tasks import write_example_tasks
    out = str(tmp_path / "ten")
    assert len(write_example_tasks(out, num_tasks=10, examples_per_task=200)) == 10
    tasks = read_user_tasks(out)
    assert len(tasks) == 10 and all(len(t.examples) == 200 for t in tasks)
    assert {t.name[len("ifp_user_"):]: t.instruction for t in tasks} == {
        name: skills.SKILLS[name].wordings[0] for name in list(skills.SKILLS)[:10]}
    for task in tasks:
        skill = skills.SKILLS[task.name[len("ifp_user_"):]]
        inputs = [_skill_input(skill, e["prompt"]) for e in task.examples]
        held = set(inputs[19::20])  # the user-task held-out rule
        trained = {x for i, x in enumerate(inputs) if i % 20 != 19}
        assert len(held) == 10 and not held & trained, task.name
        assert {skills.split_of(x) for x in held} == {"validation"}
        assert [e["response"] for e in task.examples] == [skill.solve(x) for x in inputs]
    with pytest.raises(DataError, match="choose 1..11"):
        write_example_tasks(out, num_tasks=12)
