"""A synthetic task where any model, even a tiny random one, can improve: write characters close to a target.

reward = 1 - mean over completion characters of |ord(c) - ord(target)| / 255 (0 for an empty completion).
It moves smoothly as perturbations shift the output characters, so it checks that ES learns end to end.
"""
from __future__ import annotations

from es_repro.tasks.base import Task


def reward(completions: list[str], target_char: list[str], **_) -> list[float]:
    out = []
    for text, target in zip(completions, target_char):
        if not text:
            out.append(0.0)
            continue
        dist = sum(min(abs(ord(c) - ord(target)), 255) for c in text) / len(text)
        out.append(1.0 - dist / 255.0)
    return out


def accuracy(completions: list[str], target_char: list[str], **_) -> list[float]:
    return [float(bool(c) and set(c) == {t}) for c, t in zip(completions, target_char)]


def build_synthetic_task(train_size: int = 4, eval_size: int = 4, seed: int = 0, target_char: str = "a") -> Task:
    if len(target_char) != 1:
        raise ValueError(f"task.options.target_char must be one character, got {target_char!r}")
    def rows(n: int, offset: int) -> list[dict]:
        prompts = [f"Write {target_char} {i}:" for i in range(offset, offset + n)]
        return [{"prompt": p, "messages": [{"role": "user", "content": p}], "assistant_prefix": "", "target_char": target_char} for p in prompts]
    return Task(name="synthetic", train_rows=rows(train_size, 0), eval_rows=rows(eval_size, train_size), reward=reward, accuracy=accuracy)
