"""A baseline run's life in its run directory, shared by GRPO and PPO: the same run.json, metrics.jsonl and
samples.jsonl as ES, the shared evaluator on a samples schedule, TRL checkpoints, resume and the final summary.

Layout (beside ES's):
    run.json, metrics.jsonl, samples.jsonl   as ES: kind "train" lines per optimizer step, "eval" lines
    checkpoints/checkpoint-N/                TRL's checkpoint: HF-loadable model + tokenizer, optimizer, scheduler,
                                             RNG state, trainer_state.json (PPO adds value_model.safetensors)
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from es_repro.baselines.generation import RewardRecorder
from es_repro.config.schema import RunConfig
from es_repro.engines.hf import backend as hf_backend
from es_repro.run import lifecycle
from es_repro.run.evaluate import Evaluator as SharedEvaluator
from es_repro.run.log import SAMPLES_FILE, RunLog
from es_repro.tasks.base import Task
from es_repro.tasks.prompt_limits import check_prompt_lengths

CKPT_DIR = "checkpoints"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / CKPT_DIR


def latest_checkpoint(run_dir: Path, markers: tuple[str, ...] = ("trainer_state.json",)) -> tuple[Path, int] | None:
    """Newest complete TRL checkpoint and its step (TRL writes trainer_state.json after everything else)."""
    found = []
    root = checkpoint_root(run_dir)
    for path in root.iterdir() if root.is_dir() else []:
        match = _CKPT.match(path.name)
        if match and all((path / m).is_file() for m in markers):
            found.append((int(match.group(1)), path))
    if not found:
        return None
    step, path = max(found)
    return path, step


def resumed_samples(log: RunLog, step: int, per_step: float) -> int:
    """Completions generated up to `step`, from its train line (or the schedule if that line is missing)."""
    lines = [r for r in log.records("train") if r["step"] == step]
    return lines[-1]["samples"] if lines else round(step * per_step)


def start(cfg: RunConfig, log: RunLog, run_dir: Path, evaluator: "Evaluator", plan, step0: int) -> None:
    """run.json (status running) and wandb; say what will run; evaluate the base model on a fresh start."""
    check_prompt_lengths(evaluator.task, evaluator.backend, cfg)
    lifecycle.start(cfg, log, kind=cfg.baseline.method, task_info=evaluator.task.info,
                    backend_info={"evaluation": evaluator.backend.describe()})
    print(f"[es-repro] {cfg.baseline.method.upper()}: {plan.budget} samples = {plan.steps} steps x "
          f"{plan.per_step:g} completions" + (f", resuming at step {step0}" if step0 else ""))
    if step0 == 0 and evaluator.every and evaluator.last_step is None:
        evaluator.run(0, 0)


class _QuietProgress(ProgressCallback):
    """TRL's progress bar without its per-step dict of logs (metrics.jsonl and our [train] lines carry them)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def quiet(trainer) -> None:
    trainer.remove_callback(PrinterCallback)
    if any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_QuietProgress)


class Evaluator(SharedEvaluator):
    """The shared evaluator (es_repro.run.evaluate) over the policy being trained, due every `every` completions."""

    def __init__(self, cfg: RunConfig, task: Task, log: RunLog, policy, tokenizer, base_model: Callable, every: int):
        super().__init__(cfg, task, hf_backend.for_model(cfg, task, policy, tokenizer, base_model), log)
        self.every = every

    def due(self, samples: int) -> bool:
        return bool(self.every) and samples // self.every > self.last_samples // self.every


class RunLogCallback(TrainerCallback):
    """Writes TRL's per-step log as a shared "train" line (plus a few completions), then evaluates when due.

    reward_key names TRL's mean reward of the step: "reward" (GRPO), "objective/scores" (PPO)."""

    def __init__(self, log: RunLog, recorder: RewardRecorder, evaluator: Evaluator, reward_key: str,
                 completions_to_log: int):
        self.log, self.recorder, self.evaluator = log, recorder, evaluator
        self.reward_key, self.completions_to_log = reward_key, completions_to_log
        self.t_last = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or self.reward_key not in logs:
            return  # e.g. the trainer's end-of-training summary
        step, (records, tokens) = state.global_step, self.recorder.take()
        rewards = [r["reward"] for r in records]
        now = time.perf_counter()
        line = {"kind": "train", "step": step, "samples": self.recorder.samples, "reward_mean": logs[self.reward_key],
                "reward_std": _std(rewards), "reward_min": min(rewards, default=None), "reward_max": max(rewards, default=None),
                "completions": len(records), "tokens": tokens, "time_total": now - self.t_last, "wall": time.time(),
                **{f"trl/{k}": v for k, v in logs.items() if isinstance(v, (int, float))}}
        self.t_last = now
        self.log.append(line)
        for r in records[: self.completions_to_log]:
            self.log.append({"kind": "train", "step": step, **r}, file=SAMPLES_FILE)
        mean = line["reward_mean"]
        tqdm.write(f"[train] step {step}: {self.recorder.samples} samples, reward mean "
                   f"{mean if mean is None else round(mean, 4)} ({line['time_total']:.1f}s)")
        if self.evaluator.due(self.recorder.samples):
            self.evaluator.run(step, self.recorder.samples)


def _std(values: list[float]) -> float | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5


def finish(log: RunLog, evaluator: Evaluator, step: int, samples: int) -> dict:
    """Final evaluation (unless the last step was just evaluated), summary, run.json status finished."""
    final = evaluator.run(step, samples) if evaluator.last_step != step else log.records("eval")[-1]
    return log.finish_run({"steps": step, "samples": samples}, final, "steps")
