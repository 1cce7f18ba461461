"""Embedded multi-skill instruction data: pure Python, deterministic, generated offline.

Built for a tiny byte-level model (~1M params, seq_len 64) that should learn every skill in a few
minutes of CPU training, so inputs are 3-6 symbols, responses at most 8 characters, and a whole
example (prompt + response + EOS) stays under ~50 bytes. Seven skills share one input distribution
(lowercase strings over 'a'..'h'): for them only the instruction decides the function, which is
exactly the situation in which an instruction-following pruner can pick per-task sub-networks.

Prompt format: ``f"{instruction} {input} ="``; the response follows directly. The trailing ``=``
marks where the prompt ends (inputs vary in length, so the model needs that cue).

Splits: an input string belongs to the held-out 'validation' split iff a stable hash (CRC-32) of
the input text is 0 mod 10, for every skill alike, so train and validation inputs are disjoint.
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from typing import Callable

SKILL_PREFIX = "ifp_skill_"  # the SeqIO task name of skill s is SKILL_PREFIX + s
LETTERS = "abcdefgh"
SPLITS = ("train", "validation")
HELD_OUT_MODULUS = 10  # 1 in 10 inputs is held out for validation


@dataclasses.dataclass(frozen=True)
class Skill:
    """One task: wordings of its instruction, an input sampler and the function to learn."""

    name: str
    wordings: tuple[str, ...]
    sample_input: Callable[[random.Random], str]
    solve: Callable[[str], str]


def split_of(input_text: str) -> str:
    """The split an input belongs to (stable across processes and Python versions)."""
    return "validation" if zlib.crc32(input_text.encode()) % HELD_OUT_MODULUS == 0 else "train"


# ----------------------------------------------------------------------------- input samplers

def _letters(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 6)))


def _key_values(rng: random.Random) -> str:
    keys = rng.sample(LETTERS, 3)
    pairs = " ".join(f"{k}={rng.randint(0, 9)}" for k in keys)
    return f"{pairs} {rng.choice(keys)}?"


def _decimal(rng: random.Random) -> str:
    return str(rng.randint(0, 255))


def _addends(rng: random.Random) -> str:
    return f"{rng.randint(10, 99)}+{rng.randint(10, 99)}"


def _brackets(rng: random.Random) -> str:
    """Half balanced strings over ()[] of length 2-6, half random (mostly unbalanced)."""
    n = rng.choice((2, 4, 6))
    if rng.random() < 0.5:
        return _balanced(rng, n)
    return "".join(rng.choice("()[]") for _ in range(n))


def _balanced(rng: random.Random, n: int) -> str:
    out, stack = [], []
    while len(out) < n:
        remaining = n - len(out)
        if stack and (remaining == len(stack) or rng.random() < 0.5):
            out.append(")" if stack.pop() == "(" else "]")
        else:
            opener = rng.choice("([")
            stack.append(opener)
            out.append(opener)
    return "".join(out)


# ----------------------------------------------------------------------------- solvers

def _kv_recall(text: str) -> str:
    *pairs, query = text.split(" ")
    table = dict(p.split("=") for p in pairs)
    return table[query.rstrip("?")]


def _is_balanced(text: str) -> str:
    stack = []
    for c in text:
        if c in "([":
            stack.append(c)
        elif not stack or stack.pop() != {")": "(", "]": "["}[c]:
            return "no"
    return "no" if stack else "yes"


def _add(text: str) -> str:
    a, b = text.split("+")
    return str(int(a) + int(b))


_SKILL_LIST = [
    Skill("reverse", ("reverse", "write backwards", "flip the order"), _letters, lambda s: s[::-1]),
    Skill("sort", ("sort", "alphabetize", "sort the letters"), _letters,
          lambda s: "".join(sorted(s))),
    Skill("upper", ("uppercase", "capitalize", "to caps"), _letters, str.upper),
    Skill("rotate", ("rotate left", "move first to end"), _letters, lambda s: s[1:] + s[0]),
    Skill("swap_ends", ("swap ends", "swap first and last"), _letters,
          lambda s: s[-1] + s[1:-1] + s[0]),
    Skill("max_letter", ("largest letter", "max letter", "latest letter"), _letters, max),
    Skill("length", ("length", "count letters", "how many letters"), _letters,
          lambda s: str(len(s))),
    Skill("kv_recall", ("recall", "look up"), _key_values, _kv_recall),
    Skill("to_binary", ("to binary", "in base 2"), _decimal, lambda s: format(int(s), "b")),
    Skill("brackets", ("balanced?", "brackets ok?"), _brackets, _is_balanced),
    Skill("add", ("add", "sum"), _addends, _add),
]

SKILLS: dict[str, Skill] = {s.name: s for s in _SKILL_LIST}


def format_prompt(instruction: str, input_text: str) -> str:
    return f"{instruction} {input_text} ="


def generate(skill_name: str, split: str, n: int, seed: int = 0) -> list[dict]:
    """`n` examples of one skill from one split, a pure function of its arguments.

    Inputs are drawn until they fall in `split`; repeats are avoided while the input space allows
    (small spaces such as 'to_binary' validation, ~26 numbers, then repeat inputs).
    """
    if skill_name not in SKILLS:
        raise KeyError(f"unknown skill '{skill_name}'; known: {', '.join(SKILLS)}")
    if split not in SPLITS:
        raise KeyError(f"unknown split '{split}'; use one of {SPLITS}")
    skill = SKILLS[skill_name]
    # A string seed is hashed deterministically by random.Random (unlike hash()).
    rng = random.Random(f"{skill_name}/{split}/{seed}")
    examples, seen, misses = [], set(), 0
    while len(examples) < n:
        text = skill.sample_input(rng)
        if split_of(text) != split:
            continue
        if text in seen and misses < 5 * n + 1000:
            misses += 1
            continue
        seen.add(text)
        instruction = rng.choice(skill.wordings)
        examples.append({"instruction": instruction, "input": text,
                         "prompt": format_prompt(instruction, text),
                         "response": skill.solve(text)})
    return examples


def task_instruction(task: str, jsonl_path: str = "") -> str:
    """The instruction text of a task, the text its per-task mask is selected from (`ifp export
    --task`, `ifp eval --mask per-task`): an embedded skill's or fact table's first wording, or
    a user task's manifest entry (data.jsonl_path; user_tasks.py). SeqIO or bare names."""
    from ifp_jax.data import facts
    name = task[len(SKILL_PREFIX):] if task.startswith(SKILL_PREFIX) else task
    if name in SKILLS:
        return SKILLS[name].wordings[0]
    fact = task[len(facts.FACT_PREFIX):] if task.startswith(facts.FACT_PREFIX) else task
    if fact in facts.FACT_TASKS:
        return facts.FACT_TASKS[fact].wordings[0]
    from ifp_jax.data import user_tasks
    if jsonl_path and user_tasks.is_multitask(jsonl_path):
        return user_tasks.user_instruction(task, jsonl_path)
    from ifp_jax.config import ConfigError
    known = ", ".join(SKILL_PREFIX + s for s in SKILLS)
    raise ConfigError(f"task '{task}' has no registered instruction text (known: {known}); "
                      f"pass its instruction with --instruction TEXT")
