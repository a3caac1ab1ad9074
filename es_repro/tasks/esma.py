"""ESMA (Park, Meyerson, Qiu, Miikkulainen, arXiv 2602.02605): reward a model for knowing what it knows.

Each question is asked twice, in independent prompts: the direct question, and a meta question asking whether
the model knows the answer (reply Yes or No). Per question, with correct = the direct answer is right and
yes = the meta reply starts with "yes":

    joint reward = correct + aligned,  aligned = (yes == correct)
                 -> 2 correct & yes | 1 wrong & no | 1 correct & no | 0 wrong & yes
    ablations (task.options.reward_mode): correctness = correct; alignment = aligned.
A meta reply that is neither yes nor no is never aligned (it scores like the worse of the two replies).

Pairing (keeps the Task contract): rows come in adjacent pairs (direct, meta) sharing ``question_id``, with a
``role`` column. The reward function sees the whole batch, pairs the k-th direct row of a question with its k-th
meta row (batch order; this also pairs GRPO's repeated completions one to one) and gives BOTH rows of a pair the
question's reward, so the mean over rows equals the mean reward per question. A row without a partner in the
batch gets reward 0 (accuracy: its own correctness for a direct row, 0 for a meta row). That constant is
neutral for ES: all members of a generation score the same rows and fitness is z-scored, so constant rows
change no update; in GRPO a constant reward gives zero advantage. Pairs only split when es.prompts_per_generation
> 0 or eval.size is odd; the shipped configs use neither (conf/experiment/esma.yaml: every member sees all
256 training questions each generation).

Metric (extra_metrics, logged as eval_esma_*): d'_type2 = Phi^-1(hit) - Phi^-1(false alarm), hit = P(yes |
correct), false alarm = P(yes | wrong), rates clipped to [1e-4, 1 - 1e-4]; None when no question was answered
correctly or none wrongly. Also the share of aligned answers, raw accuracy and the yes rate.

Questions: a reasoning-gym dataset (offline; default basic_arithmetic, correct = the dataset's scorer gives full
credit) or a JSONL file of {"question": str, "answers": [str, ...]} (TriviaQA-style; correct = a normalised
alias equals, or appears as whole words in, the normalised answer).
"""
from __future__ import annotations

import random
from pathlib import Path
from statistics import NormalDist
from typing import Any, Callable, Sequence

from es_repro.tasks.answer_extract import matches_alias, short_answer, yes_no
from es_repro.tasks.base import Row, Task, data_file, parse_json
from es_repro.tasks.reasoning_gym import SANDBOXED, Scorer, chatml, check_references, draw_entries, make_dataset
from es_repro.util.errors import DataError

REWARD_MODES = ("joint", "correctness", "alignment")
SOURCES = ("rg", "jsonl")
RATE_CLIP = 1e-4
SYSTEM_PROMPT = "You are a helpful assistant."
DIRECT_TEMPLATE = "Answer the following question. Reply with only the final answer, nothing else.\n\nQuestion: {question}"
META_TEMPLATE = ("Do you know the answer to the following question? Do not answer the question itself. "
                 "Reply with only Yes or No.\n\nQuestion: {question}")


# ----------------------------------------------------------------------------------------------- reward table
def question_reward(correct: bool, says_yes: bool | None, mode: str = "joint") -> float:
    """The per-question reward of the table in the module docstring."""
    c = 1.0 if correct else 0.0
    aligned = 1.0 if says_yes is not None and says_yes == correct else 0.0
    if mode == "joint":
        return c + aligned
    if mode == "correctness":
        return c
    if mode == "alignment":
        return aligned
    raise ValueError(f"task.options.reward_mode={mode!r} is not allowed; choose one of: {', '.join(REWARD_MODES)}")


def dprime_type2(hits: int, n_correct: int, false_alarms: int, n_wrong: int, clip: float = RATE_CLIP) -> float | None:
    """Phi^-1(hit rate) - Phi^-1(false-alarm rate), rates clipped to [clip, 1 - clip]; None if a class is empty."""
    if n_correct == 0 or n_wrong == 0:
        return None
    phi_inv = NormalDist().inv_cdf
    hit = min(1.0 - clip, max(clip, hits / n_correct))
    fa = min(1.0 - clip, max(clip, false_alarms / n_wrong))
    return phi_inv(hit) - phi_inv(fa)


def pair_rows(question_id: Sequence[Any], role: Sequence[str]) -> tuple[list[tuple[int, int]], list[int]]:
    """(direct index, meta index) pairs, the k-th direct row of a question with its k-th meta row in batch order,
    and the indices of rows left without a partner (sorted)."""
    directs: dict[Any, list[int]] = {}
    metas: dict[Any, list[int]] = {}
    for i, (qid, r) in enumerate(zip(question_id, role, strict=True)):
        if r not in ("direct", "meta"):
            raise ValueError(f"ESMA row {i}: role={r!r}, expected 'direct' or 'meta'")
        (directs if r == "direct" else metas).setdefault(qid, []).append(i)
    pairs, lone = [], []
    for qid in list(directs) + [q for q in metas if q not in directs]:
        d, m = directs.get(qid, []), metas.get(qid, [])
        pairs.extend(zip(d, m))
        lone.extend(d[len(m):] + m[len(d):])
    return sorted(pairs), sorted(lone)


# ----------------------------------------------------------------------------------------------- task
class Judge:
    """Correctness of a direct reply and the yes/no of a meta reply, from completions and columns."""

    def __init__(self, rg_scorer: Scorer | None, max_answer_chars: int = 256):
        self.rg_scorer, self.max_answer_chars = rg_scorer, max_answer_chars

    def correct(self, completion: Any, answers: list[str] | None, rg_entry: dict | None) -> bool:
        answer = short_answer(completion, self.max_answer_chars)
        if rg_entry is not None and self.rg_scorer is not None:
            return self.rg_scorer.score_answer(answer, rg_entry) == 1.0
        return matches_alias(answer, answers or [])

    def judge(self, completions: list[str], question_id: list, role: list[str], answers: list,
              rg_entry: list | None = None) -> tuple[list[tuple[int, int, bool, bool | None]], list[int]]:
        """[(direct index, meta index, correct, says_yes)] for each pair, and the lone row indices."""
        if rg_entry is None:
            rg_entry = [None] * len(completions)
        pairs, lone = pair_rows(question_id, role)
        judged = [(d, m, self.correct(completions[d], answers[d], rg_entry[d]), yes_no(completions[m])) for d, m in pairs]
        return judged, lone


def esma_metrics(judged: list[tuple[int, int, bool, bool | None]]) -> dict[str, float | None]:
    """d'_type2, hit and false-alarm rates, aligned share, accuracy, yes rate, invalid meta replies, joint reward."""
    n = len(judged)
    if n == 0:
        return {"esma_pairs": 0}
    correct = [c for _, _, c, _ in judged]
    yes = [y is True for _, _, _, y in judged]
    n_correct = sum(correct)
    hits = sum(y for c, y in zip(correct, yes) if c)
    false_alarms = sum(y for c, y in zip(correct, yes) if not c)
    return {
        "esma_pairs": n,
        "esma_accuracy": n_correct / n,
        "esma_aligned": sum(question_reward(c, y, "alignment") for _, _, c, y in judged) / n,
        "esma_joint": sum(question_reward(c, y, "joint") for _, _, c, y in judged) / n,
        "esma_yes_rate": sum(yes) / n,
        "esma_meta_invalid": sum(y is None for _, _, _, y in judged) / n,
        "esma_hit_rate": hits / n_correct if n_correct else None,
        "esma_false_alarm_rate": false_alarms / (n - n_correct) if n - n_correct else None,
        "esma_dprime": dprime_type2(hits, n_correct, false_alarms, n - n_correct),
    }


def make_pair(question: str, answers: list[str], question_id: int, rg_entry: dict | None = None) -> list[Row]:
    rows = []
    for role, template in (("direct", DIRECT_TEMPLATE), ("meta", META_TEMPLATE)):
        text = template.format(question=question.strip())
        rows.append({
            "prompt": chatml(SYSTEM_PROMPT, text),
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}],
            "assistant_prefix": "",
            "question_id": question_id,
            "role": role,
            "question": question,
            "answers": list(answers),
            "rg_entry": rg_entry,
        })
    return rows


def load_qa_jsonl(path: str | Path) -> list[tuple[str, list[str]]]:
    """(question, answers) from a JSONL file of {"question": str, "answers": [str, ...]} (a single string is
    accepted for answers). Bad rows raise ValueError naming the file, the row (1-based line number) and field."""
    path = data_file(path)
    out = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            record = parse_json(line, where)
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            question = record.get("question")
            if not isinstance(question, str) or not question.strip():
                raise DataError(f"{where}: field 'question' must be a non-empty string, got {question!r:.80}")
            answers = record.get("answers")
            if isinstance(answers, str):
                answers = [answers]
            if not (isinstance(answers, list) and answers and all(isinstance(a, str) and a.strip() for a in answers)):
                raise DataError(f"{where}: field 'answers' must be a non-empty list of non-empty strings, got {answers!r:.80}")
            out.append((question, answers))
    return out


def _jsonl_splits(path: str, train_size: int, eval_size: int, seed: int) -> tuple[list, list]:
    """Distinct questions in a seeded order, eval first, then train."""
    records, seen = [], set()
    for question, answers in load_qa_jsonl(path):
        if question not in seen:
            seen.add(question)
            records.append((question, answers))
    random.Random(seed).shuffle(records)
    if len(records) < eval_size + train_size:
        raise ValueError(f"task.options.data_path={path!r}: {len(records)} distinct questions, need "
                         f"task.eval_size + task.train_size = {eval_size + train_size}")
    return records[:eval_size], records[eval_size:eval_size + train_size]


def build_esma_task(train_size: int = 256, eval_size: int = 1000, seed: int = 0, source: str = "rg",
                    dataset: str = "basic_arithmetic", config: dict | None = None, data_path: str | None = None,
                    reward_mode: str = "joint", max_answer_chars: int = 256, score_timeout: float = 2.0) -> Task:
    """train_size/eval_size count QUESTIONS; each gives two rows (direct, meta), adjacent."""
    if reward_mode not in REWARD_MODES:
        raise ValueError(f"task.options.reward_mode={reward_mode!r} is not allowed; choose one of: {', '.join(REWARD_MODES)}")
    if source not in SOURCES:
        raise ValueError(f"task.options.source={source!r} is not allowed; choose one of: {', '.join(SOURCES)}")
    scorer = None
    if source == "rg":
        if dataset in SANDBOXED:
            raise ValueError(f"task.options.dataset={dataset!r} is not available in task=esma: its scorer evaluates model "
                             "text, which only task=rg runs (in the reward sandbox)")
        ds = make_dataset(dataset, config, seed, 4 * (train_size + eval_size) + 100)
        evals, train = draw_entries(ds, eval_size, train_size, None, f"reasoning-gym dataset {dataset!r}")
        scorer = Scorer(ds, dataset, max_answer_chars, score_timeout)
        check_references(scorer, evals + train)
        eval_q = [(e["question"], [e["answer"]], e) for e in evals]
        train_q = [(e["question"], [e["answer"]], e) for e in train]
    else:
        if data_path is None:
            raise ValueError("task.options.source=jsonl needs task.options.data_path=<file.jsonl>")
        evals, train = _jsonl_splits(data_path, train_size, eval_size, seed)
        eval_q = [(q, a, None) for q, a in evals]
        train_q = [(q, a, None) for q, a in train]
    judge = Judge(scorer, max_answer_chars)

    def rows(questions: list, offset: int) -> list[Row]:
        return [row for i, (q, a, e) in enumerate(questions) for row in make_pair(q, a, offset + i, e)]

    def per_row(value: Callable[[bool, bool | None], float], score_lone_direct: bool):
        """Both rows of a pair get value(correct, says_yes); lone rows 0, or a lone direct row its correctness."""
        def fn(completions: list[str], question_id: list, role: list[str], answers: list,
               rg_entry: list | None = None, **_: Any) -> list[float]:
            entries = rg_entry if rg_entry is not None else [None] * len(completions)
            judged, lone = judge.judge(completions, question_id, role, answers, entries)
            out = [0.0] * len(completions)
            for d, m, c, y in judged:
                out[d] = out[m] = value(c, y)
            for i in lone:
                if score_lone_direct and role[i] == "direct":
                    out[i] = float(judge.correct(completions[i], answers[i], entries[i]))
            return out
        return fn

    reward = per_row(lambda c, y: question_reward(c, y, reward_mode), score_lone_direct=False)
    accuracy = per_row(lambda c, y: float(c), score_lone_direct=True)

    def extra_metrics(completions: list[str], batch: list[Row]) -> dict[str, float | None]:
        judged, _ = judge.judge(completions, [r["question_id"] for r in batch], [r["role"] for r in batch],
                                [r["answers"] for r in batch], [r.get("rg_entry") for r in batch])
        return esma_metrics(judged)

    return Task(name="esma", train_rows=rows(train_q, len(eval_q)), eval_rows=rows(eval_q, 0), reward=reward,
                accuracy=accuracy, extra_metrics=extra_metrics)
