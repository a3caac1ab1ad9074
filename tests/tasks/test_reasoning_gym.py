"""The reasoning-gym adapter: reference answers score the maximum, the reward is the dataset's own scorer,
extraction survives hostile text quickly, unsafe scorers run only in the reward sandbox or behind guards, splits
are fixed and disjoint, and a short ES run works on the tiny random model."""
from __future__ import annotations

import builtins
import os
import random
import re
import threading
import time

import pytest

from tests.helpers import make_cfg, require_module

reasoning_gym = require_module("reasoning_gym")  # a dependency: skipped off CI only, a failure under CI=true

from reasoning_gym.factory import DATASETS  # noqa: E402

from es_repro.run.log import RunLog  # noqa: E402
from es_repro.tasks import build_task, score  # noqa: E402
from es_repro.tasks.answer_extract import extract_answer, last_tag_block, time_limited  # noqa: E402
from es_repro.tasks.reasoning_gym import NUMERIC_SYMPY, SANDBOXED, SANDBOXED_EVAL, SANDBOXED_SYMPY, Scorer  # noqa: E402
from es_repro.train import run_es  # noqa: E402

PAPER_DATASETS = ["mini_sudoku", "arc_agi", "rearc", "arc_1d", "gsm_symbolic", "basic_arithmetic", "countdown"]


def rg_task(dataset: str, train: int = 3, evals: int = 5, seed: int = 0, **options):
    return build_task("rg", train, evals, seed, {"dataset": dataset, **options})


def wrap(answer: str) -> str:
    return f"<answer>{answer}</answer>"


# ----------------------------------------------------------------------------------------------- rewards
@pytest.mark.parametrize("dataset", PAPER_DATASETS)
@pytest.mark.parametrize("weight", [0.0, 0.1])
def test_reference_answer_gets_the_maximum_reward(dataset, weight):
    task = rg_task(dataset, format_reward=weight)
    rows = task.eval_rows
    best = 1.0 + weight
    refs = [wrap(r["answer"]) for r in rows]
    assert score(task.reward, refs, rows) == pytest.approx([best] * len(rows))
    assert score(task.accuracy, refs, rows) == [1.0] * len(rows)
    # reasoning before the answer and spaces inside the tags change nothing
    chatty = [f"<think>let me see</think>\n<answer>\n {r['answer']} \n</answer>" for r in rows]
    assert score(task.reward, chatty, rows) == pytest.approx([best] * len(rows))
    others = ["", "garbage", wrap(""), wrap("0"), wrap("1 2\n3 4"), "<answer>unclosed " + rows[0]["answer"],
              wrap(rows[0]["answer"] + " and more"), wrap("x" * 5000)]
    for row in rows:
        values = score(task.reward, others, [row] * len(others))
        assert all(0.0 <= v <= best for v in values), values
        assert values[0] == values[1] == values[5] == 0.0  # no closed answer block: 0, no format bonus
        assert values[-1] == weight  # over-long answer: rejected (format bonus only)


@pytest.mark.parametrize("dataset", ["mini_sudoku", "gsm_symbolic", "basic_arithmetic", "arc_1d"])
def test_reward_is_the_datasets_own_scorer(dataset):
    task = rg_task(dataset, format_reward=0.1)
    ds = reasoning_gym.create_dataset(dataset, seed=0, size=50)  # an independent scorer instance
    rng = random.Random(0)
    for row in task.eval_rows:
        ref = row["answer"]
        near = list(ref)
        digits = [i for i, ch in enumerate(near) if ch.isdigit()]
        near[rng.choice(digits)] = str((int(near[digits[0]]) + 1) % 10) if digits else near[0]
        for answer in [ref, "".join(near), ref + " extra", "The answer is " + ref]:
            expected = ds.score_answer(answer, row["rg_entry"]) + 0.1
            assert score(task.reward, [wrap(answer)], [row]) == pytest.approx([expected])


def test_extra_metrics_report_score_and_format():
    task = rg_task("basic_arithmetic")
    rows = task.eval_rows[:2]
    metrics = task.extra_metrics([wrap(rows[0]["answer"]), "no tags"], rows)
    assert metrics == {"rg_score": 0.5, "answer_block": 0.5}


# ----------------------------------------------------------------------------------------------- hostile text
def test_last_tag_block_matches_the_regex_definition():
    pattern = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
    rng = random.Random(1)
    pieces = ["<answer>", "</answer>", "a", " ", "\n", "<", ">", "/", "1"]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        found = pattern.findall(text)
        assert last_tag_block(text) == (found[-1] if found else None), repr(text)


def test_extraction_and_scoring_of_garbage_empty_and_huge_outputs_is_fast():
    task = rg_task("gsm_symbolic")
    row = task.eval_rows[0]
    mb = 1_000_000
    hostile = ["", "\x00\ufffd", "<answer>" * (mb // 8), "</answer>" * (mb // 9), "a" * mb,
               "<answer>" + "9" * mb + "</answer>", wrap(row["answer"]) + "x" * mb, "<answer>" * 10 + "</answer>" * 10,
               "(" * mb, " ".join(["<answer>1</answer>"] * 50_000)]
    start = time.perf_counter()
    values = score(task.reward, hostile, [row] * len(hostile))
    assert time.perf_counter() - start < 2.0
    assert values[:7] == [0.0] * 7  # nothing usable, or beyond the 200k-character cap
    assert extract_answer("<answer> 42 </answer>", 10) == "42" and extract_answer(wrap("x" * 11), 10) is None
    assert extract_answer(None, 10) is None and extract_answer(123, 10) is None


def test_numeric_sympy_scorers_never_see_other_text(monkeypatch):
    task = rg_task("countdown", train=1, evals=2)
    row = task.eval_rows[0]
    seen: list[str] = []
    real_eval = builtins.eval

    def spy(src, *args, **kwargs):
        seen.append(str(src))
        return real_eval(src, *args, **kwargs)

    monkeypatch.setattr(builtins, "eval", spy)
    hostile = ["__import__('os').system('true')", "9**9**9**9**9", "factorial(10**9)", "2^3", "1e999999",
               "(" * 300 + "1" + ")" * 300]
    start = time.perf_counter()
    assert score(task.reward, [wrap(h) for h in hostile], [row] * len(hostile)) == [0.0] * len(hostile)
    assert time.perf_counter() - start < 1.0
    assert not any(marker in s for s in seen for marker in ("__import__", "factorial", "9**9"))
    assert score(task.reward, [wrap(row["answer"])], [row]) == [1.0]
    assert seen, "the reference answer should have reached sympy's parser (via eval)"


def test_time_limited_stops_runaway_calls():
    def spin():
        while True:
            pass

    def stubborn():  # swallows the first interruption with a bare `except:`, then runs on
        try:
            spin()
        except BaseException:
            pass
        spin()

    for fn in (spin, stubborn):
        start = time.perf_counter()
        assert time_limited(fn, 0.2, "stopped") == "stopped"
        assert time.perf_counter() - start < 2.0
    assert time_limited(lambda x: x + 1, 1.0, None, 41) == 42
    assert time_limited(lambda: 1 / 0, 1.0, "error") == "error"
    start = time.perf_counter()
    assert time_limited(lambda: re.match(r"(a+)+$", "a" * 40 + "b"), 0.2, "stopped") == "stopped"
    assert time.perf_counter() - start < 2.0
    out = []  # off the main thread there is no timer: the call just runs
    worker = threading.Thread(target=lambda: out.append(time_limited(lambda: 7, 0.1, None)))
    worker.start()
    worker.join()
    assert out == [7]


def test_scorer_safety_audit_of_the_installed_reasoning_gym(monkeypatch):
    """Feed a marker to every dataset's score_answer and watch eval/exec: the datasets where model text reaches
    them must be exactly those the adapter sends to the sandbox or guards (rerun on every reasoning-gym upgrade);
    the in-process Scorer refuses the sandboxed ones outright."""
    marker = "zqprobe"
    reached: set[str] = set()
    current = {"name": ""}
    real_eval, real_exec = builtins.eval, builtins.exec

    def spy_eval(src, *args, **kwargs):
        if marker in str(src):
            reached.add(current["name"])
        return real_eval(src, *args, **kwargs)

    def spy_exec(src, *args, **kwargs):
        if marker in str(src):
            reached.add(current["name"])
        return real_exec(src, *args, **kwargs)

    probes = [marker, f"[{marker}]", f"1+{marker}", f"{marker}(1)", f"x**2+{marker}", f"'{marker}'"]
    for name in sorted(DATASETS):
        try:
            ds = reasoning_gym.create_dataset(name, seed=0, size=2)
            entry = ds[0]
        except Exception:
            continue  # needs options to generate (e.g. composite); cannot be used without them anyway
        monkeypatch.setattr(builtins, "eval", spy_eval)
        monkeypatch.setattr(builtins, "exec", spy_exec)
        for probe in probes:
            current["name"] = name
            try:
                ds.score_answer(probe, entry)
            except Exception:
                pass
            current["name"] = "guarded:" + name
            if name in SANDBOXED:
                with pytest.raises(ValueError, match="scores only in the sandbox"):
                    Scorer(ds, name, score_timeout=0)
            else:
                Scorer(ds, name, score_timeout=0).score_answer(probe, entry)
        monkeypatch.setattr(builtins, "eval", real_eval)
        monkeypatch.setattr(builtins, "exec", real_exec)
    guarded_reached = {n for n in reached if n.startswith("guarded:")}
    assert {n for n in reached if not n.startswith("guarded:")} == set(SANDBOXED_EVAL | SANDBOXED_SYMPY | NUMERIC_SYMPY)
    assert not guarded_reached  # NUMERIC_SYMPY's filter stops the marker; SANDBOXED never score in this process


@pytest.mark.parametrize("dataset", ["n_queens", "polynomial_multiplication"])  # one eval scorer, one sympy scorer
def test_eval_and_sympy_scorers_run_only_in_the_sandbox(dataset, monkeypatch):
    task = rg_task(dataset, train=2, evals=3, format_reward=0.1, sandbox={"workers": 1, "timeout_s": 1.0, "cpu_s": 1.0})
    assert task.info["sandbox"]["level"] in ("bwrap", "unshare", "none")
    rows = task.eval_rows
    seen: list[str] = []
    real_eval, real_exec = builtins.eval, builtins.exec
    monkeypatch.setattr(builtins, "eval", lambda src, *a, **k: (seen.append(str(src)), real_eval(src, *a, **k))[1])
    monkeypatch.setattr(builtins, "exec", lambda src, *a, **k: (seen.append(str(src)), real_exec(src, *a, **k))[1])
    refs = [wrap(r["answer"]) for r in rows]
    assert score(task.reward, refs, rows) == pytest.approx([1.1] * len(rows))
    assert score(task.accuracy, refs, rows) == [1.0] * len(rows)
    hostile = [f"__import__('os').kill({os.getpid()}, 9)", "[[1] * 10**10]", "Float('1e999999')", "x" * 3000,
               "__import__('time').sleep(60)", "zqprobe"]
    start = time.perf_counter()
    values = score(task.reward, [wrap(h) for h in hostile], [rows[0]] * len(hostile))
    assert values == pytest.approx([0.1] * len(hostile))  # the format bonus only
    assert time.perf_counter() - start < 1.0 * len(hostile) + 3.0
    assert not any("zqprobe" in s or "kill" in s for s in seen)  # model text never reached eval/exec here


@pytest.mark.parametrize("dataset, message", [("no_such_dataset", "mini_sudoku"), ("rush_hour", "does not score 1.0")])
def test_unusable_datasets_are_refused(dataset, message):
    with pytest.raises(ValueError, match=message):
        rg_task(dataset)


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match=r"task.options.dataset is required"):
        build_task("rg", 2, 2, 0, {})
    with pytest.raises(ValueError, match=r"task.options.config \['bogus'\].*allowed: min_empty, max_empty"):
        rg_task("mini_sudoku", config={"bogus": 1})
    with pytest.raises(ValueError, match=r"task.options.config.seed is set by es-repro"):
        rg_task("mini_sudoku", config={"seed": 3})
    with pytest.raises(ValueError, match=r"rejected by reasoning-gym dataset 'mini_sudoku'"):
        rg_task("mini_sudoku", config={"min_empty": 20})
    with pytest.raises(ValueError, match=r"task.options.split_key='nope'.*fields:"):
        rg_task("mini_sudoku", split_key="nope")
    with pytest.raises(ValueError, match=r"task.options.format_reward"):
        rg_task("mini_sudoku", format_reward=-1)


# ----------------------------------------------------------------------------------------------- splits
def test_splits_are_seeded_disjoint_and_eval_does_not_depend_on_train_size():
    a = rg_task("mini_sudoku", train=30, evals=20, seed=5)
    b = rg_task("mini_sudoku", train=30, evals=20, seed=5)
    c = rg_task("mini_sudoku", train=10, evals=20, seed=5)
    d = rg_task("mini_sudoku", train=30, evals=20, seed=6)
    questions = lambda rows: [r["rg_entry"]["question"] for r in rows]  # noqa: E731
    assert questions(a.train_rows) == questions(b.train_rows) and questions(a.eval_rows) == questions(b.eval_rows)
    assert len(set(questions(a.train_rows))) == 30 and len(set(questions(a.eval_rows))) == 20
    assert not set(questions(a.train_rows)) & set(questions(a.eval_rows))
    assert questions(c.eval_rows) == questions(a.eval_rows) and questions(c.train_rows) == questions(a.train_rows)[:10]
    assert questions(d.eval_rows) != questions(a.eval_rows)
    # split_key: a metadata value seen in eval never appears in train (num_empty takes only 5 values, 8..12)
    keyed = rg_task("mini_sudoku", train=12, evals=2, split_key="num_empty")
    train_keys = {r["rg_entry"]["metadata"]["num_empty"] for r in keyed.train_rows}
    assert train_keys and not train_keys & {r["rg_entry"]["metadata"]["num_empty"] for r in keyed.eval_rows}


def test_rows_follow_the_task_contract():
    task = rg_task("mini_sudoku", train=1, evals=1)
    row = task.eval_rows[0]
    assert row["messages"][-1]["role"] == "user" and row["rg_entry"]["question"] in row["messages"][-1]["content"]
    assert "<answer>" in row["messages"][-1]["content"] and row["prompt"].endswith("<|im_start|>assistant\n")
    assert row["assistant_prefix"] == "" and task.stop_strings == ("</answer>",)


# ----------------------------------------------------------------------------------------------- ES end to end
def test_short_es_run_on_tiny_random(tmp_path):
    cfg = make_cfg(["task=rg", "task.options.dataset=basic_arithmetic", "task.options.format_reward=0.1",
                    "task.train_size=3", "task.eval_size=2", "task.max_new_tokens=8", "es.generations=2",
                    "es.population=4", "eval.every=1", "eval.kl_samples=0"])
    summary = run_es(cfg, tmp_path)
    log = RunLog(tmp_path)
    train, evals = log.records("train"), log.records("eval")
    assert [r["generation"] for r in train] == [1, 2] and [r["samples"] for r in train] == [12, 24]
    assert all(0.0 <= x <= 1.1 for r in train for x in r["rewards"])
    assert [r["generation"] for r in evals] == [0, 1, 2]
    assert {"eval_rg_score", "eval_answer_block"} <= evals[-1].keys() and summary["generations"] == 2
