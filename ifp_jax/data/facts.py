"""Embedded fact-lookup tasks: the mixture on which FFN pruning can be told apart from its rivals.

Each of 8 tasks is a random table: 512 keys -> one of 32 value symbols, drawn once from a fixed
seed. A prompt asks for one key of each of two slots and the response is their two values:
``"color of aq D7 =" -> "l1"``. Tables share no structure, so answering needs the facts
themselves, stored in the LLM's weights (FFN capacity), not an algorithm attention can run
(copying, reordering: the embedded skills, on which any k retrained units do as well). 8 x 512 =
4,096 facts: a d_ffn = 512 source learns them within the comparison's budget and a d_ffn = 128
model, trained longer, does not (the dense-full vs dense-small arms of `ifp compare` check this),
while one task's 512 facts are a quarter of the load: exactly where a per-task selection of
k = F/4 units should win (the trial run of docs/findings.md#the-trial-run: IFP 0.67-0.80 vs
static 0.11-0.13).

Why every symbol of a prompt's keys comes from its own alphabet: keys whose symbols share an
alphabet can only be read by position, and a 2-layer model sat at chance on those for 2,000 steps
(two-symbol keys over one 32-symbol alphabet); with disjoint alphabets the set of prompt tokens
already says which symbol is which.

Splits: an example is held out ('validation') iff a stable hash of its key PAIR is 0 mod 10, so
held-out prompts are unseen pairs of seen facts (every key of every task occurs in 'train': its
first 256 examples lead with every first-slot key, and the 10,000 of them hold every second-slot
key, as tests/test_facts.py checks). Held-out accuracy thus measures recall of stored
facts in new prompts, not extrapolation of a random table (impossible).
"""

from __future__ import annotations

import dataclasses
import random
import zlib

FACT_PREFIX = "ifp_fact_"  # the SeqIO task name of table t is FACT_PREFIX + t
# Four disjoint 16-symbol alphabets: a key of the first slot is one symbol of the first and one of
# the second (256 keys), a key of the second slot one of the third and one of the fourth.
ALPHABETS = ("abcdefghijklmnop", "qrstuvwxyz012345", "ABCDEFGHIJKLMNOP", "QRSTUVWXYZ6789#$")
SLOT_KEYS = tuple(tuple(a + b for a in ALPHABETS[i] for b in ALPHABETS[i + 1]) for i in (0, 2))
VALUES = "abcdefghijklmnopqrstuvwxyz012345"
HELD_OUT_MODULUS = 10
TABLE_SEED = "ifp_facts/v1"  # the tables are a fixed data set, like a downloaded one


@dataclasses.dataclass(frozen=True)
class FactTask:
    """One table: its instruction wordings (the first is its per-task instruction text)."""

    name: str
    wordings: tuple[str, ...]


FACT_TASKS: dict[str, FactTask] = {t.name: t for t in (
    FactTask("color", ("color of", "colour of")),
    FactTask("sound", ("sound of", "noise of")),
    FactTask("home", ("home of", "house of")),
    FactTask("food", ("food of", "meal of")),
    FactTask("size", ("size of", "bulk of")),
    FactTask("king", ("king of", "ruler of")),
    FactTask("twin", ("twin of", "double of")),
    FactTask("tool", ("tool of", "gear of")),
)}


def table(task: str) -> dict[str, str]:
    """Task `task`'s facts: key -> value (512 keys), a pure function of the task name."""
    rng = random.Random(f"{TABLE_SEED}/{task}")
    return {k: rng.choice(VALUES) for slot in SLOT_KEYS for k in slot}


def split_of(pair: tuple[str, str]) -> str:
    return ("validation" if zlib.crc32(" ".join(pair).encode()) % HELD_OUT_MODULUS == 0
            else "train")


def format_prompt(instruction: str, pair: tuple[str, str]) -> str:
    return f"{instruction} {' '.join(pair)} ="


def generate(task: str, split: str, n: int, seed: int = 0) -> list[dict]:
    """`n` examples of table `task` from `split` ('validation': at most n, each held-out prompt
    once); 'train' starts with a cover of every key."""
    if task not in FACT_TASKS:
        raise KeyError(f"unknown fact task '{task}'; known: {', '.join(FACT_TASKS)}")
    facts, wordings = table(task), FACT_TASKS[task].wordings
    rng = random.Random(f"{TABLE_SEED}/{task}/{split}/{seed}")
    if split == "train":  # a cover first: every first-slot key once
        seconds = list(SLOT_KEYS[1])
        rng.shuffle(seconds)
        pairs = []
        for i, first in enumerate(SLOT_KEYS[0]):
            pair = (first, seconds[i % len(seconds)])
            while split_of(pair) != "train":
                pair = (first, rng.choice(SLOT_KEYS[1]))
            pairs.append(pair)
        while len(pairs) < n:
            pair = (rng.choice(SLOT_KEYS[0]), rng.choice(SLOT_KEYS[1]))
            if split_of(pair) == split:
                pairs.append(pair)
        prompts = [(pair, rng.choice(wordings)) for pair in pairs[:n]]
    else:  # every held-out pair under every wording, once each (at most n of them)
        prompts = [((a, b), w) for a in SLOT_KEYS[0] for b in SLOT_KEYS[1] for w in wordings
                   if split_of((a, b)) == split]
        rng.shuffle(prompts)
    out = []
    for pair, instruction in prompts[:n]:
        out.append({"instruction": instruction, "input": " ".join(pair),
                    "prompt": format_prompt(instruction, pair),
                    "response": "".join(facts[k] for k in pair)})
    return out
