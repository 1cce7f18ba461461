"""The embedded fact tables (data/facts.py) and the predictor's instruction-only inputs
(data.predictor_instruction_rate) that keep per-task masks in its training distribution."""

import dataclasses

import numpy as np

from ifp_jax.config import DataConfig
from ifp_jax.data import facts, pipeline, tasks
from ifp_jax.data.skills import task_instruction
from ifp_jax.vocab.seqio_vocab import get_vocabulary
from ifp_jax.selection.prompt import predictor_tokens

P = 24
FACTS = DataConfig(mixture="ifp_facts", seq_len=20, global_batch_size=64)


def test_tables_are_fixed_and_differ_between_tasks():
    color = facts.table("color")
    assert color == facts.table("color") and len(color) == 2 * 256
    assert set(color.values()) <= set(facts.VALUES)
    agree = np.mean([color[k] == facts.table("sound")[k] for k in color])
    assert agree < 0.1  # independent tables agree about 1 time in 32


def test_held_out_prompts_are_new_pairs_of_facts_seen_in_training():
    for task in facts.FACT_TASKS:
        table = facts.table(task)
        train = facts.generate(task, "train", 10_000)  # tasks.SKILL_EXAMPLES['train']
        valid = facts.generate(task, "validation", 500)
        assert len({e["prompt"] for e in valid}) == 500  # each held-out prompt once
        assert not {e["input"] for e in train} & {e["input"] for e in valid}
        assert {k for e in train for k in e["input"].split()} == set(table)  # every fact seen
        assert {e["input"].split()[0] for e in train[:256]} == set(facts.SLOT_KEYS[0])
        for e in train[:20]:  # each slot's key symbols come from their own alphabets
            for symbol, alphabet in zip(e["input"].replace(" ", ""), facts.ALPHABETS):
                assert symbol in alphabet
        for e in train[:50] + valid[:50]:
            assert e["response"] == "".join(table[k] for k in e["input"].split())
            assert e["instruction"] in facts.FACT_TASKS[task].wordings
            assert e["prompt"] == f"{e['instruction']} {e['input']} ="
            assert len(e["prompt"]) + len(e["response"]) + 1 <= FACTS.seq_len  # + EOS


def test_fact_mixture_registers_every_table_with_its_instruction():
    tasks.register_all(FACTS, P)
    rates = tasks.mixture_rates(FACTS)
    assert list(rates) == sorted(facts.FACT_PREFIX + t for t in facts.FACT_TASKS)
    assert task_instruction("ifp_fact_color") == task_instruction("color") == "color of"


def test_instruction_rate_swaps_in_each_tasks_instruction_for_the_predictor():
    vocab = get_vocabulary(FACTS.predictor_vocabulary)
    plain = pipeline.make_train_batches(FACTS, P).batch_at(3)
    always = pipeline.make_train_batches(
        dataclasses.replace(FACTS, predictor_instruction_rate=1.0), P)
    batch = always.batch_at(3)
    for row, task_id in enumerate(batch["task_id"]):
        want = predictor_tokens(vocab, task_instruction(always.task_names[task_id]), P)[0]
        np.testing.assert_array_equal(batch["predictor_tokens"][row], want)
    for key in ("decoder_target_tokens", "decoder_loss_weights", "task_id"):  # LLM side intact
        np.testing.assert_array_equal(batch[key], plain[key])

    half_cfg = dataclasses.replace(FACTS, predictor_instruction_rate=0.5)
    half = pipeline.make_train_batches(half_cfg, P)
    swapped = np.mean([np.any(half.batch_at(s)["predictor_tokens"] != plain_s["predictor_tokens"],
                              axis=1).mean()
                       for s, plain_s in ((s, pipeline.make_train_batches(FACTS, P).batch_at(s))
                                          for s in range(4))])
    assert 0.35 < swapped < 0.65
    # The same rows on every host: two hosts' halves concatenate to the single-host batch.
    hosts = [pipeline.make_train_batches(half_cfg, P, i, 2).batch_at(2) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["predictor_tokens"] for h in hosts]),
                                  half.batch_at(2)["predictor_tokens"])


def test_text_tasks_keep_their_own_predictor_input():
    cfg = DataConfig(mixture="ifp_multiskill_cpt", seq_len=40, global_batch_size=64,
                     cpt_chunk_len=20, predictor_instruction_rate=1.0)
    batches = pipeline.make_train_batches(cfg, P)
    plain = pipeline.make_train_batches(dataclasses.replace(cfg, predictor_instruction_rate=0.0),
                                        P)
    text_id = batches.task_names.index(tasks.CPT_STDLIB)
    for step in range(3):
        a, b = batches.batch_at(step), plain.batch_at(step)
        rows = a["task_id"] == text_id
        assert rows.any()
        np.testing.assert_array_equal(a["predictor_tokens"][rows], b["predictor_tokens"][rows])
        assert (a["predictor_tokens"][~rows] != b["predictor_tokens"][~rows]).any()
