"""Table tests for the Countdown task: the safe checker, the paper's reward, the generator and the loader."""
from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path

import pytest

from es_repro.tasks.base import score
from es_repro.tasks.countdown import (ASSISTANT_PREFIX, PREFILLS, accuracy, answer_reward, build_countdown_task,
                                      format_reward, generate_problems, last_answer, load_problems, make_splits, reward)
from es_repro.tasks.countdown_check import _parse, check_answer, evaluate
from es_repro.util.errors import DataError

NUMS, TARGET = [3, 7, 25], 46  # 25 + 3 * 7 = 46


def perfect(answer: str, think: str = " reasoning ") -> str:
    """A completion in the exact format (the prompt already opened <think>)."""
    return f"{think}</think>\n<answer>{answer}</answer>"


# ------------------------------------------------------------------------------------------- checker
@pytest.mark.parametrize(
    "expr, numbers, target, ok",
    [
        ("25 + 3 * 7", NUMS, TARGET, True),  # correct
        ("3 * 7 + 25", NUMS, TARGET, True),  # any order
        ("25 + 3 * 7", NUMS, 47, False),  # wrong value
        ("25 + 3 * 8", NUMS, 49, False),  # wrong numbers (8 not given)
        ("25 + 21", NUMS, TARGET, False),  # missing numbers
        ("25 * 3 - 3 * 7 - 8", [25, 3, 7, 8], 46, False),  # reused number
        ("25 + 3 * 7 + 1 - 1", NUMS, TARGET, False),  # extra numbers
        ("25 + 3 * 7", [25, 3, 7, 7], TARGET, False),  # one given number left unused
        ("(7 + 7) / 7 + 3", [7, 7, 7, 3], 5, True),  # duplicates in the multiset
        ("3 / (7 - 7) + 25", [3, 7, 7, 25], 25, False),  # division by zero
        ("25 / 5 / 2", [25, 5, 2], Fraction(5, 2), True),  # exact fractions
        ("(25 - 1) / 3 / 4", [25, 1, 3, 4], 2, True),
        ("9**9**9", [9, 9, 9], 0, False),  # power operator
        ("9 * * 9", [9, 9], 81, False),
        ("-3 + 7 + 25", [3, 7, 25], 29, True),  # unary minus, as the release's eval accepts it
        ("-3 + 7 + 25", [3, 7, 25], 35, False),  # ... evaluated, not ignored
        ("25 + (-3) + 7", [3, 7, 25], 29, True),
        ("+3 + 7", [3, 7], 10, True),  # unary plus
        ("-9+(4 * 63)+10", [63, 4, 9, 10], 253, True),  # the differential test's example
        ("--9 + 1", [9, 1], 10, True),  # repeated signs: --9 = 9
        ("- - -9 + 10", [9, 10], 1, True),  # - - -9 = -9
        ("25 - -3 * 7", NUMS, TARGET, True),  # sign after an operator, binding tighter than *
        ("-(25 - 3) * 7", NUMS, -154, True),  # sign before parentheses
        ("25 + 3 * 7 -", NUMS, TARGET, False),  # a trailing sign is still malformed
        ("-" * 150 + "1", [1], 1, True),  # 150 signs (even): no recursion, within the length bound
        ("2.5 * 2", [2, 2], 5, False),  # float literal
        ("((25 + (3 * 7)))", NUMS, TARGET, True),  # nested parens
        ("(25 + 3 * 7", NUMS, TARGET, False),  # unbalanced
        ("25 + 3 * 7)", NUMS, TARGET, False),
        ("()", [], 0, False),
        ("", [], 0, False),
        ("   ", [], 0, False),
        ("25 3 + 7", NUMS, 35, False),  # two numbers in a row
        ("25 + 3 *", NUMS, TARGET, False),
        ("x = 25 + 3 * 7", NUMS, TARGET, False),  # letters
        ("25 + 3 * 7 = 46", NUMS, TARGET, False),
        ("25 + 3 ^ 7", NUMS, TARGET, False),
        ("\u0663 + 7 + 25", [3, 7, 25], 35, False),  # Arabic-Indic three
        ("3\u00b2 + 7 + 25", [3, 7, 25], 41, False),  # superscript two
        ("\uff13 + 7 + 25", [3, 7, 25], 35, False),  # full-width three
        ("99999999999 * 99999999999", [99999999999, 99999999999], 99999999999**2, False),  # > 6 digits
        ("999999 * 999999", [999999, 999999], 999999**2, True),  # 6 digits is fine
        (" 25+3*7 ", NUMS, TARGET, True),  # whitespace variants
        ("\n25 +\t3 *\r\n7\n", NUMS, TARGET, True),
        ("25\u00a0+ 3 * 7", NUMS, TARGET, False),  # non-ASCII space
    ],
)
def test_check_answer(expr, numbers, target, ok):
    assert check_answer(expr, numbers, target) is ok


@pytest.mark.parametrize(
    "expr, numbers, value",
    [
        ("1 + 2 * 3", [1, 2, 3], Fraction(7)),
        ("(1 + 2) * 3", [1, 2, 3], Fraction(9)),
        ("8 - 3 - 2", [8, 3, 2], Fraction(3)),  # left associative
        ("8 / 4 / 2", [8, 4, 2], Fraction(1)),
        ("1 / 3", [1, 3], Fraction(1, 3)),
        ("1 / 0", [1, 0], None),  # parses, but no value
        ("1 +", None, None),
        ("-1", [1], Fraction(-1)),
        ("2 * -3", [2, 3], Fraction(-6)),
        ("-", None, None),
        ("1 " * 150, None, None),  # 300 characters: rejected before parsing
    ],
)
def test_parse_and_evaluate(expr, numbers, value):
    parser = _parse(expr)
    assert (None if parser is None else parser.numbers) == numbers
    assert evaluate(expr) == value


@pytest.mark.parametrize(
    "expr",
    ["(" * 60 + "1" + ")" * 60, "(" * 100, "9**9**9**9**9**9", "1" + "+1" * 100, "9" * 10_000, "(" * 10**6],
)
def test_hostile_expressions_are_rejected_fast(expr):
    start = time.perf_counter()
    assert evaluate(expr) is None
    assert not check_answer(expr, [1], 1)
    assert time.perf_counter() - start < 0.1


def test_depth_limit_allows_moderate_nesting():
    assert evaluate("(" * 40 + "1 + 2" + ")" * 40) == 3


# ------------------------------------------------------------------------------------------- format reward
@pytest.mark.parametrize(
    "completion, expected",
    [
        (perfect("1"), 1.0),
        (" </think>\n<answer></answer>", 1.0),  # empty blocks still match the pattern
        (perfect("1") + "\n", 1.0),  # Python's `$` allows one trailing newline
        (perfect("1") + "\n\n", 0.6),
        (perfect("1") + " ", 0.6),  # no other trailing text
        (perfect("1") + "<|im_end|>", 0.6),
        (" x </think> <answer>1</answer>", 0.6),  # space instead of the newline
        (" x </think>\n\n<answer>1</answer>", 0.6),  # two newlines
        (" x </think>\n<answer>1</answer></think>\n<answer>2</answer>", 1.0),  # .*? may span tags
        (" x </think>\nsome text", 0.1),  # think block only
        (" x <answer>1</answer>", 0.5),  # answer block only (think never closed)
        ("<answer>1</answer>", 0.5),
        (" no tags at all", 0.0),
        ("", 0.0),
        (" x </think>\n<answer>1", 0.1),  # unclosed answer
        (" x </answer><answer>", 0.0),  # tags in the wrong order
    ],
)
def test_format_reward(completion, expected):
    assert format_reward(completion) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------- full reward
@pytest.mark.parametrize(
    "completion, expected_reward, expected_acc",
    [
        (perfect("25 + 3 * 7"), 1.1, 1.0),  # correct answer, perfect format
        (" 25 + 3 * 7 = 46 </think> <answer>25 + 3 * 7</answer>", 1.06, 1.0),  # correct, bad format
        ("<answer>25 + 3 * 7</answer>", 1.05, 1.0),  # correct, no think block
        (perfect("25 + 3 * 8"), 0.1, 0.0),  # format only: wrong numbers
        (perfect("25 * 3 - 7"), 0.1, 0.0),  # format only: wrong value
        (perfect("25 + 3"), 0.1, 0.0),  # missing number
        (perfect("25 + 3 * 7 * 7 / 7"), 0.1, 0.0),  # reused number
        (perfect("25 + 3 * 7 + 0"), 0.1, 0.0),  # extra number
        (" the answer is 25 + 3 * 7 </think>", 0.01, 0.0),  # missing answer tags
        (" 25 + 3 * 7", 0.0, 0.0),
        (perfect(" ( 25 + ( 3 * 7 ) ) "), 1.1, 1.0),  # whitespace and parens inside the answer
        (perfect("\n25 + 3 * 7\n"), 1.1, 1.0),
        (" </think>\n<answer>1 + 1</answer> <answer>25 + 3 * 7</answer>", 1.1, 1.0),  # last answer wins
        (" </think>\n<answer>25 + 3 * 7</answer> <answer>1 + 1</answer>", 0.1, 0.0),  # ... both ways
        (perfect("25 / (3 - 3) + 7"), 0.1, 0.0),  # division by zero
        (perfect("25**3"), 0.1, 0.0),
        (perfect("-25 + 3 * 7"), 0.1, 0.0),  # unary minus, evaluated: -4, wrong value
        (perfect("-(-25) + 3 * 7"), 1.1, 1.0),  # two unary minuses: 25 + 21
        (perfect("25.0 + 3 * 7"), 0.1, 0.0),  # float literal
        (perfect("\uff12\uff15 + 3 * 7"), 0.1, 0.0),  # full-width digits
    ],
)
def test_reward_and_accuracy(completion, expected_reward, expected_acc):
    assert reward([completion], numbers=[NUMS], target=[TARGET]) == [pytest.approx(expected_reward)]
    assert accuracy([completion], numbers=[NUMS], target=[TARGET]) == [expected_acc]
    assert answer_reward(completion, NUMS, TARGET) == expected_acc


def test_reward_ignores_extra_columns_and_batches():
    completions = [perfect("25 + 3 * 7"), perfect("1 + 2 + 3")]
    out = reward(completions, numbers=[NUMS, [1, 2, 3]], target=[TARGET, 7], prompt=["p", "q"], solution=["", ""])
    assert out == [pytest.approx(1.1), pytest.approx(0.1)]


def test_reward_scores_completion_not_prompt():
    rows = generate_problems(2, seed=1)
    completions = [perfect(rows[0]["solution"]), " nothing"]
    assert score(reward, completions, rows) == [pytest.approx(1.1), 0.0]
    assert score(accuracy, completions, rows) == [1.0, 0.0]


@pytest.mark.parametrize(
    "completion, expected",
    [
        (" " + "a" * 10**6, 0.0),
        (" " + "</think>\n<answer>" * 60_000, 0.01),  # many split points for the full format; no </answer>: think only
        (" " + "<answer>" * 130_000, 0.0),
        (" " + "<think>" * 150_000, 0.0),
        (" </think>\n<answer>" + "(" * 10**6 + "</answer>", 0.1),  # 1 MB answer block: full format, no equation
        (" </think>\n<answer>" + "1 + " * 250_000 + "1</answer>", 0.1),  # full format, the wrong numbers
        (" " + "<answer>1</answer>" * 60_000, 0.05),  # many answer blocks, no think block
        (" " + "<think>" * 150_000 + "</think>\n<answer>25 + 3 * 7</answer>", 1.1),  # right after all
        (" </think>\n<answer>" + "(" * 10**6 + "</answer><answer>25 + 3 * 7</answer>", 1.1),  # the LAST block counts
    ],
)
def test_long_hostile_completions_get_their_scores_fast(completion, expected):
    """Megabyte-long hostile text gets the reward its definition gives (0.1 x format + answer), in under 1 s."""
    assert len(completion) >= 10**6
    start = time.perf_counter()
    assert reward([completion], numbers=[NUMS], target=[TARGET]) == [pytest.approx(expected)]
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("<answer>1</answer>", "1"),
        ("<answer>1</answer><answer>2</answer>", "2"),
        ("<answer>1<answer>2</answer>", "1<answer>2"),  # like re.findall: non-overlapping, left to right
        ("<answer>1</answer></answer>", "1"),
        ("<answer>1</answer><answer>2", "1"),
        ("<answer>1", None),
        ("nothing", None),
    ],
)
def test_last_answer(completion, answer):
    assert last_answer(completion) == answer


# ------------------------------------------------------------------------------------------- generator
def test_generator_is_deterministic():
    assert generate_problems(50, seed=3) == generate_problems(50, seed=3)
    assert generate_problems(50, seed=3) != generate_problems(50, seed=4)
    assert generate_problems(20, seed=3) == generate_problems(50, seed=3)[:20]  # prefix stable


@pytest.mark.parametrize("sizes", [(3, 4), (3,), (4,), (2, 5)])
def test_generated_rows_are_solvable_and_sized(sizes):
    rows = generate_problems(300, seed=0, sizes=sizes)
    assert len(rows) == 300
    keys = set()
    for row in rows:
        assert len(row["numbers"]) in sizes
        assert all(1 <= x <= 99 for x in row["numbers"])
        assert 1 <= row["target"] <= 999
        assert check_answer(row["solution"], row["numbers"], row["target"])
        assert row["prompt"].endswith("<think>")
        assert set(row) == {"prompt", "messages", "assistant_prefix", "numbers", "target", "solution"}
        keys.add((tuple(sorted(row["numbers"])), row["target"]))
    assert len(keys) == 300  # no duplicates within a call
    counts = [sum(len(r["numbers"]) == s for r in rows) for s in sizes]
    assert max(counts) - min(counts) <= 1  # sizes evenly split


def test_generator_respects_ranges():
    rows = generate_problems(100, seed=5, min_number=10, max_number=20, max_target=50)
    assert all(10 <= x <= 20 for r in rows for x in r["numbers"])
    assert all(1 <= r["target"] <= 50 for r in rows)


def test_generator_gives_up_on_impossible_ranges():
    with pytest.raises(RuntimeError):
        generate_problems(5, seed=0, sizes=(3,), min_number=1, max_number=1, max_target=3)


def test_splits_are_disjoint_and_half_and_half():
    train, evals = make_splits(train_size=200, eval_size=2000, seed=0)
    assert len(train) == 200 and len(evals) == 2000
    key = lambda r: (tuple(sorted(r["numbers"])), r["target"])  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in evals}
    for rows in (train, evals):
        threes = sum(len(r["numbers"]) == 3 for r in rows)
        assert abs(threes - len(rows) / 2) <= 1
    assert make_splits(train_size=10, eval_size=2000, seed=0)[1] == evals  # eval set independent of train_size


def test_prompt_text():
    row = generate_problems(1, seed=0)[0]
    nums = "[" + ", ".join(str(x) for x in row["numbers"]) + "]"
    prompt = row["prompt"]
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert f"Using the numbers {nums}, create an equation that equals {row['target']}." in prompt
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\nLet me solve this step by step.\n<think>")
    assert row["assistant_prefix"] == ASSISTANT_PREFIX and ASSISTANT_PREFIX.endswith("<think>")
    system, user = row["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    assert f"<|im_start|>system\n{system['content']}<|im_end|>" in prompt
    assert f"<|im_start|>user\n{user['content']}<|im_end|>" in prompt


# ------------------------------------------------------------------------------------------- loader
RECORDS = [
    {"numbers": [3, 7, 25], "target": 46, "solution": "25 + 3 * 7"},
    {"nums": [1, 2, 3, 4], "target": 24},
    {"numbers": [5, 5, 2], "target": 20, "context": "RAW PROMPT"},
    {"numbers": [6, 4, 3], "target": 8, "prompt": "OTHER PROMPT", "extra": 1},
]


def _write(path: Path, records, jsonl: bool) -> Path:
    if jsonl:
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    else:
        path.write_text(json.dumps(records, indent=1))
    return path


@pytest.mark.parametrize("jsonl", [True, False])
def test_loader_round_trip(tmp_path, jsonl):
    path = _write(tmp_path / ("data.jsonl" if jsonl else "data.json"), RECORDS, jsonl)
    rows = load_problems(path)
    assert [r["numbers"] for r in rows] == [[3, 7, 25], [1, 2, 3, 4], [5, 5, 2], [6, 4, 3]]
    assert [r["target"] for r in rows] == [46, 24, 20, 8]
    assert rows[0]["solution"] == "25 + 3 * 7" and rows[1]["solution"] == ""
    assert rows[1]["prompt"].endswith("<think>") and "[1, 2, 3, 4]" in rows[1]["prompt"]
    assert rows[2]["prompt"] == "RAW PROMPT" and rows[3]["prompt"] == "OTHER PROMPT"
    assert "extra" not in rows[3]
    # Generated rows survive a save/load round trip unchanged.
    generated = generate_problems(20, seed=2)
    saved = [{k: r[k] for k in ("numbers", "target", "solution", "prompt")} for r in generated]
    assert load_problems(_write(tmp_path / "gen.jsonl", saved, jsonl)) == generated


@pytest.mark.parametrize(
    "record, field",
    [
        ({"numbers": "abc", "target": 1}, "numbers"),
        ({"nums": [1, 2], "target": 3}, "nums"),  # too few
        ({"numbers": [1, 2, 3, 4, 5], "target": 3}, "numbers"),  # too many
        ({"numbers": [1, 2, -3], "target": 3}, "numbers"),
        ({"numbers": [1, 2, 3.5], "target": 3}, "numbers"),
        ({"numbers": [1, 2, True], "target": 3}, "numbers"),
        ({"numbers": [1, 2, 10**7], "target": 3}, "numbers"),
        ({"target": 3}, "numbers"),  # missing
        ({"numbers": [1, 2, 3], "target": "6"}, "target"),
        ({"numbers": [1, 2, 3]}, "target"),
        ({"numbers": [1, 2, 3], "target": 6, "solution": "1 + 2 + 4"}, "solution"),
        ({"numbers": [1, 2, 3], "target": 6, "solution": 6}, "solution"),
        ({"numbers": [1, 2, 3], "target": 6, "context": ""}, "context"),
        ({"numbers": [1, 2, 3], "target": 6, "prompt": 7}, "prompt"),
    ],
)
@pytest.mark.parametrize("jsonl", [True, False])
def test_loader_rejects_bad_rows(tmp_path, record, field, jsonl):
    path = _write(tmp_path / ("data.jsonl" if jsonl else "data.json"), [RECORDS[0], RECORDS[1], record], jsonl)
    with pytest.raises(ValueError) as err:
        load_problems(path)
    message = str(err.value)
    where = f"{path}:3" if jsonl else f"{path}: row 2"  # JSONL: line 3; JSON list: row index 2
    assert message.startswith(where) and f"field '{field}'" in message
    assert isinstance(err.value, DataError)


@pytest.mark.parametrize("text", ["[1, 2", '{"numbers": [1, 2, 3], "target": 6}\nnot json\n', '[{"a": 1}', "[3]"])
def test_loader_rejects_malformed_files(tmp_path, text):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.jsonl"):
        load_problems(path)


# ------------------------------------------------------------------------------------------- task
def test_build_task_generated():
    task = build_countdown_task(train_size=20, eval_size=40, seed=1)
    assert task.name == "countdown" and task.stop_strings == ("</answer>",)
    assert len(task.train_rows) == 20 and len(task.eval_rows) == 40
    solutions = [perfect(r["solution"]) for r in task.eval_rows]
    assert score(task.accuracy, solutions, task.eval_rows) == [1.0] * 40
    assert task.extra_metrics(solutions, task.eval_rows)["format_perfect"] == 1.0


def test_build_task_from_file(tmp_path):
    rows = generate_problems(30, seed=7)
    path = _write(tmp_path / "cd.jsonl", [{"nums": r["numbers"], "target": r["target"]} for r in rows], True)
    task = build_countdown_task(data_path=str(path), train_from_file=10, eval_size=15)
    assert [r["numbers"] for r in task.train_rows] == [r["numbers"] for r in rows[:10]]
    assert [r["numbers"] for r in task.eval_rows] == [r["numbers"] for r in rows[10:25]]
    with pytest.raises(ValueError):
        build_countdown_task(data_path=str(path), train_from_file=30)


def test_prefill_answer_scores_the_prefill_as_assistant_text():
    task = build_countdown_task(train_size=4, eval_size=4, seed=1, sizes=[3], max_target=100, prefill="answer")
    row = task.train_rows[0]
    assert row["prompt"].endswith("</think>\n<answer>") and row["assistant_prefix"] == PREFILLS["answer"]
    assert row["prompt"].startswith(build_countdown_task(train_size=4, eval_size=4, seed=1, sizes=[3],
                                                         max_target=100).train_rows[0]["prompt"])
    # The model writes only "equation</answer>": full format (0.1) plus a correct answer (1.0).
    correct = " " + row["solution"] + " </answer>"
    assert score(task.reward, [correct], [row]) == [pytest.approx(1.1)]
    assert score(task.accuracy, [correct], [row]) == [1.0]
    # No closing tag: a think block but no answer block -> format 0.1, reward 0.01.
    assert score(task.reward, [" " + row["solution"]], [row]) == [pytest.approx(0.01)]
    assert task.extra_metrics([correct], [row])["format_perfect"] == 1.0


def test_paper_prefix_leaves_scores_unchanged():
    rows = generate_problems(3, seed=2)
    texts = ["x</think>\n<answer>" + r["solution"] + "</answer>" for r in rows]
    cols = dict(numbers=[r["numbers"] for r in rows], target=[r["target"] for r in rows])
    assert reward(texts, **cols) == reward(texts, assistant_prefix=[ASSISTANT_PREFIX] * 3, **cols) == [1.1] * 3


def test_prefill_errors_name_the_field_and_choices(tmp_path):
    with pytest.raises(ValueError, match=r"task.options.prefill='nope'.*think, answer"):
        build_countdown_task(train_size=2, eval_size=2, prefill="nope")
    path = _write(tmp_path / "cd.jsonl", [{"nums": [1, 2, 3], "target": 6, "prompt": "custom"}] * 3, True)
    with pytest.raises(ValueError, match="prefill needs prompts built by es-repro"):
        build_countdown_task(data_path=str(path), train_from_file=1, prefill="answer")


# ------------------------------------------------------------------------------------------- vs. the regexes
def _regex_format_reward(completion: str) -> float:
    """The paper's definition written with regexes (fine on short strings only)."""
    import re

    text = "<think>" + completion
    if re.match(r"^<think>.*?</think>\n<answer>.*?</answer>$", text, re.DOTALL):
        return 1.0
    return 0.1 * bool(re.search(r"<think>.*?</think>", text, re.DOTALL)) + 0.5 * bool(
        re.search(r"<answer>.*?</answer>", text, re.DOTALL)
    )


def test_linear_checks_agree_with_regexes_on_random_text():
    import random
    import re

    pieces = ["<think>", "</think>", "<answer>", "</answer>", "\n", " ", "1 + 2", "x"]
    rng = random.Random(0)
    for _ in range(5000):
        completion = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        assert format_reward(completion) == pytest.approx(_regex_format_reward(completion)), repr(completion)
        found = re.findall(r"<answer>(.*?)</answer>", completion, re.DOTALL)
        assert last_answer(completion) == (found[-1] if found else None), repr(completion)


def _python_value(expr: str):
    """Reference semantics of the release's checker (Python arithmetic), by walking Python's own parse tree:
    the value, or None where the release's eval would fail (syntax, division by zero)."""
    import ast

    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        return None

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = walk(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            a, b = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div) and b == 0:
                raise ZeroDivisionError
            return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op)) if not isinstance(node.op, ast.Div) else a / b
        raise ValueError(type(node).__name__)

    try:
        return walk(tree)
    except ZeroDivisionError:
        return None


def test_checker_agrees_with_the_release_semantics_on_random_expressions():
    """4,000 random expressions over the release's character set (digits, + - * / ( ) and spaces; no '**' or '//',
    which es-repro refuses by design, no leading zeros, which Python refuses): accepted and scored alike."""
    import random
    import re

    rng = random.Random(7)

    def expression(depth=0) -> str:
        sign = rng.choice(["", "", "", "-", "+", "--", "- -"])
        if depth < 3 and rng.random() < 0.3:
            inner = expression(depth + 1)
            for _ in range(rng.randint(1, 2)):
                inner += rng.choice([" + ", "-", " * ", "/", " - "]) + expression(depth + 1)
            return f"{sign}({inner})"
        return sign + str(rng.randint(1, 99))

    agree = checked = 0
    for _ in range(4000):
        expr = expression()
        for _ in range(rng.randint(1, 3)):
            expr += rng.choice([" + ", "-", "*", " / ", " - "]) + expression()
        if "**" in expr or "//" in expr:
            continue
        numbers = [int(n) for n in re.findall(r"\d+", expr)]
        value = _python_value(expr)
        target = value if value is not None and value.denominator == 1 else 24
        expected = value is not None and abs(value - target) < Fraction(1, 100_000)
        checked += 1
        agree += check_answer(expr, numbers, target) is expected
    assert checked > 3500 and agree == checked
