"""The Task contract shared by ES, the RL baselines and the evaluator.

A task is data plus pure functions over text:
- rows: dicts with a ``prompt`` (the raw prompt text, the paper's choice), ``messages`` (the same request as
  chat messages, without the assistant turn), ``assistant_prefix`` (text the assistant turn starts with, e.g.
  "<think>"; "" for none) and whatever columns the reward reads (e.g. ``numbers``, ``target``).
- reward(completions, **columns) -> list[float]: TRL's reward-function convention; unknown keyword arguments
  are ignored. It scores the generated text only, never the prompt.
- accuracy(completions, **columns) -> list[float]: 1.0 where the row counts as solved, else 0.0.
Fitness is maximised everywhere: a larger reward is better.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from es_repro.util.errors import DataError

MAX_DATA_BYTES = 256 * 2**20  # a task data file larger than this is refused before it is read

Row = dict[str, Any]
RewardFn = Callable[..., list[float]]


@dataclass(frozen=True)
class Task:
    name: str
    train_rows: list[Row]
    eval_rows: list[Row]
    reward: RewardFn
    accuracy: RewardFn
    # Generation stops once a completion contains one of these (e.g. "</answer>").
    stop_strings: tuple[str, ...] = ()
    # Extra per-task numbers worth logging at evaluation time: fn(completions, rows) -> {name: value}.
    extra_metrics: Callable[[list[str], list[Row]], dict[str, float]] | None = field(default=None, repr=False)
    # Facts about how the task scores, recorded in run.json as "task_info" (e.g. the sandbox isolation that ran).
    info: dict[str, Any] = field(default_factory=dict)


def columns(rows: Sequence[Row]) -> dict[str, list[Any]]:
    """Turn rows into TRL-style keyword columns: {"target": [t0, t1, ...], ...} (``prompt`` included)."""
    keys = sorted({k for row in rows for k in row})
    return {k: [row.get(k) for row in rows] for k in keys}


def score(fn: RewardFn, completions: Sequence[str], rows: Sequence[Row]) -> list[float]:
    """Call a reward/accuracy function on completions with the rows' columns as keyword arguments."""
    if len(completions) != len(rows):
        raise ValueError(f"{len(completions)} completions for {len(rows)} rows")
    values = fn(list(completions), **columns(rows))
    return [float(v) for v in values]


def parse_json(text: str, where: str) -> Any:
    """json.loads for data files; a decode error becomes a DataError that names ``where`` (file:line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not valid JSON ({err})") from None


def data_file(path: str | Path, option: str = "task.options.data_path") -> Path:
    """A task data file that exists and is not too large to read (checked before reading a byte)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file ({option}={str(path)!r})")
    size = path.stat().st_size
    if size > MAX_DATA_BYTES:
        raise DataError(f"{path}: {size / 2**20:.0f} MiB is larger than the {MAX_DATA_BYTES // 2**20} MiB a task file may be")
    return path
