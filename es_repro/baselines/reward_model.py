"""The task's rule-based reward in the shape TRL's PPO reads a reward model.

PPOTrainer scores a rollout with `trl.experimental.utils.get_reward(model, query_responses, pad_id, width)`:
it runs `getattr(model, model.base_model_prefix)(input_ids=..., attention_mask=..., output_hidden_states=True)`,
applies `model.score` to the last hidden state and reads position (last response token). Here the "backbone"
decodes each row (prompt = the first `width` columns, response = the rest up to the first pad), scores the
response with the task's reward function and returns that reward at every position, and `score` is the
identity, so whichever position PPO reads holds the task's reward: same function, same text as ES.

The prompt width is not passed to the reward model; the StopStringHook on the policy records it from the
rollout's generate call. Rows are recognised by their prompt token ids (the dataset's own tokenization).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

import torch
from torch import nn

from es_repro.baselines.generation import RewardRecorder, StopStringHook, task_reward
from es_repro.tasks.base import Row, Task, columns


class _TaskScorer(nn.Module):
    def __init__(self, task: Task, tokenizer, rows_by_prompt: dict[tuple[int, ...], tuple[Row, str]],
                 hook: StopStringHook, recorder: RewardRecorder):
        super().__init__()
        self.task, self.tokenizer, self.rows_by_prompt = task, tokenizer, rows_by_prompt
        self.hook, self.recorder = hook, recorder

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_) -> SimpleNamespace:
        width = self.hook.prompt_width
        if width is None:
            raise RuntimeError("the PPO reward was asked before any rollout: the policy's generate hook saw no prompt")
        rows, prompts, completions, lengths = [], [], [], []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            prompt = tuple(t for t, m in zip(ids[:width], mask[:width]) if m)
            if prompt not in self.rows_by_prompt:
                raise RuntimeError(f"PPO reward: prompt ids {prompt[:12]}... are not a training prompt")
            response = ids[width:]
            response = response[: mask[width:].index(0)] if 0 in mask[width:] else response
            row, text = self.rows_by_prompt[prompt]
            rows.append(row)
            prompts.append(text)
            completions.append(self.tokenizer.decode(response, skip_special_tokens=True))
            lengths.append(len(response))
        cut, rewards = task_reward(self.task, completions, columns(rows))
        self.recorder.record(prompts, cut, rewards, lengths)
        values = torch.tensor(rewards, dtype=torch.float32, device=input_ids.device)
        return SimpleNamespace(hidden_states=(values[:, None, None].expand(-1, input_ids.shape[1], 1),))


class TaskRewardModel(nn.Module):
    """`reward_model` for trl.experimental.ppo.PPOTrainer; has no parameters."""

    base_model_prefix = "scorer"

    def __init__(self, task: Task, tokenizer, rows: Sequence[Row], prompt_texts: Sequence[str],
                 prompt_id_lists: Sequence[list[int]], hook: StopStringHook, recorder: RewardRecorder):
        super().__init__()
        by_prompt = {}
        for row, text, ids in zip(rows, prompt_texts, prompt_id_lists):
            by_prompt.setdefault(tuple(ids), (row, text))  # equal prompts are the same problem
        self.scorer = _TaskScorer(task, tokenizer, by_prompt, hook, recorder)
        self.score = nn.Identity()
