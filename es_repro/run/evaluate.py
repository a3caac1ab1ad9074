"""Held-out evaluation shared by ES and the RL baselines: accuracy, mean reward, and KL to the base model.

KL uses the per-token k3 estimator on tokens sampled from the fine-tuned model:
    k3 = r - log r - 1,  r = p_base(token) / p_finetuned(token),
averaged over all generated tokens. It is unbiased for KL(finetuned || base) when sampling at temperature 1
and is always >= 0. Everything model-specific goes through the Backend (es_repro/engines/base.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from es_repro.engines.base import Backend
from es_repro.run.log import SAMPLES_FILE, RunLog
from es_repro.tasks.base import Row, Task, score


@dataclass
class EvalResult:
    rows: list[Row]
    rewards: list[float]
    correct: list[float]
    kl: float | None  # None: not measured
    extra: dict[str, float]  # the task's own metrics (Task.extra_metrics), logged as eval_<name>
    samples: list[dict]  # a few (prompt, completion, reward) records for samples.jsonl

    def metrics(self) -> dict:
        out = {name: metric(self) for name, metric in METRICS.items()}
        out.update({f"eval_{k}": v for k, v in self.extra.items()})
        return out


# What an "eval" line of metrics.jsonl holds (the analysis reads these names), each computed from the evaluation's
# scored rows: a new metric is one entry here.
METRICS: dict[str, Callable[[EvalResult], float | int | None]] = {
    "eval_accuracy": lambda r: sum(r.correct) / len(r.rows),
    "eval_reward": lambda r: sum(r.rewards) / len(r.rows),
    "eval_kl": lambda r: r.kl,  # k3 to the base model (below)
    "eval_n": lambda r: len(r.rows),
}


def k3_per_token(logp_finetuned: torch.Tensor, logp_base: torch.Tensor) -> torch.Tensor:
    log_r = logp_base - logp_finetuned
    return torch.exp(log_r) - log_r - 1.0


def mean_k3(policy_logprobs: Sequence[torch.Tensor], base_logprobs: Sequence[torch.Tensor]) -> float:
    """Mean k3 over every generated token of every completion (0.0 if nothing was generated)."""
    total, count = 0.0, 0
    for lp, lb in zip(policy_logprobs, base_logprobs, strict=True):
        if len(lp):
            total += float(k3_per_token(lp, lb).sum())
            count += len(lp)
    return total / count if count else 0.0


def kl_to_base(backend: Backend, pairs) -> float:
    """KL(current weights || base model) on sampled (prompt, completion) pairs, through the backend."""
    pairs = [p for p in pairs if p[1]]
    return mean_k3(backend.token_logprobs(pairs), backend.token_logprobs(pairs, reference=True))


def evaluate(task: Task, backend: Backend, *, kl: bool = True, size: int = 0, kl_samples: int = 1,
             kl_prompts: int = 32, kl_temperature: float = 1.0, kl_max_new_tokens: int = 0,
             samples_to_log: int = 4, seed: int = 0) -> EvalResult:
    """Greedy accuracy and reward on the eval rows; KL to the base model when ``kl`` and kl_samples > 0."""
    rows: list[Row] = task.eval_rows[:size] if size else task.eval_rows
    completions = backend.generate(rows)
    rewards = score(task.reward, completions, rows)
    correct = score(task.accuracy, completions, rows)
    extra = task.extra_metrics(completions, rows) if task.extra_metrics else {}
    kl_value = None
    if kl and kl_samples > 0:
        kl_rows = [r for r in (rows[:kl_prompts] if kl_prompts else rows) for _ in range(kl_samples)]
        pairs = backend.sample_ids(kl_rows, temperature=kl_temperature, seed=seed,
                                   max_new_tokens=kl_max_new_tokens or None)
        kl_value = kl_to_base(backend, pairs)
    prompts = backend.prompts(rows[:samples_to_log])
    samples = [{"prompt": p, "completion": c, "reward": rw} for p, c, rw in zip(prompts, completions, rewards)]
    return EvalResult(rows=list(rows), rewards=rewards, correct=correct, kl=kl_value, extra=extra, samples=samples)


class Evaluator:
    """The evaluation both ES and the RL baselines run and log: an "eval" line in metrics.jsonl, a few samples in
    samples.jsonl, one printed line. Step 0 is the base model (KL 0 by definition, not measured)."""

    def __init__(self, cfg, task: Task, backend: Backend, log: RunLog):
        self.cfg, self.task, self.backend, self.log = cfg, task, backend, log
        evals = log.records("eval")
        self.last_step = evals[-1]["step"] if evals else None
        self.last_samples = evals[-1]["samples"] if evals else 0

    def run(self, step: int, samples: int, unit: str = "step") -> dict:
        """Evaluate now; ``unit`` names the step in the record and the printed line ("generation" for ES)."""
        e = self.cfg.eval
        result = evaluate(self.task, self.backend, kl=step > 0, size=e.size, kl_samples=e.kl_samples,
                          kl_prompts=e.kl_prompts, kl_temperature=e.kl_temperature,
                          kl_max_new_tokens=e.kl_max_new_tokens, samples_to_log=e.samples_to_log,
                          seed=self.cfg.seed + step)
        metrics = result.metrics()
        if step == 0:
            metrics["eval_kl"] = 0.0  # the base model against itself
        where = {"step": step, unit: step}
        record = {"kind": "eval", **where, "samples": samples, **metrics}
        self.log.append(record)
        for s in result.samples:
            self.log.append({"kind": "eval", **where, **s}, file=SAMPLES_FILE)
        self.last_step, self.last_samples = step, samples
        kl = metrics["eval_kl"]
        tqdm.write(f"[eval] {unit} {step} ({samples} samples): accuracy {metrics['eval_accuracy']:.3f} "
                   f"reward {metrics['eval_reward']:.4f} kl {kl if kl is None else round(kl, 5)}")
        return record
