"""PPO through trl.experimental.ppo.PPOTrainer (TRL 1.12, the last release that ships it), logged like ES.

What PPO needs beyond GRPO, and how it is met here:
- a reward model: TaskRewardModel (reward_model.py) returns the task's reward where PPO reads a score;
- a value model: ValueModel, a critic backbone (a copy of the policy's base model, or baseline.value_model) with
  a scalar head, trained at baseline.value_learning_rate (the paper's verl run: critic 1e-5, actor 1e-6);
- a pad token that is not EOS and not in any prompt: TRL's PPO finds padding by value (`ids != pad`), so with
  SmolLM2's pad == EOS == <|im_end|> it would mask the prompts' own <|im_end|> tokens; PPO gets a tokenizer copy
  whose pad is such a token, while ES's tokenizer stays untouched for evaluation.
- resume: PPOTrainer.train() always starts at step 0 and has no resume_from_checkpoint. A relaunch loads the
  newest checkpoint's policy, critic, optimizer, scheduler and RNG states, then runs the remaining steps with
  the step counter continued. Not bit-exact: the prompt order after the resume point differs from an
  uninterrupted run (TRL's dataloader starts a fresh shuffled pass).
"""
from __future__ import annotations

import copy
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback
from trl.experimental.ppo import PPOTrainer

from es_repro.baselines import session
from es_repro.baselines.generation import RewardRecorder, StopStringHook, prompt_ids
from es_repro.baselines.reward_model import TaskRewardModel
from es_repro.baselines.trl_config import build_args, completions_per_step, make_plan
from es_repro.config.schema import ModelConfig, RunConfig
from es_repro.engines.hf.generation import render_prompt
from es_repro.models.loading import load_model
from es_repro.run.log import METRICS_FILE, SAMPLES_FILE, RunLog
from es_repro.tasks.base import Task

VALUE_FILE = "value_model.safetensors"


class ValueModel(nn.Module):
    """Critic in the shape PPOTrainer reads: `getattr(m, m.base_model_prefix)` is the backbone, `m.score` the
    head. The head starts at zero (values 0 before training, deterministic)."""

    base_model_prefix = "backbone"

    def __init__(self, causal_lm: nn.Module):
        super().__init__()
        self.backbone = getattr(causal_lm, causal_lm.base_model_prefix)
        param = next(self.backbone.parameters())
        self.score = nn.Linear(causal_lm.config.hidden_size, 1, bias=False, dtype=param.dtype, device=param.device)
        nn.init.zeros_(self.score.weight)


class CheckpointingPPOTrainer(PPOTrainer):
    """Saves the critic inside each checkpoint, before trainer_state.json marks the checkpoint complete."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        if _internal_call and output_dir is not None:
            value = self.accelerator.unwrap_model(self.model).value_model
            save_file({k: v.contiguous() for k, v in value.state_dict().items()}, str(Path(output_dir) / VALUE_FILE))


class ContinueSteps(TrainerCallback):
    """PPOTrainer.train() resets its counters; continue them from the checkpoint instead."""

    def __init__(self, step: int, episodes: int, max_steps: int):
        self.step, self.episodes, self.max_steps = step, episodes, max_steps

    def on_train_begin(self, args, state, control, **kwargs):
        state.global_step, state.episode, state.max_steps = self.step, self.episodes, self.max_steps


def choose_pad_id(tokenizer, prompts: list[list[int]]) -> int:
    """The tokenizer's pad if it is not EOS, else its unknown token or another special/added token; never EOS
    and never a token that occurs in a training prompt (PPO would mask it)."""
    used = {t for ids in prompts for t in ids}
    candidates = [tokenizer.pad_token_id, tokenizer.unk_token_id, *tokenizer.all_special_ids,
                  *sorted(tokenizer.added_tokens_decoder)]
    for tid in candidates:
        if tid is not None and tid != tokenizer.eos_token_id and tid not in used:
            return tid
    raise ValueError("PPO needs a pad token that is neither EOS nor in any training prompt; this tokenizer has none")


def restore_rng(path: Path) -> None:
    state = torch.load(path, weights_only=False)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["cpu"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.random.set_rng_state(state["cuda"])


def build_optimizer(args, policy: nn.Module, value: nn.Module, value_lr: float) -> torch.optim.Optimizer:
    """TRL's optimizer class and settings, with the critic in its own parameter group at its own learning rate."""
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
    groups = [{"params": [p for p in m.parameters() if p.requires_grad], "lr": lr, "weight_decay": args.weight_decay}
              for m, lr in ((policy, args.learning_rate), (value, value_lr or args.learning_rate))]
    return cls(groups, **kwargs)


def run(cfg: RunConfig, run_dir: Path, task: Task, log: RunLog) -> dict:
    root = session.checkpoint_root(run_dir)
    plan = make_plan(cfg, len(task.train_rows), completions_per_step("ppo", build_args(cfg, root)))
    args = build_args(cfg, root, steps=plan.steps, save_steps=plan.save_steps)
    resume = session.latest_checkpoint(run_dir, markers=("trainer_state.json", VALUE_FILE))
    step0 = resume[1] if resume else 0

    ref_model, tokenizer = load_model(cfg.model, training=True)  # the base: PPO's KL reference and the evaluator's
    # Policy and (by default) critic start as copies of the base: copy it instead of loading it from disk again.
    if resume:
        policy, _ = load_model(replace(cfg.model, source="hf", path=str(resume[0])), training=True)
    else:
        policy = copy.deepcopy(ref_model)
    if cfg.baseline.value_model:
        critic_cfg = ModelConfig(name="critic", source="hf", path=cfg.baseline.value_model, dtype=cfg.model.dtype,
                                 device=cfg.model.device)
        critic, critic_tokenizer = load_model(critic_cfg, training=True)
        if critic_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"baseline.value_model={cfg.baseline.value_model!r} does not share the policy's tokenizer")
    else:
        critic = copy.deepcopy(ref_model)
    value = ValueModel(critic)
    del critic  # the critic keeps only its backbone (and its own new head)
    if resume:
        value.load_state_dict(load_file(resume[0] / VALUE_FILE))

    texts = [render_prompt(r, tokenizer, cfg.task.prompt_format) for r in task.train_rows]
    ids = [prompt_ids(tokenizer, t) for t in texts]
    ppo_tokenizer = copy.deepcopy(tokenizer)
    ppo_tokenizer.pad_token = ppo_tokenizer.convert_ids_to_tokens(choose_pad_id(tokenizer, ids))
    policy.generation_config.pad_token_id = ppo_tokenizer.pad_token_id  # after a stop string: pad, not EOS

    log.truncate_after(step0, key="step", files=(METRICS_FILE, SAMPLES_FILE))  # lines logged after the checkpoint
    recorder = RewardRecorder(session.resumed_samples(log, step0, plan.per_step) if resume else 0)
    hook = StopStringHook(policy, tokenizer, task.stop_strings)
    reward_model = TaskRewardModel(task, tokenizer, task.train_rows, texts, ids, hook, recorder)
    optimizer = build_optimizer(args, policy, value, cfg.baseline.value_learning_rate)
    # TRL's loader drops incomplete rollouts and would spin forever on fewer prompts than one rollout: tile them.
    tiled = ids * -(-int(plan.per_step) // len(ids))
    trainer = CheckpointingPPOTrainer(args=args, processing_class=ppo_tokenizer, model=policy, ref_model=ref_model,
                                      reward_model=reward_model, train_dataset=Dataset.from_dict({"input_ids": tiled}),
                                      value_model=value, optimizers=(optimizer, None))
    if resume:
        trainer.optimizer.load_state_dict(torch.load(resume[0] / "optimizer.pt", weights_only=False))
        trainer.lr_scheduler.load_state_dict(torch.load(resume[0] / "scheduler.pt", weights_only=False))
        restore_rng(resume[0] / "rng_state.pth")
    args.num_total_batches = plan.steps - step0  # the loop runs this many rollouts
    session.quiet(trainer)
    trainer.add_callback(ContinueSteps(step0, round(step0 * plan.per_step), plan.steps))
    evaluator = session.Evaluator(cfg, task, log, policy, tokenizer, lambda: ref_model, plan.eval_every_samples)
    trainer.add_callback(session.RunLogCallback(log, recorder, evaluator, "objective/scores", cfg.baseline.completions_to_log))
    session.start(cfg, log, run_dir, evaluator, plan, step0)
    if args.num_total_batches > 0:
        trainer.train()
    summary = session.finish(log, evaluator, max(trainer.state.global_step, step0), recorder.samples)
    hook.remove()
    return summary
