"""Countdown: combine the given numbers with + - * / (each exactly once) to reach a target.

The prompt and reward follow the paper (TinyZero style): the assistant turn opens with
"Let me solve this step by step.\\n<think>", and reward = 0.1 * format_reward + answer_reward.

Completions are model output (hostile): no regex with nested/adjacent lazy quantifiers is run on them; the
tag checks below use str.find, so every check is linear in the completion's length.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

from es_repro.tasks.answer_extract import last_block
from es_repro.tasks.base import Row, Task, data_file, parse_json
from es_repro.tasks.countdown_check import MAX_DIGITS, check_answer
from es_repro.util.errors import DataError

SYSTEM_PROMPT = (
    "You are a helpful assistant. You first think about the reasoning process in the mind and then provide "
    "the user with the answer."
)
USER_TEMPLATE = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use basic arithmetic "
    "operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. "
    "And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
)
ASSISTANT_PREFIX = "Let me solve this step by step.\n<think>"
# task.options.prefill=answer: the assistant turn is pre-filled up to "<answer>", so the model writes only the
# equation. A CPU-scale variant: a 135M model never closes </think> within a few hundred tokens, which leaves
# every ES member (and every GRPO sample) with reward exactly 0. The prefill counts as written by the assistant
# when scoring, so the format reward still requires "</answer>" to be produced by the model.
PREFILLS = {
    "think": ASSISTANT_PREFIX,
    "answer": ASSISTANT_PREFIX + " I will write the equation directly.\n</think>\n<answer>",
}
FILE_SIZES = (3, 4)  # how many numbers a problem read from a file may have (the paper's data: 3 or 4)

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_SEPARATOR = _THINK_CLOSE + "\n" + _ANSWER_OPEN


# ----------------------------------------------------------------------------------------------- prompt
def user_text(numbers: Sequence[int], target: int) -> str:
    return USER_TEMPLATE.format(numbers=list(numbers), target=target)


def build_prompt(numbers: Sequence[int], target: int, assistant_prefix: str = ASSISTANT_PREFIX) -> str:
    """The raw prompt text the paper fed the model, with Qwen chat markers written by hand."""
    return (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{user_text(numbers, target)}<|im_end|>\n"
        f"<|im_start|>assistant\n{assistant_prefix}"
    )


def make_row(numbers: Sequence[int], target: int, solution: str = "", prompt: str | None = None,
             assistant_prefix: str = ASSISTANT_PREFIX) -> Row:
    numbers = [int(x) for x in numbers]
    return {
        "prompt": build_prompt(numbers, target, assistant_prefix) if prompt is None else prompt,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_text(numbers, target)},
        ],
        "assistant_prefix": assistant_prefix,
        "numbers": numbers,
        "target": int(target),
        "solution": solution,
    }


# ----------------------------------------------------------------------------------------------- reward
def format_reward(completion: str) -> float:
    """1.0 if "<think>" + completion is exactly ``<think>...</think>\\n<answer>...</answer>``; otherwise
    0.1 for a <think>...</think> block plus 0.5 for an <answer>...</answer> block.

    Same as the paper's ``re.match(r"^<think>.*?</think>\\n<answer>.*?</answer>$", text, re.DOTALL)``,
    including Python's ``$`` quirk: a single trailing "\\n" after </answer> is allowed, nothing else is.
    Implemented with str.find: that regex backtracks quadratically on hostile text.
    """
    if not isinstance(completion, str):
        return 0.0
    text = _THINK_OPEN + completion
    body = text[:-1] if text.endswith("\n") else text
    # Full match <=> body ends with </answer> and "</think>\n<answer>" occurs between the opening
    # "<think>" and that final "</answer>" (the lazy .*? parts may hold anything, tags included).
    last = len(body) - len(_ANSWER_CLOSE)
    if body.endswith(_ANSWER_CLOSE) and body.find(_SEPARATOR, len(_THINK_OPEN), last) >= 0:
        return 1.0
    reward = 0.0
    if _has_block(text, _THINK_OPEN, _THINK_CLOSE):
        reward += 0.1
    if _has_block(text, _ANSWER_OPEN, _ANSWER_CLOSE):
        reward += 0.5
    return reward


def _has_block(text: str, open_tag: str, close_tag: str) -> bool:
    start = text.find(open_tag)
    return start >= 0 and text.find(close_tag, start + len(open_tag)) >= 0


def last_answer(completion: str) -> str | None:
    """Content of the last <answer>...</answer> block (see answer_extract.last_block), or None if there is none."""
    if not isinstance(completion, str):
        return None
    return last_block(completion, _ANSWER_OPEN, _ANSWER_CLOSE)


def scored_text(completion: str, assistant_prefix: str | None) -> str:
    """What the rewards read: the part of the assistant prefix after "<think>" (empty for the paper's prefix)
    followed by the completion, so a pre-filled "</think>\n<answer>" counts as the assistant's own text."""
    if not isinstance(completion, str) or not assistant_prefix or _THINK_OPEN not in assistant_prefix:
        return completion
    return assistant_prefix.split(_THINK_OPEN, 1)[1] + completion


def _scored(completions: list[str], assistant_prefix: list[str] | None) -> list[str]:
    prefixes = assistant_prefix if assistant_prefix is not None else [None] * len(completions)
    return [scored_text(c, p) for c, p in zip(completions, prefixes, strict=True)]


def answer_reward(completion: str, numbers: Sequence[int], target: int) -> float:
    """1.0 if the last answer block uses exactly the given numbers and equals the target, else 0.0."""
    answer = last_answer(completion)
    return 1.0 if answer is not None and check_answer(answer, numbers, target) else 0.0


def reward(completions: list[str], numbers: list[list[int]], target: list[int],
           assistant_prefix: list[str] | None = None, **_: Any) -> list[float]:
    completions = _scored(completions, assistant_prefix)
    return [
        0.1 * format_reward(c) + answer_reward(c, nums, t)
        for c, nums, t in zip(completions, numbers, target, strict=True)
    ]


def accuracy(completions: list[str], numbers: list[list[int]], target: list[int],
             assistant_prefix: list[str] | None = None, **_: Any) -> list[float]:
    completions = _scored(completions, assistant_prefix)
    return [answer_reward(c, nums, t) for c, nums, t in zip(completions, numbers, target, strict=True)]


def _extra_metrics(completions: list[str], rows: list[Row]) -> dict[str, float]:
    if not completions:
        return {}
    completions = _scored(completions, [row.get("assistant_prefix") for row in rows])
    formats = [format_reward(c) for c in completions]
    return {
        "format_reward": sum(formats) / len(formats),
        "format_perfect": sum(f == 1.0 for f in formats) / len(formats),
    }


# ----------------------------------------------------------------------------------------------- data
def _problem_key(numbers: Sequence[int], target: int) -> tuple[tuple[int, ...], int]:
    return tuple(sorted(numbers)), int(target)


def _random_solution(rng: random.Random, numbers: list[int]) -> tuple[int, str]:
    """Combine random pairs with a random legal operation until one value is left. Every intermediate value
    is a positive integer: '-' only when the result is positive, '/' only when it divides exactly."""
    items = [(n, str(n)) for n in numbers]
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        (a, ea), (b, eb) = items[i], items[j]
        ops = ["+", "*"] + (["-"] if a > b else []) + (["/"] if a % b == 0 else [])
        op = rng.choice(ops)
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        items = [item for k, item in enumerate(items) if k not in (i, j)] + [(value, f"({ea} {op} {eb})")]
    value, expr = items[0]
    return value, expr[1:-1] if expr.startswith("(") else expr  # drop the outermost parentheses


def generate_problems(
    n: int,
    seed: int,
    sizes: Sequence[int] = (3, 4),
    min_number: int = 1,
    max_number: int = 99,
    max_target: int = 999,
) -> list[Row]:
    """``n`` distinct solvable problems, deterministic for ``seed``. Sizes are taken in turn (so with (3, 4)
    half have 3 numbers, half 4); a longer call returns a shorter call's rows as its prefix."""
    if not sizes or any(int(s) < 2 for s in sizes):
        raise ValueError(f"sizes must be integers >= 2, got {sizes!r}")
    if not 1 <= min_number <= max_number < 10**MAX_DIGITS:
        raise ValueError(f"need 1 <= min_number <= max_number < 10**{MAX_DIGITS}, got {min_number}, {max_number}")
    if max_target < 1:
        raise ValueError(f"max_target must be >= 1, got {max_target}")
    rng = random.Random(seed)
    rows: list[Row] = []
    seen: set[tuple[tuple[int, ...], int]] = set()
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 1000 * (n + 10):  # guards against ranges too small to hold n distinct problems
            raise RuntimeError(f"found only {len(rows)} of {n} distinct problems; widen the number/target range")
        size = int(sizes[len(rows) % len(sizes)])
        numbers = [rng.randint(min_number, max_number) for _ in range(size)]
        target, solution = _random_solution(rng, numbers)
        key = _problem_key(numbers, target)
        if not 1 <= target <= max_target or key in seen:
            continue
        assert check_answer(solution, numbers, target), (solution, numbers, target)
        seen.add(key)
        rows.append(make_row(numbers, target, solution))
    return rows


def make_splits(
    train_size: int = 200,
    eval_size: int = 2000,
    seed: int = 0,
    sizes: Sequence[int] = (3, 4),
    min_number: int = 1,
    max_number: int = 99,
    max_target: int = 999,
) -> tuple[list[Row], list[Row]]:
    """Disjoint (train, eval) splits from one generator call (its rows are distinct problems). Eval comes
    first, so the eval set for a seed does not change with train_size."""
    rows = generate_problems(eval_size + train_size, seed, sizes, min_number, max_number, max_target)
    return rows[eval_size:], rows[:eval_size]


def _read_records(path: Path) -> list[tuple[str, Any]]:
    """(where, record) pairs: where = "<file>:<line>" for JSONL, "<file>: row <i>" for a JSON list."""
    text = data_file(path).read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("["):  # a JSON list; anything else is read as JSONL
        records = parse_json(text, str(path))
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON list of objects")
        return [(f"{path}: row {i}", r) for i, r in enumerate(records)]
    return [(f"{path}:{line_no}", parse_json(line, f"{path}:{line_no}"))
            for line_no, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _row_from_record(record: Any, where: str) -> Row:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {record!r:.80}")
    field = "nums" if "nums" in record and "numbers" not in record else "numbers"  # accept the alias
    numbers = record.get(field)
    sizes = "-".join(str(s) for s in FILE_SIZES)
    if not (
        isinstance(numbers, list)
        and len(numbers) in FILE_SIZES
        and all(_is_int(x) and 0 < x < 10**MAX_DIGITS for x in numbers)
    ):
        raise DataError(
            f"{where}: field '{field}' must be a list of {sizes} positive integers (at most {MAX_DIGITS} digits), "
            f"got {numbers!r:.80}"
        )
    target = record.get("target")
    if not _is_int(target):
        raise DataError(f"{where}: field 'target' must be an integer, got {target!r:.80}")
    solution = record.get("solution", "")
    if solution is None:
        solution = ""
    if not isinstance(solution, str) or (solution and not check_answer(solution, numbers, target)):
        raise DataError(
            f"{where}: field 'solution' must be an expression using the numbers to reach the target, "
            f"got {solution!r:.80}"
        )
    prompt = None
    for key in ("context", "prompt"):
        if record.get(key) is not None:
            prompt = record[key]
            if not isinstance(prompt, str) or not prompt:
                raise DataError(f"{where}: field '{key}' must be a non-empty string, got {prompt!r:.80}")
            break
    return make_row(numbers, target, solution, prompt)


def load_problems(path: str | Path) -> list[Row]:
    """Rows from a JSON list or JSONL file with ``numbers`` (or ``nums``), ``target``, optional ``solution``
    and optional ``context``/``prompt`` (raw prompt text, used verbatim). Errors name the file and the line
    (JSONL) or the row index from 0 (JSON list). Other fields are dropped."""
    return [_row_from_record(r, where) for where, r in _read_records(Path(path))]


def _with_prefix(rows: list[Row], assistant_prefix: str) -> list[Row]:
    """The same problems with another assistant prefix; a verbatim prompt read from a file cannot be changed."""
    out = []
    for row in rows:
        if row["prompt"] != build_prompt(row["numbers"], row["target"]):
            raise ValueError("task.options.prefill needs prompts built by es-repro; the data file gives its own prompt text")
        out.append(make_row(row["numbers"], row["target"], row["solution"], assistant_prefix=assistant_prefix))
    return out


def build_countdown_task(
    train_size: int = 200,
    eval_size: int = 2000,
    seed: int = 0,
    sizes: Sequence[int] = (3, 4),
    data_path: str | None = None,
    train_from_file: int = 200,
    max_number: int = 99,
    max_target: int = 999,
    prefill: str = "think",
) -> Task:
    """From a file: the first ``train_from_file`` rows train (at most train_size of them), the rest eval (at most
    eval_size), as in the paper's 2200-row file. Otherwise freshly generated splits. ``prefill`` picks the
    assistant prefix from PREFILLS ("think": the paper's)."""
    if prefill not in PREFILLS:
        raise ValueError(f"task.options.prefill={prefill!r} is not allowed; choose one of {', '.join(PREFILLS)}")
    if data_path is not None:
        rows = load_problems(data_path)
        if len(rows) <= train_from_file:
            raise DataError(f"{data_path}: {len(rows)} rows, need more than task.options.train_from_file={train_from_file}")
        train_rows, eval_rows = rows[:train_from_file][:train_size], rows[train_from_file:][:eval_size]
    else:
        train_rows, eval_rows = make_splits(
            train_size, eval_size, seed, sizes, max_number=max_number, max_target=max_target
        )
    if prefill != "think":
        train_rows, eval_rows = _with_prefix(train_rows, PREFILLS[prefill]), _with_prefix(eval_rows, PREFILLS[prefill])
    return Task(
        name="countdown",
        train_rows=train_rows,
        eval_rows=eval_rows,
        reward=reward,
        accuracy=accuracy,
        stop_strings=(_ANSWER_CLOSE,),
        extra_metrics=_extra_metrics,
    )
