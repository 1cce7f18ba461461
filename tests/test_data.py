"""Data path: embedded skills, SeqIO tasks (skills, CPT chunk rule, JSONL), mixtures, batches."""

import dataclasses
import json

import numpy as np
import pytest

from ifp_jax.config import DataConfig
from ifp_jax.data import pipeline, skills, tasks
from ifp_jax.errors import DataError
from ifp_jax.vocab.seqio_vocab import get_vocabulary

P = 64
# Two skills only (others at rate 0, so never loaded) keeps the batch tests fast.
TWO_SKILLS = {name: 0.0 for name in (tasks.SKILL_PREFIX + s for s in skills.SKILLS)}
TWO_SKILLS.update({"ifp_skill_add": 3.0, "ifp_skill_reverse": 1.0})
SMALL = DataConfig(mixture="ifp_multiskill", rates=TWO_SKILLS, global_batch_size=16)


def test_every_skill_generates_valid_examples_that_fit():
    assert len(skills.SKILLS) >= 8
    for name, skill in skills.SKILLS.items():
        assert len(skill.wordings) >= 2
        examples = skills.generate(name, "train", 200, seed=1)
        assert examples == skills.generate(name, "train", 200, seed=1)  # deterministic
        assert len({e["instruction"] for e in examples}) >= 2
        for e in examples:
            assert e["prompt"] == skills.format_prompt(e["instruction"], e["input"])
            assert e["response"] == skill.solve(e["input"]) and 1 <= len(e["response"]) <= 8
            assert len((e["prompt"] + e["response"]).encode()) + 1 <= 56  # + EOS, byte vocab


def test_skill_answers():
    solve = {n: s.solve for n, s in skills.SKILLS.items()}
    assert solve["reverse"]("abc") == "cba" and solve["sort"]("cab") == "abc"
    assert solve["swap_ends"]("abcd") == "dbca" and solve["rotate"]("abcd") == "bcda"
    assert solve["kv_recall"]("a=3 b=7 c=1 b?") == "7" and solve["to_binary"]("6") == "110"
    assert solve["brackets"]("([])") == "yes" and solve["brackets"]("(]") == "no"
    assert solve["brackets"]("())(") == "no" and solve["add"]("19+23") == "42"


def test_train_and_validation_inputs_are_disjoint():
    for name in skills.SKILLS:
        train = {e["input"] for e in skills.generate(name, "train", 3000)}
        held_out = {e["input"] for e in skills.generate(name, "validation", 100)}
        assert train and held_out and not train & held_out, name


def test_skill_task_tokenizes_prompt_for_both_vocabularies():
    tasks.register_all(SMALL, P)
    ex = pipeline.make_eval_examples(SMALL, P, "ifp_skill_reverse", 5)
    for i, (prompt, target) in enumerate(zip(ex["prompt_text"], ex["target_text"])):
        assert prompt.endswith(" =") and target == prompt.split(" ")[-2][::-1]
        n = len(prompt)
        assert ex["predictor_tokens"][i, :n].tolist() == [b + 3 for b in prompt.encode()]
        assert ex["decoder_loss_weights"][i].sum() == len(target) + 1  # response + EOS
        assert ex["decoder_target_tokens"][i, n + len(target)] == 1  # EOS
    assert "ifp_skill_reverse" in pipeline.eval_task_names(SMALL)


def _chunk_cfg():
    return DataConfig(cpt_chunk_len=8, cpt_num_chunks=3, seq_len=32)


def test_cpt_examples_obey_the_chunk_rule():
    cfg = _chunk_cfg()
    text = "".join(chr(ord("a") + i % 26) for i in range(50))  # 2 windows of 24 bytes, tail cut
    tasks.register_cpt_task("test_cpt", lambda split: [text], cfg, source_id=text)
    ex = pipeline.to_contract(pipeline.tokenized_examples("test_cpt", "train"), 16, cfg.seq_len,
                              (0,))
    assert len(ex["predictor_tokens"]) == 2 * (cfg.cpt_num_chunks - 1)
    ids = np.frombuffer(text.encode(), np.uint8).astype(np.int32) + 3
    seen = set()
    for i in range(len(ex["predictor_tokens"])):
        pred = ex["predictor_tokens"][i][ex["predictor_tokens"][i] > 0]
        target, weights = ex["decoder_target_tokens"][i], ex["decoder_loss_weights"][i]
        k = int(weights.argmax()) // 8  # chunk k+1 starts at position 8k (0-based chunks)
        window = 0 if np.array_equal(target[:8], ids[:8]) else 1
        chunks = ids[24 * window:24 * window + 24].reshape(3, 8)
        np.testing.assert_array_equal(pred, chunks[k - 1])                  # predictor: chunk k
        np.testing.assert_array_equal(target[:8 * (k + 1)], chunks[:k + 1].ravel())  # prefix
        assert weights.tolist() == [1.0 if 8 * k <= j < 8 * (k + 1) else 0.0 for j in range(32)]
        np.testing.assert_array_equal(ex["decoder_input_tokens"][i, 1:], target[:-1])
        assert ex["decoder_input_tokens"][i, 0] == 0
        seen.add((window, k))
    assert seen == {(0, 1), (0, 2), (1, 1), (1, 2)}


def test_stdlib_cpt_task_yields_held_out_chunks():
    cfg = _chunk_cfg()
    tasks.register_all(cfg, P)
    val = pipeline.tokenized_examples(tasks.CPT_STDLIB, "validation")
    assert len(val["targets"]) > 100
    assert all(len(t) == cfg.cpt_chunk_len for t in val["targets"][:50])
    assert set(tasks.stdlib_texts("validation")).isdisjoint(tasks.stdlib_texts("train"))


def _write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    good = json.dumps({"prompt": "hi", "response": "there"})
    path = _write(tmp_path, [good, good, '{"prompt": "x"}'])
    with pytest.raises(DataError, match=r"data\.jsonl:3: expected JSON object with string "
                                        r"fields 'prompt' and 'response'"):
        tasks.register_jsonl_task("test_jsonl", path, DataConfig())
    with pytest.raises(DataError, match=r"data\.jsonl:2: "):
        tasks.register_jsonl_task("test_jsonl", _write(tmp_path, [good, "not json"]), DataConfig())


def test_jsonl_empty_prompt_names_file_and_line(tmp_path):
    path = _write(tmp_path, [json.dumps({"prompt": " ", "response": "a"})])
    with pytest.raises(DataError, match=r"data\.jsonl:1: empty 'prompt'"):
        tasks.register_jsonl_task("test_jsonl", path, DataConfig())


def test_jsonl_task_holds_out_every_20th_example_and_truncates(tmp_path):
    lines = [json.dumps({"prompt": f"p{i} " + "x" * 40, "response": f"r{i}"}) for i in range(40)]
    cfg = DataConfig(jsonl_path=_write(tmp_path, lines), mixture=tasks.JSONL_TASK, seq_len=24,
                     global_batch_size=4)
    ex = pipeline.make_eval_examples(cfg, 8, tasks.JSONL_TASK, 10)
    assert ex["target_text"] == ["r19", "r39"]
    assert ex["predictor_truncated"].tolist() == [1, 1]
    assert ex["decoder_truncated"].tolist() == [1, 1]
    # The predictor keeps the prompt's last 8 bytes; the decoder keeps response + EOS whole.
    assert bytes(int(t) - 3 for t in ex["predictor_tokens"][0]) == b"x" * 8
    assert ex["decoder_loss_weights"][0].sum() == 4 and ex["decoder_loss_weights"][0, -1] == 1
    batch = next(pipeline.make_train_batches(cfg, 8))
    assert batch["predictor_truncated"].all() and batch["task_id"].tolist() == [0] * 4


def test_to_contract_truncates_an_overlong_response_from_the_right():
    ex = {"predictor_tokens": [np.arange(3, 6)], "inputs": [np.arange(3, 6)],
          "targets": np.arange(10, 20)[None]}
    out = pipeline.to_contract(ex, 4, 8, (0,))
    assert out["decoder_truncated"].tolist() == [1] and out["predictor_truncated"].tolist() == [0]
    assert out["decoder_target_tokens"][0].tolist() == list(range(10, 18))
    assert out["decoder_loss_weights"][0].tolist() == [1.0] * 8
    assert out["predictor_tokens"][0].tolist() == [3, 4, 5, 0]


def test_mixture_rates_are_respected():
    batches = pipeline.make_train_batches(SMALL, P)
    ids = np.concatenate([next(batches)["task_id"] for _ in range(25)])
    counts = {batches.task_names[i]: c for i, c in zip(*np.unique(ids, return_counts=True))}
    assert set(counts) == {"ifp_skill_add", "ifp_skill_reverse"}
    assert 2.5 < counts["ifp_skill_add"] / counts["ifp_skill_reverse"] < 3.5
    assert len(batches.task_names) == len(skills.SKILLS)  # zero-rate tasks keep their ids


def test_default_mixtures_and_rates():
    tasks.register_all(DataConfig(), P)
    rates = tasks.mixture_rates(DataConfig(mixture="ifp_multiskill_cpt"))
    assert rates[tasks.CPT_STDLIB] == rates["ifp_skill_add"] == 1.0
    assert len(rates) == len(skills.SKILLS) + 1
    assert list(tasks.mixture_rates(DataConfig(mixture="ifp_cpt"))) == [tasks.CPT_STDLIB]


def test_unknown_names_fail_with_the_closest_one():
    tasks.register_all(DataConfig(), P)
    with pytest.raises(DataError, match="did you mean 'ifp_multiskill'"):
        tasks.mixture_rates(DataConfig(mixture="ifp_multiskil"))
    with pytest.raises(DataError, match="did you mean 'ifp_skill_add'"):
        tasks.mixture_rates(DataConfig(rates={"ifp_skill_ad": 1.0}))
    with pytest.raises(DataError, match="data.vocabulary"):
        get_vocabulary("/nonexistent/spm.model")


def test_reregistration_with_other_settings_replaces_the_task():
    tasks.register_all(DataConfig(cpt_chunk_len=8), P)
    before = tasks.task_fingerprint(tasks.CPT_STDLIB)
    tasks.register_all(DataConfig(cpt_chunk_len=8), P)
    assert tasks.task_fingerprint(tasks.CPT_STDLIB) == before  # idempotent
    tasks.register_all(DataConfig(cpt_chunk_len=16), P)
    assert tasks.task_fingerprint(tasks.CPT_STDLIB) != before


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_batches_are_deterministic_and_resume_exactly():
    a, b = pipeline.make_train_batches(SMALL, P), pipeline.make_train_batches(SMALL, P)
    for _ in range(5):
        _same(next(a), next(b))
    state = json.loads(json.dumps(a.get_state()))
    resumed = pipeline.make_train_batches(SMALL, P)
    resumed.set_state(state)
    for _ in range(3):
        _same(next(a), next(resumed))
    other_seed = pipeline.make_train_batches(dataclasses.replace(SMALL, seed=1), P)
    first = pipeline.make_train_batches(SMALL, P).batch_at(0)
    assert not np.array_equal(next(other_seed)["decoder_target_tokens"],
                              first["decoder_target_tokens"])


def test_host_shards_are_disjoint_and_concatenate_to_the_global_batch():
    single = pipeline.make_train_batches(SMALL, P)
    hosts = [pipeline.make_train_batches(SMALL, P, i, 2) for i in range(2)]
    for _ in range(3):
        full, parts = next(single), [next(h) for h in hosts]
        assert len(parts[0]["task_id"]) == SMALL.global_batch_size // 2
        _same(full, {k: np.concatenate([p[k] for p in parts]) for k in full})
    with pytest.raises(DataError, match="divisible"):
        pipeline.make_train_batches(SMALL, P, 0, 3)


def test_exact_match_metric():
    assert tasks.exact_match(["a", "b"], ["a", "c"]) == {"exact_match": 0.5}
