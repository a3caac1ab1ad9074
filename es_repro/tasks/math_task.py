"""MATH-style problems with boxed answers checked by math-verify in the reward sandbox: ``task=math``.

Data: JSONL or parquet rows with ``problem``, ``answer`` (or ``solution``, whose last \\boxed{} is the answer)
and optionally ``level`` ("Level 3" or 3). ``data_path=null`` uses the 20 self-written smoke-test problems in
es_repro/tasks/data/math_fixtures.jsonl (not the MATH dataset). ``eval_path`` gives a separate test file;
otherwise one file is split by seed, eval first.

reward   = 1.0 when math-verify finds the completion's last \\boxed{} equivalent to the reference answer, else 0
           (+ format_reward when a closed \\boxed{} exists).
accuracy = 1.0 when verified equivalent.
math-verify parses LaTeX with sympy (costly, and parsing is code execution on model text), so it runs only in
the sandbox; this process extracts the boxed answers (linear, bounded) and reads back one boolean.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from es_repro.tasks.answer_extract import last_boxed
from es_repro.tasks.base import Row, Task, parse_json
from es_repro.tasks.reasoning_gym import chatml
from es_repro.tasks.sandboxed import SandboxRunner

FIXTURES = Path(__file__).parent / "data" / "math_fixtures.jsonl"
SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."  # Qwen2.5-Math's CoT prompt
WARM = [{"math": True}]


def read_rows(path: str) -> list[dict]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"MATH data file {path!r} does not exist")
    if p.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(p).to_dict("records")
    if p.suffix not in (".jsonl", ".json"):
        raise ValueError(f"MATH data file {path!r}: use .jsonl or .parquet")
    return [parse_json(line, f"{p}:{i}") for i, line in enumerate(p.read_text().splitlines(), 1) if line.strip()]


def level_of(value: Any) -> int | None:
    if isinstance(value, (int, float)) and value == value:
        return int(value)
    text = str(value or "").replace("Level", "").strip()
    return int(text) if text.isdigit() else None


def normalise(rows: list[dict], where: str, levels: list[int] | None, max_answer_chars: int) -> list[dict]:
    """Rows with a problem and a reference answer (``answer``, else the last \\boxed{} of ``solution``),
    filtered by level."""
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("problem"), str):
            raise ValueError(f"{where}: row {i} has no 'problem' string")
        answer = row.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            answer = last_boxed(row.get("solution"), max_answer_chars)
        if answer is None:
            raise ValueError(f"{where}: row {i} has neither an 'answer' nor a \\boxed{{}} answer in its 'solution'")
        level = level_of(row.get("level"))
        if levels and level not in levels:
            continue
        out.append({"problem": row["problem"], "answer": answer.strip(), "level": level})
    return out


def make_row(item: dict) -> Row:
    return {
        "prompt": chatml(SYSTEM_PROMPT, item["problem"]),
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": item["problem"]}],
        "assistant_prefix": "",
        "answer": item["answer"],
        "level": item["level"],
    }


def build_math_task(train_size: int = 200, eval_size: int = 200, seed: int = 0, data_path: str | None = None,
                    eval_path: str | None = None, levels: list[int] | None = None, format_reward: float = 0.0,
                    max_answer_chars: int = 512, sandbox: dict | None = None) -> Task:
    """levels: keep only these MATH levels (e.g. [3, 4, 5]; null = all). max_answer_chars: longer boxed answers
    score 0. sandbox: limits of the reward sandbox (es_repro/sandbox/limits.py)."""
    if format_reward < 0:
        raise ValueError(f"task.options.format_reward={format_reward} is not allowed; it must be >= 0")
    if max_answer_chars < 1:
        raise ValueError(f"task.options.max_answer_chars={max_answer_chars} is not allowed; it must be >= 1")
    if levels is not None and not all(isinstance(x, int) and 1 <= x <= 5 for x in levels):
        raise ValueError(f"task.options.levels={levels} is not allowed; use a list of levels 1..5 or null")
    source = data_path or str(FIXTURES)
    rng = random.Random(seed)
    items = normalise(read_rows(source), source, levels, max_answer_chars)
    if eval_path:
        evals = normalise(read_rows(eval_path), eval_path, levels, max_answer_chars)
        rng.shuffle(items)
        rng.shuffle(evals)
        train, evals = items[:train_size], evals[:eval_size]
    else:
        rng.shuffle(items)
        evals, train = items[:eval_size], items[eval_size:eval_size + train_size]
    if len(train) < train_size or len(evals) < eval_size:
        raise ValueError(f"MATH data {source}: {len(train)} train and {len(evals)} eval problems after the level filter "
                         f"{levels}, need task.train_size={train_size} and task.eval_size={eval_size}")
    runner = SandboxRunner(sandbox, WARM)

    def verified(completions: list[str], answer: list[str]) -> list[bool]:
        boxed = [last_boxed(c, max_answer_chars) for c in completions]
        jobs = [(i, ("math", {"gold": gold, "answer": b})) for i, (b, gold) in enumerate(zip(boxed, answer, strict=True)) if b]
        done = dict(zip([i for i, _ in jobs], runner.run([job for _, job in jobs])))
        return [i in done and done[i].ok and done[i].value is True for i in range(len(completions))]

    def reward(completions: list[str], answer: list[str], **_: Any) -> list[float]:
        bonus = [format_reward * (last_boxed(c, max_answer_chars) is not None) for c in completions]
        return [float(v) + b for v, b in zip(verified(completions, answer), bonus)]

    def accuracy(completions: list[str], answer: list[str], **_: Any) -> list[float]:
        return [float(v) for v in verified(completions, answer)]

    def extra_metrics(completions: list[str], rows: list[Row]) -> dict[str, float]:
        if not completions:
            return {}
        return {"boxed": sum(last_boxed(c, max_answer_chars) is not None for c in completions) / len(completions)}

    return Task(name="math", train_rows=[make_row(x) for x in train], eval_rows=[make_row(x) for x in evals],
                reward=reward, accuracy=accuracy, extra_metrics=extra_metrics, info=runner.info)
