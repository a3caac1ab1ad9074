"""What the RL baselines generate and score, made to match ES's generator (es_repro.engines.hf.generation.HFGenerator):

- prompts: es_repro.engines.hf.generation.render_prompt (raw or chat format), tokenized with add_special_tokens=False;
- stop strings: generation stops at the task's stop strings (e.g. "</answer>") as well as at EOS;
- completion ids: cut after the first EOS (kept) or at the first pad, as HFGenerator does; when pad == EOS, the
  pad transformers writes after a stop string is dropped, so it is not trained on as if it had been sampled;
- reward: the task's own function on the completion text cut after the first stop string (backends.cut_at_stop),
  with the task's row columns as keyword arguments: the function ES calls, on the text ES would see.

What differs from ES is the decoding itself: ES scores greedy completions of perturbed models, GRPO and PPO
score completions sampled at baseline.trl.temperature (1.0), as RL needs.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

from es_repro.engines.hf.generation import cut_at_stop, render_prompt
from es_repro.tasks.base import Row, Task

# Keyword arguments TRL adds to reward-function calls that are not task columns.
_TRL_REWARD_KWARGS = {"trainer_state", "log_extra", "log_metric", "completion_ids", "environments"}


def dataset_rows(rows: Sequence[Row], tokenizer, prompt_format: str) -> list[dict]:
    """Task rows as TRL dataset records: "prompt" = the rendered prompt text; the task's columns kept for the
    reward ("messages" dropped: it is already rendered into the prompt)."""
    return [{**{k: v for k, v in row.items() if k != "messages"}, "prompt": render_prompt(row, tokenizer, prompt_format)}
            for row in rows]


def prompt_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def trim_completion(ids: list[int], tokenizer, stop_strings: Sequence[str]) -> list[int]:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos) + 1]
    elif pad is not None and pad in ids:
        ids = ids[: ids.index(pad)]
    if stop_strings and pad == eos and ids and ids[-1] == eos:
        text = tokenizer.decode(ids[:-1], skip_special_tokens=True)
        if any(s in text for s in stop_strings):  # generation stopped at the stop string; the EOS is padding
            ids = ids[:-1]
    return ids


class StopStringHook:
    """Installed as `model.generate`: every call stops at the task's stop strings (transformers needs the
    tokenizer for that, which TRL does not pass) and the prompt width of the last call is kept, so the PPO reward
    module knows where responses start. `remove()` restores the model's own generate."""

    def __init__(self, model, tokenizer, stop_strings: Sequence[str]):
        self.model, self.tokenizer, self.stop_strings = model, tokenizer, list(stop_strings)
        self.prompt_width: int | None = None
        self._generate = model.generate
        model.generate = self

    def __call__(self, *args: Any, generation_config=None, **kwargs: Any):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None:
            self.prompt_width = int(input_ids.shape[1])
        if self.stop_strings:
            kwargs.setdefault("tokenizer", self.tokenizer)
            if generation_config is None:
                kwargs.setdefault("stop_strings", self.stop_strings)
            elif "stop_strings" not in kwargs:
                generation_config = copy.deepcopy(generation_config)
                generation_config.stop_strings = self.stop_strings
        return self._generate(*args, generation_config=generation_config, **kwargs)

    def remove(self) -> None:
        if self.model.__dict__.get("generate") is self:
            del self.model.generate


class RewardRecorder:
    """Counts every completion the reward scored (the `samples` of the run log) and keeps this step's records."""

    def __init__(self, samples: int = 0):
        self.samples = samples
        self.pending: list[dict] = []
        self.tokens = 0  # generated tokens since the last take()

    def record(self, prompts: Sequence[str], completions: Sequence[str], rewards: Sequence[float],
               tokens: Sequence[int] = ()) -> None:
        self.samples += len(rewards)
        self.tokens += sum(tokens)
        self.pending.extend({"prompt": p, "completion": c, "reward": r} for p, c, r in zip(prompts, completions, rewards))

    def take(self) -> tuple[list[dict], int]:
        """This step's records and generated-token count; resets both."""
        out, tokens, self.pending, self.tokens = self.pending, self.tokens, [], 0
        return out, tokens


def task_reward(task: Task, completions: Sequence[str], columns: dict[str, list]) -> tuple[list[str], list[float]]:
    """(cut completions, rewards): the task's reward on completions cut at the first stop string, as ES scores."""
    cut = [cut_at_stop(c, task.stop_strings) for c in completions]
    return cut, [float(v) for v in task.reward(cut, **columns)]


def make_reward_function(task: Task, recorder: RewardRecorder):
    """A TRL reward function (prompts, completions, **columns) -> rewards, named after the task."""

    def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        columns = {k: v for k, v in kwargs.items() if k not in _TRL_REWARD_KWARGS}
        cut, rewards = task_reward(task, completions, columns)
        recorder.record(prompts, cut, rewards, [len(ids) for ids in kwargs.get("completion_ids") or ()])
        return rewards

    reward.__name__ = f"{task.name}_reward"
    return reward
