"""The paper's Conciseness task: answer short questions with as few characters as the reference answer.

reward = -|len(completion) - len(target)| in characters (completions only). The paper plots a normalised
value, 1 + reward / 2000 clipped to [0, 1]; `display_reward` computes it.
"""
from __future__ import annotations

from es_repro.tasks.base import Row, Task

# The paper's appendix: 2 training prompts and 8 held-out prompts, each with its one-word/one-number answer.
TRAIN_PAIRS = [
    ("Solve: 3 + 5 =", "8"),
    ("If all birds can fly and penguins are birds, can penguins fly?", "No"),
]
EVAL_PAIRS = [
    ("What is the capital of France?", "Paris"),
    ("Calculate: 12 × 7 =", "84"),
    ('Is the statement "All cats are mammals" true or false?', "True"),
    ("What comes next in the sequence: 2,4,6,8, ?", "10"),
    ('Translate "Hello" to Spanish:', "Hola"),
    ("What is 15% of 200?", "30"),
    ("Name one primary color:", "Red"),
    ("How many days are in a week?", "7"),
]
DISPLAY_FLOOR = -2000.0  # raw reward shown as 0 in the paper's plots


def reward(completions: list[str], target: list[str], **_) -> list[float]:
    return [-float(abs(len(c) - len(t))) for c, t in zip(completions, target)]


def _normalise(text: str) -> str:
    return text.strip().strip(".!").strip().lower()


def accuracy(completions: list[str], target: list[str], **_) -> list[float]:
    """Exact answer, ignoring case, surrounding space and a final period."""
    return [float(_normalise(c) == _normalise(t)) for c, t in zip(completions, target)]


def display_reward(raw: float) -> float:
    return min(1.0, max(0.0, 1.0 - raw / DISPLAY_FLOOR))


def _extra(completions: list[str], rows: list[Row]) -> dict[str, float]:
    raw = reward(completions, [r["target"] for r in rows])
    return {"display_reward": sum(map(display_reward, raw)) / max(len(raw), 1)}


def _row(question: str, target: str) -> Row:
    return {"prompt": question, "messages": [{"role": "user", "content": question}], "assistant_prefix": "", "target": target}


def build_conciseness_task(train_size: int = 2, eval_size: int = 8, seed: int = 0) -> Task:
    """The paper's fixed prompts; train_size/eval_size can only take fewer of them (seed is unused)."""
    return Task(
        name="conciseness",
        train_rows=[_row(q, t) for q, t in TRAIN_PAIRS[:train_size]],
        eval_rows=[_row(q, t) for q, t in EVAL_PAIRS[:eval_size]],
        reward=reward,
        accuracy=accuracy,
        extra_metrics=_extra,
    )
