"""Any reasoning-gym dataset as an es-repro task: ``task=rg task.options.dataset=mini_sudoku``.

reasoning-gym (pinned in pyproject.toml) generates questions offline and scores answers with each dataset's
own ``score_answer``. This adapter adds a prompt that asks for the final answer inside <answer></answer>, a
safe extraction of that answer, a fixed seeded train/test split, and guards around the scorers:

reward   = score_answer(last <answer> block, entry) clipped to [0, 1]  +  format_reward * (a closed block exists)
accuracy = 1.0 where the dataset's score is full credit (1.0), else 0.0
No answer block (or an over-long one) scores 0, whatever the dataset would give ``None``.

Safety of the scorers (audited for reasoning-gym 0.1.25 by feeding a marker string to every dataset's
score_answer and watching eval/exec; tests/test_reasoning_gym.py repeats the audit on the installed version):
- SANDBOXED_EVAL: score_answer calls Python eval() on the model's text (arbitrary code execution), and
- SANDBOXED_SYMPY: score_answer runs sympy.parse_expr (which evals) on free-form symbolic model text; no
  character filter can rule out costly or unsafe names there. Both score only in the reward sandbox
  (es_repro/sandbox: a separate worker process, namespaces, rlimits, a wall-clock kill; task.options.sandbox
  sets its limits), never in this process. Their exact-match path gives full credit; text that reaches eval
  can at most fake the eval path's partial credit (0.1 / 0.5), never accuracy.
- NUMERIC_SYMPY: parse_expr on an arithmetic answer. Only answers made of digits, spaces, + - * / ( ) and
  '.' (no '**'), at most NUMERIC_MAX_CHARS long, reach the scorer; others score 0.
- Every scorer call: the answer is at most ``max_answer_chars`` long (4096 by default; the audit's worst
  scorer takes ~0.1 s on 4096 characters of garbage), runs under a ``score_timeout`` (SIGALRM; main thread
  only, see answer_extract.time_limited), and any exception scores 0. The timer is a backstop, not a proof:
  C code that never checks for signals runs on (sympy's Float("1e999999") took 52 s under a 2 s limit
  here), which is why the NUMERIC_SYMPY filter admits no letters at all.
Other datasets evaluate their own generated data (e.g. bitwise_arithmetic, number_sorting), never model text;
they and NUMERIC_SYMPY score in this process (no sandbox overhead).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from es_repro.tasks.answer_extract import ANSWER_CLOSE, extract_answer, last_tag_block, time_limited
from es_repro.tasks.base import Row, Task
from es_repro.tasks.sandboxed import SandboxRunner

SANDBOXED_EVAL = frozenset({"binary_matrix", "n_queens", "spiral_matrix", "string_insertion"})
SANDBOXED_SYMPY = frozenset({"intermediate_integration", "polynomial_multiplication", "simple_integration"})
SANDBOXED = SANDBOXED_EVAL | SANDBOXED_SYMPY
NUMERIC_SYMPY = frozenset({"countdown", "puzzle24"})
NUMERIC_CHARS = frozenset("0123456789+-*/(). \t\n")
NUMERIC_MAX_CHARS = 256

SYSTEM_PROMPT = (
    "You are a helpful assistant. Solve the user's problem. You may reason briefly first; then give only the "
    "final answer, in exactly the format the problem asks for, inside <answer> </answer> tags."
)


# ----------------------------------------------------------------------------------------------- data
def _load_reasoning_gym():
    try:
        import reasoning_gym  # lazy: start-up stays fast and other tasks work without it
    except ImportError as err:
        raise ImportError("task=rg needs reasoning-gym: pip install 'reasoning-gym==0.1.25'") from err
    return reasoning_gym


def make_dataset(dataset: str, config: dict | None, seed: int, size: int):
    """A reasoning-gym dataset object; bad names and options fail naming the option and the allowed values."""
    rg = _load_reasoning_gym()
    names = sorted(rg.factory.DATASETS)
    if dataset not in rg.factory.DATASETS:
        raise ValueError(f"task.options.dataset={dataset!r} is not a reasoning-gym dataset; choose one of: {', '.join(names)}")
    config = dict(config or {})
    for key in ("seed", "size"):
        if key in config:
            raise ValueError(f"task.options.config.{key} is set by es-repro (task.data_seed, task.train_size/eval_size); remove it")
    config_cls = rg.factory.DATASETS[dataset][1]
    allowed = [f.name for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size")]
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ValueError(f"task.options.config {unknown} not accepted by reasoning-gym dataset {dataset!r}; allowed: {', '.join(allowed)}")
    try:
        return rg.create_dataset(dataset, seed=seed, size=size, **config)
    except (AssertionError, ValueError, TypeError) as err:
        raise ValueError(f"task.options.config={config} rejected by reasoning-gym dataset {dataset!r}: {err}") from None


def draw_entries(ds: Any, n_eval: int, n_train: int, split_key: str | None, what: str) -> tuple[list[dict], list[dict]]:
    """(eval, train) entries taken in index order: distinct questions, eval first (so the eval set of a seed does
    not change with n_train), train skipping any question (and any ``split_key`` metadata value) seen in eval."""
    seen_questions: set[str] = set()
    eval_keys: set[Any] = set()
    evals: list[dict] = []
    train: list[dict] = []
    for idx in range(len(ds)):
        if len(train) >= n_train:
            break
        entry = ds[idx]
        question = entry["question"]
        if question in seen_questions:
            continue
        key = None
        if split_key is not None:
            metadata = entry.get("metadata") or {}
            if split_key not in metadata:
                raise ValueError(f"task.options.split_key={split_key!r} is not a metadata field of {what}; "
                                 f"fields: {', '.join(sorted(metadata))}")
            key = repr(metadata[split_key])
        if len(evals) < n_eval:
            evals.append(entry)
            eval_keys.add(key)
        elif key is None or key not in eval_keys:
            train.append(entry)
        else:
            continue
        seen_questions.add(question)
    if len(evals) < n_eval or len(train) < n_train:
        raise ValueError(f"{what}: found {len(evals)} eval and {len(train)} train distinct items in {len(ds)} draws, "
                         f"need {n_eval} and {n_train}; lower task.eval_size/train_size or widen task.options.config")
    return evals, train


def user_text(question: str) -> str:
    return question.rstrip() + "\n\nPut the final answer inside <answer> </answer> tags."


def chatml(system: str, user: str) -> str:
    """Raw prompt text: ChatML written by hand, as the templates of Qwen (the paper's models) and SmolLM2 render
    it; task.prompt_format=chat uses the model's own template instead."""
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def make_row(entry: dict, dataset: str) -> Row:
    text = user_text(entry["question"])
    return {
        "prompt": chatml(SYSTEM_PROMPT, text),
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}],
        "assistant_prefix": "",
        "rg_dataset": dataset,
        "rg_entry": entry,
        "answer": entry["answer"],
    }


# ----------------------------------------------------------------------------------------------- scoring
def _unit(value: Any) -> float:
    """A scorer's value as a float clipped to [0, 1]; non-numbers and NaN -> 0."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 0.0
    return min(1.0, max(0.0, value)) if value == value else 0.0


class Scorer:
    """The dataset's own score_answer behind the guards listed in the module docstring; for SANDBOXED datasets
    ``runner`` (a SandboxRunner warmed with this dataset) scores instead, in its worker processes."""

    def __init__(self, ds: Any, dataset: str, max_answer_chars: int = 4096, score_timeout: float = 2.0,
                 runner: SandboxRunner | None = None, config: dict | None = None):
        self.ds, self.dataset = ds, dataset
        self.max_answer_chars, self.score_timeout = max_answer_chars, score_timeout
        self.runner, self.config = runner, dict(config or {})
        if dataset in SANDBOXED and runner is None:
            raise ValueError(f"reasoning-gym dataset {dataset!r} evaluates model text: it scores only in the sandbox")

    def admissible(self, answer: str) -> bool:
        if self.dataset in NUMERIC_SYMPY:
            return len(answer) <= NUMERIC_MAX_CHARS and "**" not in answer and set(answer) <= NUMERIC_CHARS
        return True

    def score_answer(self, answer: str | None, entry: dict) -> float:
        """The dataset's score of an extracted answer, in [0, 1]; 0 for None, inadmissible, errors, timeouts."""
        return self.score_answers([answer], [entry])[0]

    def score_answers(self, answers: list[str | None], entries: list[dict]) -> list[float]:
        """score_answer for many answers: one parallel batch in the sandbox, or one by one in this process."""
        ok = [a is not None and self.admissible(a) for a in answers]
        if self.runner is None:
            return [_unit(time_limited(self.ds.score_answer, self.score_timeout, 0.0, a, e)) if good else 0.0
                    for a, e, good in zip(answers, entries, ok)]
        jobs = [("rg", {"dataset": self.dataset, "config": self.config, "answer": a, "entry": e})
                for a, e, good in zip(answers, entries, ok) if good]
        results = iter(self.runner.run(jobs))
        return [_unit(next(results).value) if good else 0.0 for good in ok]

    def score(self, completion: Any, entry: dict) -> float:
        return self.score_many([completion], [entry])[0]

    def score_many(self, completions: list[Any], entries: list[dict]) -> list[float]:
        return self.score_answers([extract_answer(c, self.max_answer_chars) for c in completions], entries)


def check_references(scorer: Scorer, entries: list[dict]) -> None:
    """Every reference answer must score 1.0 (the maximum), or the dataset's scorer cannot serve as a reward
    (e.g. rush_hour, boxnet, propositional_logic in 0.1.25 ship no single reference answer)."""
    refs = [e["answer"].strip() if isinstance(e["answer"], str) and len(e["answer"].strip()) <= scorer.max_answer_chars
            else None for e in entries]
    for i, value in enumerate(scorer.score_answers(refs, entries)):
        if value != 1.0:
            raise ValueError(f"reasoning-gym dataset {scorer.dataset!r}: the reference answer of item {i} does not score 1.0 "
                             f"(or is longer than task.options.max_answer_chars={scorer.max_answer_chars}); "
                             "its scorer cannot be used as a reward here")


def has_answer_block(completion: Any) -> float:
    return 1.0 if last_tag_block(completion) is not None else 0.0


def build_rg_task(train_size: int = 800, eval_size: int = 200, seed: int = 0, dataset: str | None = None,
                  config: dict | None = None, format_reward: float = 0.0, split_key: str | None = None,
                  max_answer_chars: int = 4096, score_timeout: float = 2.0, sandbox: dict | None = None) -> Task:
    """A reasoning-gym dataset as a Task: rows drawn with seed ``seed`` (task.data_seed), eval first.

    format_reward: weight of the format bonus (0 = off; e.g. 0.1 as in Countdown).
    split_key: a metadata field kept disjoint across the splits too (e.g. "task_id" for arc_agi/rearc, so a
    test puzzle's underlying ARC task never appears in training, only augmentations differ otherwise).
    sandbox: limits of the reward sandbox (es_repro/sandbox/limits.py) for the SANDBOXED datasets; unused otherwise.
    """
    if dataset is None:
        raise ValueError("task.options.dataset is required, e.g. task.options.dataset=mini_sudoku")
    if format_reward < 0:
        raise ValueError(f"task.options.format_reward={format_reward} is not allowed; it must be >= 0")
    if max_answer_chars < 1:
        raise ValueError(f"task.options.max_answer_chars={max_answer_chars} is not allowed; it must be >= 1")
    n_draws = 4 * (train_size + eval_size) + 100  # headroom for duplicates and split_key collisions
    ds = make_dataset(dataset, config, seed, n_draws)
    evals, train = draw_entries(ds, eval_size, train_size, split_key, f"reasoning-gym dataset {dataset!r}")
    runner = SandboxRunner(sandbox, [{"rg": dataset, "config": config or {}}]) if dataset in SANDBOXED else None
    scorer = Scorer(ds, dataset, max_answer_chars, score_timeout, runner, config)
    check_references(scorer, evals + train)

    def reward(completions: list[str], rg_entry: list[dict], **_: Any) -> list[float]:
        scores = scorer.score_many(completions, rg_entry)
        return [s + format_reward * has_answer_block(c) for s, c in zip(scores, completions, strict=True)]

    def accuracy(completions: list[str], rg_entry: list[dict], **_: Any) -> list[float]:
        return [float(s == 1.0) for s in scorer.score_many(completions, rg_entry)]

    def extra_metrics(completions: list[str], rows: list[Row]) -> dict[str, float]:
        if not completions:
            return {}
        scores = scorer.score_many(completions, [r["rg_entry"] for r in rows])
        return {"rg_score": sum(scores) / len(scores),
                "answer_block": sum(map(has_answer_block, completions)) / len(completions)}

    return Task(
        name=f"rg:{dataset}",
        train_rows=[make_row(e, dataset) for e in train],
        eval_rows=[make_row(e, dataset) for e in evals],
        reward=reward,
        accuracy=accuracy,
        stop_strings=(ANSWER_CLOSE,),
        extra_metrics=extra_metrics,
        info=runner.info if runner else {},
    )
