"""ESMA: the joint reward table and its ablations, pairing of (direct, meta) rows, d'_type2 against hand-computed
values (clipping included), the JSONL loader's errors, yes/no parsing, and a short ES run on the tiny model."""
from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest

from es_repro.es import strategy as es
from es_repro.run.log import RunLog
from es_repro.tasks import build_task, score
from es_repro.tasks.answer_extract import matches_alias, short_answer, yes_no
from es_repro.tasks.esma import dprime_type2, esma_metrics, pair_rows, question_reward
from es_repro.train import run_es
from tests.helpers import make_cfg, require_module

QA = [("What is the capital of France?", ["Paris"]), ("Who wrote Hamlet?", ["William Shakespeare", "Shakespeare"]),
      ("What is the largest planet?", ["Jupiter"]), ("Which element has symbol O?", ["Oxygen"]),
      ("What colour is the sky on a clear day?", ["blue"]), ("How many legs does a spider have?", ["8", "eight"])]

# Phi^-1 from a standard normal table: z(0.8) = 0.841621, z(0.75) = 0.674490, z(1/3) = -0.430727,
# z(1 - 1e-4) = 3.719016 (the clip bound).
Z80, Z75, Z33, ZCLIP = 0.841621, 0.674490, -0.430727, 3.719016


def write_qa(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture()
def qa_task(tmp_path):
    def make(mode="joint", train=2, evals=4):
        data = write_qa(tmp_path / "qa.jsonl", [{"question": q, "answers": a} for q, a in QA])
        return build_task("esma", train, evals, 0, {"source": "jsonl", "data_path": data, "reward_mode": mode})
    return make


def completions_for(rows, correct: dict, says: dict) -> list[str]:
    """Direct replies right or wrong, meta replies as given, per question_id."""
    out = []
    for r in rows:
        if r["role"] == "direct":
            out.append(f"{r['answers'][0]}." if correct[r["question_id"]] else "I am not sure, maybe Narnia")
        else:
            out.append(says[r["question_id"]])
    return out


# ----------------------------------------------------------------------------------------------- reward table
@pytest.mark.parametrize("correct, says_yes, joint, correctness, alignment", [
    (True, True, 2.0, 1.0, 1.0), (False, False, 1.0, 0.0, 1.0), (True, False, 1.0, 1.0, 0.0),
    (False, True, 0.0, 0.0, 0.0), (True, None, 1.0, 1.0, 0.0), (False, None, 0.0, 0.0, 0.0)])
def test_reward_table(correct, says_yes, joint, correctness, alignment):
    assert question_reward(correct, says_yes, "joint") == joint
    assert question_reward(correct, says_yes, "correctness") == correctness
    assert question_reward(correct, says_yes, "alignment") == alignment


@pytest.mark.parametrize("mode, expected", [("joint", [2, 1, 1, 0]), ("correctness", [1, 0, 1, 0]),
                                            ("alignment", [1, 1, 0, 0])])
def test_task_reward_on_real_completions(qa_task, mode, expected):
    task = qa_task(mode)
    rows = task.eval_rows  # 4 questions x (direct, meta)
    assert [r["role"] for r in rows] == ["direct", "meta"] * 4
    qids = [rows[2 * i]["question_id"] for i in range(4)]
    correct = dict(zip(qids, [True, False, True, False]))
    says = dict(zip(qids, ["Yes", "No.", "no, I don't", "**Yes**"]))
    rewards = score(task.reward, completions_for(rows, correct, says), rows)
    assert rewards == [float(v) for v in expected for _ in range(2)]  # both rows of a pair carry the question's reward
    assert np.mean(rewards) == pytest.approx(np.mean(expected))  # mean over rows = mean per question
    assert score(task.accuracy, completions_for(rows, correct, says), rows) == [1, 1, 0, 0, 1, 1, 0, 0]


def test_bad_reward_mode_and_source_name_the_field(qa_task, tmp_path):
    with pytest.raises(ValueError, match=r"task.options.reward_mode='both'.*joint, correctness, alignment"):
        qa_task("both")
    with pytest.raises(ValueError, match=r"task.options.source='web'.*rg, jsonl"):
        build_task("esma", 2, 2, 0, {"source": "web"})
    with pytest.raises(ValueError, match=r"task.options.data_path"):
        build_task("esma", 2, 2, 0, {"source": "jsonl"})


# ----------------------------------------------------------------------------------------------- pairing
def test_pairs_are_found_wherever_they_sit_in_the_batch(qa_task):
    task = qa_task()
    rows = task.eval_rows
    qids = sorted({r["question_id"] for r in rows})
    correct = dict(zip(qids, [True, False, True, False]))
    says = dict(zip(qids, ["Yes", "No", "No", "Yes"]))
    comps = completions_for(rows, correct, says)
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    shuffled = score(task.reward, [comps[i] for i in order], [rows[i] for i in order])
    assert shuffled == [score(task.reward, comps, rows)[i] for i in order]


def test_lone_rows_and_repeated_rows():
    pairs, lone = pair_rows([7, 7, 7, 3, 9, 7], ["direct", "meta", "direct", "direct", "meta", "meta"])
    assert pairs == [(0, 1), (2, 5)] and lone == [3, 4]  # repeats pair in batch order (GRPO groups)
    with pytest.raises(ValueError, match="role"):
        pair_rows([1], ["answer"])


def test_lone_rows_score_zero_and_leave_es_updates_unchanged(qa_task):
    task = qa_task(evals=4)
    rows = task.eval_rows
    qids = sorted({r["question_id"] for r in rows})
    batch = rows[:6] + [rows[7]]  # pairs 0-2 complete, plus the meta row of question 3 alone
    lone_direct = rows[:6] + [rows[6]]
    rng = random.Random(3)
    members_with_lone, members_pairs_only = [], []
    for _ in range(6):  # a "population": each member answers differently
        correct = {q: rng.random() < 0.5 for q in qids}
        says = {q: rng.choice(["Yes", "No", "Maybe"]) for q in qids}
        r_lone = score(task.reward, completions_for(batch, correct, says), batch)
        assert r_lone[-1] == 0.0
        assert score(task.reward, completions_for(lone_direct, correct, says), lone_direct)[-1] == 0.0
        acc = score(task.accuracy, completions_for(lone_direct, correct, says), lone_direct)
        assert acc[-1] == float(correct[rows[6]["question_id"]])  # a lone direct row still knows if it is right
        members_with_lone.append(np.mean(r_lone))
        members_pairs_only.append(np.mean(score(task.reward, completions_for(rows[:6], correct, says), rows[:6])))
    np.testing.assert_allclose(es.zscore(np.array(members_with_lone)), es.zscore(np.array(members_pairs_only)), atol=1e-7)


# ----------------------------------------------------------------------------------------------- d'_type2
def test_dprime_against_hand_computed_values():
    assert dprime_type2(8, 10, 2, 10) == pytest.approx(2 * Z80, abs=1e-5)  # hit .8, FA .2
    assert dprime_type2(3, 4, 1, 3) == pytest.approx(Z75 - Z33, abs=1e-5)  # hit .75, FA 1/3
    assert dprime_type2(5, 10, 5, 10) == pytest.approx(0.0, abs=1e-12)
    assert dprime_type2(10, 10, 0, 10) == pytest.approx(2 * ZCLIP, abs=1e-5)  # rates 1 and 0 clipped
    assert dprime_type2(0, 7, 4, 4) == pytest.approx(-2 * ZCLIP, abs=1e-5)
    assert dprime_type2(3, 3, 1, 2) == pytest.approx(ZCLIP, abs=1e-5)  # Phi^-1(.5) = 0
    assert dprime_type2(0, 0, 1, 2) is None and dprime_type2(1, 2, 0, 0) is None


def test_metrics_from_completions(qa_task):
    task = qa_task(evals=4)
    rows = task.eval_rows
    qids = sorted({r["question_id"] for r in rows})
    # correct&yes, correct&no, wrong&yes, wrong&garbage: hit 1/2, FA 1/2
    comps = completions_for(rows, dict(zip(qids, [True, True, False, False])),
                            dict(zip(qids, ["Yes", "No", "Yes", "I think so"])))
    m = task.extra_metrics(comps, rows)
    assert m["esma_pairs"] == 4 and m["esma_accuracy"] == 0.5 and m["esma_yes_rate"] == 0.5
    assert m["esma_hit_rate"] == 0.5 and m["esma_false_alarm_rate"] == 0.5
    assert m["esma_dprime"] == pytest.approx(0.0, abs=1e-12)
    assert m["esma_aligned"] == 0.25 and m["esma_meta_invalid"] == 0.25
    assert m["esma_joint"] == pytest.approx((2 + 1 + 0 + 0) / 4)
    assert esma_metrics([]) == {"esma_pairs": 0}


# ----------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("reply, expected", [("Yes", True), ("  yes.", True), ("**No**", False), ("No, I don't.", False),
                                             ("<answer>Yes</answer>", True), ("'YES'", True), ("Not sure", None),
                                             ("Yesterday", None), ("", None), ("I know: yes", None), (None, None)])
def test_yes_no(reply, expected):
    assert yes_no(reply) is expected


def test_answer_matching():
    assert matches_alias(short_answer("The capital is Paris.\nMore text", 256), ["Paris"])
    assert not matches_alias("Parisian", ["Paris"]) and not matches_alias(None, ["Paris"])
    assert matches_alias("the Beatles", ["Beatles"]) and matches_alias("Shakespeare!", ["William Shakespeare", "Shakespeare"])
    assert short_answer("\n\n -4.\nbecause", 256) == "-4" and short_answer("x" * 300, 256) is None


def test_hostile_replies_get_the_tables_scores_quickly(qa_task):
    """Huge, empty and tag-flooded (direct, meta) replies to one question are judged by the reward table (text
    past 200,000 characters is no answer; only the first line or the <answer> block and the first words count),
    and all of them together in well under two seconds."""
    task = qa_task()
    rows = task.eval_rows[:2]
    ans = rows[0]["answers"][0]
    # (direct reply, meta reply, reward and accuracy of both rows, the meta reply read as yes/no/neither)
    hostile = [("Yes" * 400_000, "Yes" * 400_000, 0.0, 0.0, None),  # no answer, no verdict
               ("(" * 1_000_000, "No" + "(" * 1_000_000, 1.0, 0.0, False),  # wrong & no
               ("", "", 0.0, 0.0, None),
               ("<answer>" * 125_000, "<answer>" * 125_000, 0.0, 0.0, None),
               (f"{ans}\n" + "(" * 150_000, "Yes" + " (" * 70_000, 2.0, 1.0, True),  # correct & yes
               (f"<answer>{ans}</answer>" + "<answer>" * 20_000, "**no**" + "*" * 150_000, 1.0, 1.0, False)]
    start = time.perf_counter()
    for direct, meta, reward, correct, says in hostile:
        assert score(task.reward, [direct, meta], rows) == [reward, reward]
        assert score(task.accuracy, [direct, meta], rows) == [correct, correct]  # both rows carry the question's
        m = task.extra_metrics([direct, meta], rows)
        assert m["esma_pairs"] == 1 and m["esma_joint"] == reward and m["esma_accuracy"] == correct
        assert m["esma_yes_rate"] == float(says is True) and m["esma_meta_invalid"] == float(says is None)
    assert time.perf_counter() - start < 2.0


# ----------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("record, field", [({"answers": ["a"]}, "question"), ({"question": "", "answers": ["a"]}, "question"),
                                           ({"question": "q?"}, "answers"), ({"question": "q?", "answers": []}, "answers"),
                                           ({"question": "q?", "answers": ["a", 3]}, "answers")])
def test_jsonl_errors_name_file_row_and_field(tmp_path, record, field):
    data = write_qa(tmp_path / "trivia.jsonl", [{"question": "ok?", "answers": ["ok"]}, record])
    with pytest.raises(ValueError, match=rf"trivia.jsonl:2: field '{field}'"):
        build_task("esma", 1, 0, 0, {"source": "jsonl", "data_path": data})


def test_jsonl_bad_json_and_too_few_questions(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q?", "answers": ["a"]}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        build_task("esma", 1, 0, 0, {"source": "jsonl", "data_path": str(path)})
    data = write_qa(tmp_path / "small.jsonl", [{"question": "q?", "answers": "a"}] * 3)  # one distinct question
    with pytest.raises(ValueError, match=r"1 distinct questions, need .* = 2"):
        build_task("esma", 1, 1, 0, {"source": "jsonl", "data_path": data})


def test_splits_are_seeded_and_disjoint(qa_task):
    a, b = qa_task(train=2, evals=4), qa_task(train=2, evals=4)
    questions = lambda rows: [r["question"] for r in rows if r["role"] == "direct"]  # noqa: E731
    assert questions(a.train_rows) == questions(b.train_rows) and questions(a.eval_rows) == questions(b.eval_rows)
    assert not set(questions(a.train_rows)) & set(questions(a.eval_rows))
    ids = [r["question_id"] for r in a.eval_rows + a.train_rows]
    assert len(set(ids)) == 6 and ids[::2] == ids[1::2]


def test_reasoning_gym_questions_by_default():
    require_module("reasoning_gym")
    task = build_task("esma", 3, 2, 0, {})
    rows = task.eval_rows
    assert len(rows) == 4 and rows[0]["rg_entry"]["metadata"]["source_dataset"] == "basic_arithmetic"
    ref = rows[0]["answers"][0]
    comps = [f"{ref}\nbecause arithmetic", "Yes", "12345678", "No"]
    assert score(task.reward, comps, rows) == [2.0, 2.0, 1.0, 1.0]  # wrong & no = 1 (assuming 12345678 is wrong)
    assert ref != "12345678"


# ----------------------------------------------------------------------------------------------- ES end to end
def test_short_es_run_on_tiny_random(tmp_path):
    require_module("reasoning_gym")
    cfg = make_cfg(["task=esma", "task.train_size=2", "task.eval_size=2", "task.max_new_tokens=4", "es.generations=2",
                    "es.population=4", "eval.every=1", "eval.kl_samples=0"])
    run_es(cfg, tmp_path)
    log = RunLog(tmp_path)
    train, evals = log.records("train"), log.records("eval")
    assert [r["samples"] for r in train] == [16, 32]  # 4 members x 2 questions x 2 prompts
    assert all(0.0 <= x <= 2.0 for r in train for x in r["rewards"])
    last = evals[-1]
    assert last["eval_esma_pairs"] == 2 and {"eval_esma_dprime", "eval_esma_aligned", "eval_esma_accuracy"} <= last.keys()
    assert last["eval_accuracy"] == last["eval_esma_accuracy"]  # both rows of a pair carry the question's correctness
