"""Task registry: a task name in config maps to one builder here (one grep from YAML to code).

A builder takes (train_size, eval_size, seed, **task.options) and returns a Task (see tasks/base.py).
"""
from __future__ import annotations

import inspect
from typing import Callable

from es_repro.tasks.arc_program import build_arc_program_task
from es_repro.tasks.base import Row, Task, columns, score
from es_repro.tasks.conciseness import build_conciseness_task
from es_repro.tasks.countdown import build_countdown_task
from es_repro.tasks.esma import build_esma_task
from es_repro.tasks.math_task import build_math_task
from es_repro.tasks.reasoning_gym import build_rg_task  # imports reasoning_gym only when a task is built
from es_repro.tasks.synthetic import build_synthetic_task
from es_repro.util.errors import ConfigError, DataError

TASKS: dict[str, Callable[..., Task]] = {
    "countdown": build_countdown_task,
    "conciseness": build_conciseness_task,
    "synthetic": build_synthetic_task,
    "rg": build_rg_task,
    "esma": build_esma_task,
    "arc_program": build_arc_program_task,  # model-written programs, run in the reward sandbox
    "math": build_math_task,  # boxed answers checked by math-verify in the reward sandbox
}


def task_from_config(task_cfg, eval_size: int | None = None) -> Task:
    """The task a TaskConfig (cfg.task) describes; eval_size overrides task.eval_size (the benchmark needs 1)."""
    return build_task(task_cfg.name, task_cfg.train_size, task_cfg.eval_size if eval_size is None else eval_size,
                      task_cfg.data_seed, task_cfg.options)


def build_task(name: str, train_size: int, eval_size: int, seed: int, options: dict | None = None) -> Task:
    """Build a task by name; unknown names or options fail with the allowed values (ConfigError), bad data files
    with the file and line (DataError)."""
    if name not in TASKS:
        raise ConfigError(f"task.name={name!r} is unknown; choose one of: {', '.join(sorted(TASKS))}")
    builder = TASKS[name]
    allowed = [p for p in inspect.signature(builder).parameters if p not in ("train_size", "eval_size", "seed")]
    unknown = sorted(set(options or {}) - set(allowed))
    if unknown:
        raise ConfigError(f"task.options {unknown} not accepted by task {name!r}; allowed options: {', '.join(allowed) or 'none'}")
    try:
        return builder(train_size=train_size, eval_size=eval_size, seed=seed, **(options or {}))
    except DataError:
        raise
    except ValueError as err:  # builders raise ValueError for option values they refuse
        raise ConfigError(str(err)) from err


__all__ = ["TASKS", "Row", "Task", "build_task", "columns", "score"]
