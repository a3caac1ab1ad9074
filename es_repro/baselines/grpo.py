"""GRPO through trl.GRPOTrainer on the task's own reward function, logged like ES.

TRL resumes GRPO itself: a relaunch passes the newest checkpoint of the run directory as resume_from_checkpoint
(weights, optimizer, scheduler, RNG, data position). The reference model for the KL term (beta > 0) is loaded by
TRL from the base model's directory, so it is the base model even after a resume.
"""
from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset
from trl import GRPOTrainer

from es_repro.baselines import session
from es_repro.baselines.generation import (RewardRecorder, StopStringHook, dataset_rows, make_reward_function,
                                           trim_completion)
from es_repro.baselines.trl_config import build_args, completions_per_step, make_plan
from es_repro.config.schema import RunConfig
from es_repro.models.loading import gguf_checkpoint, load_model
from es_repro.run.log import METRICS_FILE, SAMPLES_FILE, RunLog
from es_repro.tasks.base import Task


class TaskGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that tokenizes and cuts completions exactly as ES's generator (see generation.py)."""

    def __init__(self, *args, stop_strings=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_strings = tuple(stop_strings)

    def _tokenize_prompts(self, prompts: list):
        if prompts and isinstance(prompts[0], str):  # rendered prompt text: no BOS added, as in ES
            return self.processing_class(text=prompts, add_special_tokens=False)["input_ids"], None, {}
        return super()._tokenize_prompts(prompts)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
        completion_ids, logprobs = super()._generate_single_turn(prompt_ids, images, multimodal_fields, has_tool_images)
        completion_ids = [trim_completion(ids, self._tokenizer, self.stop_strings) for ids in completion_ids]
        if logprobs is not None:
            logprobs = [lp[: len(ids)] for lp, ids in zip(logprobs, completion_ids)]
        return completion_ids, logprobs


def reference_dir(cfg: RunConfig, run_dir: Path, model, tokenizer) -> Path:
    """A directory holding the base weights, from which TRL loads the reference model."""
    if cfg.model.source == "gguf_package":
        return gguf_checkpoint(cfg.model.path, cfg.model.gguf_file)
    if cfg.model.source == "hf":
        if Path(cfg.model.path).is_dir():
            return Path(cfg.model.path)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(cfg.model.path, local_files_only=True))  # the local cache; never downloads
    target = Path(run_dir) / "base_model"  # tiny_random: built in code, so write it once
    if not (target / "config.json").is_file():
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    return target


def run(cfg: RunConfig, run_dir: Path, task: Task, log: RunLog) -> dict:
    root = session.checkpoint_root(run_dir)
    plan = make_plan(cfg, len(task.train_rows), completions_per_step("grpo", build_args(cfg, root)))
    args = build_args(cfg, root, steps=plan.steps, save_steps=plan.save_steps)
    model, tokenizer = load_model(cfg.model, training=True)
    if cfg.baseline.kl_coef > 0:
        model.config._name_or_path = str(reference_dir(cfg, run_dir, model, tokenizer))
        if model.dtype != torch.float32:  # TRL loads the reference in float32 unless told (it warns either way)
            args.model_init_kwargs = {"dtype": str(model.dtype).removeprefix("torch.")}

    resume = session.latest_checkpoint(run_dir)
    step0 = resume[1] if resume else 0
    log.truncate_after(step0, key="step", files=(METRICS_FILE, SAMPLES_FILE))  # lines logged after the checkpoint
    recorder = RewardRecorder(session.resumed_samples(log, step0, plan.per_step) if resume else 0)
    trainer = TaskGRPOTrainer(model=model, reward_funcs=[make_reward_function(task, recorder)], args=args,
                              train_dataset=Dataset.from_list(dataset_rows(task.train_rows, tokenizer, cfg.task.prompt_format)),
                              processing_class=tokenizer, stop_strings=task.stop_strings)
    hook = StopStringHook(model, tokenizer, task.stop_strings)
    session.quiet(trainer)
    base = {}

    def base_model():  # the shared evaluator's KL reference: TRL's reference model when it has one
        if "model" not in base:
            base["model"] = trainer.ref_model if trainer.ref_model is not None else load_model(cfg.model, training=True)[0]
        return base["model"]

    evaluator = session.Evaluator(cfg, task, log, model, tokenizer, base_model, plan.eval_every_samples)
    trainer.add_callback(session.RunLogCallback(log, recorder, evaluator, "reward", cfg.baseline.completions_to_log))
    session.start(cfg, log, run_dir, evaluator, plan, step0)
    trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
    summary = session.finish(log, evaluator, trainer.state.global_step, recorder.samples)
    hook.remove()
    return summary
