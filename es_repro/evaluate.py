"""Held-out evaluation shared by ES and the RL baselines: accuracy, mean reward, and KL to the base model.

KL uses the per-token k3 estimator on tokens sampled from the fine-tuned model:
    k3 = r - log r - 1,  r = p_base(token) / p_finetuned(token),
averaged over all generated tokens. It is unbiased for KL(finetuned || base) when sampling at temperature 1
and is always >= 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from es_repro.backends import HFGenerator
from es_repro.tasks.base import Row, Task, score


@dataclass
class EvalResult:
    accuracy: float
    reward: float
    kl: float | None
    n: int
    extra: dict[str, float]
    samples: list[dict]  # a few (prompt, completion, reward) records for samples.jsonl

    def metrics(self) -> dict:
        out = {"eval_accuracy": self.accuracy, "eval_reward": self.reward, "eval_kl": self.kl, "eval_n": self.n}
        out.update({f"eval_{k}": v for k, v in self.extra.items()})
        return out


@torch.no_grad()
def token_logprobs(model: PreTrainedModel, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """log p(completion token | prefix) for each completion token, in float32."""
    ids = torch.tensor([prompt_ids + completion_ids], device=model.device)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return F.log_softmax(logits, dim=-1).gather(-1, ids[0, len(prompt_ids) :, None].to(logits.device))[:, 0]


def k3_per_token(logp_finetuned: torch.Tensor, logp_base: torch.Tensor) -> torch.Tensor:
    log_r = logp_base - logp_finetuned
    return torch.exp(log_r) - log_r - 1.0


def kl_to_base(pairs: Sequence[tuple[list[int], list[int]]], policy: PreTrainedModel, base: PreTrainedModel) -> float:
    """Mean k3 over every generated token of every sampled completion (0.0 if nothing was generated)."""
    total, count = 0.0, 0
    for prompt_ids, completion_ids in pairs:
        if not completion_ids:
            continue
        k3 = k3_per_token(token_logprobs(policy, prompt_ids, completion_ids), token_logprobs(base, prompt_ids, completion_ids))
        total += float(k3.sum())
        count += len(completion_ids)
    return total / count if count else 0.0


def evaluate(task: Task, generator: HFGenerator, *, base_model: PreTrainedModel | None = None, size: int = 0,
             kl_samples: int = 1, kl_prompts: int = 32, kl_temperature: float = 1.0, kl_max_new_tokens: int = 0,
             samples_to_log: int = 4, seed: int = 0) -> EvalResult:
    """Greedy accuracy and reward on the eval rows; KL to ``base_model`` when given and kl_samples > 0."""
    rows: list[Row] = task.eval_rows[:size] if size else task.eval_rows
    completions = generator.generate(rows)
    rewards = score(task.reward, completions, rows)
    correct = score(task.accuracy, completions, rows)
    extra = task.extra_metrics(completions, rows) if task.extra_metrics else {}
    kl = None
    if base_model is not None and kl_samples > 0:
        kl_rows = [r for r in (rows[:kl_prompts] if kl_prompts else rows) for _ in range(kl_samples)]
        device = generator.model.device
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # sampling must not disturb any other random stream
            torch.manual_seed(seed)
            pairs = generator.generate_ids(kl_rows, temperature=kl_temperature, max_new_tokens=kl_max_new_tokens or None)
        kl = kl_to_base(pairs, generator.model, base_model)
    samples = [{"prompt": generator.prompts([r])[0], "completion": c, "reward": rw}
               for r, c, rw in list(zip(rows, completions, rewards))[:samples_to_log]]
    return EvalResult(accuracy=sum(correct) / len(rows), reward=sum(rewards) / len(rows), kl=kl, n=len(rows),
                      extra=extra, samples=samples)
