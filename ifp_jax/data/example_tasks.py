"""`ifp data example-tasks`: a user instruction mixture on disk, written from the embedded skills.

One JSONL file per skill (DIR/<skill>.jsonl, lines {"prompt", "response"}) plus DIR/manifest.json
with each task's instruction text and rate: exactly the layout a user brings (user_tasks.py), so
it serves as a template and as the mixture the streaming path is shown on. Line i of a file is a
held-out skill input iff i % 20 == 19, the user-task held-out rule (tasks.JSONL_HELD_OUT_EVERY),
so a task's exact match is measured on inputs it never trained on.
"""

from __future__ import annotations

import json
import os

from ifp_jax.data import skills
from ifp_jax.errors import DataError
from ifp_jax.data.tasks import JSONL_HELD_OUT_EVERY
from ifp_jax.safe_names import plain_name


def write_example_tasks(out: str, num_tasks: int = 10, examples_per_task: int = 2000,
                        seed: int = 0) -> list[str]:
    """Writes the first `num_tasks` embedded skills as user task files; returns their paths."""
    names = list(skills.SKILLS)
    if not 1 <= num_tasks <= len(names):
        raise DataError(f"--tasks {num_tasks}: choose 1..{len(names)} (the embedded skills: "
                        f"{', '.join(names)})")
    if examples_per_task < JSONL_HELD_OUT_EVERY:
        raise DataError(f"--examples {examples_per_task}: a task needs at least "
                        f"{JSONL_HELD_OUT_EVERY} (every 20th is held out)")
    for name in names[:num_tasks]:  # each becomes DIR/<name>.jsonl
        plain_name(name, "skill name", DataError)
    os.makedirs(out, exist_ok=True)
    held = examples_per_task // JSONL_HELD_OUT_EVERY
    paths, manifest = [], {}
    for name in names[:num_tasks]:
        train = iter(skills.generate(name, "train", examples_per_task - held, seed))
        validation = iter(skills.generate(name, "validation", held, seed))
        path = os.path.join(out, f"{name}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for i in range(examples_per_task):
                held_out = i % JSONL_HELD_OUT_EVERY == JSONL_HELD_OUT_EVERY - 1
                example = next(validation if held_out else train)
                f.write(json.dumps({"prompt": example["prompt"],
                                    "response": example["response"]}) + "\n")
        paths.append(path)
        manifest[name] = {"instruction": skills.SKILLS[name].wordings[0], "rate": 1.0}
    with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return paths
