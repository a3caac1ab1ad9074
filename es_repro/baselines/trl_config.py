"""baseline.trl -> TRL's own config class, plus the budget arithmetic (sample evaluations -> TRL steps).

Any field of trl.GRPOConfig / trl.experimental.ppo.PPOConfig can be set under baseline.trl; our schema does not
re-declare them. A name TRL does not know fails with the class to look at. A few fields belong to the adapter
(the run directory, the budget, checkpoint cadence, logging, the KL coefficient): setting those under
baseline.trl fails and names the field to use instead, so one value never has two sources.

Budget: a run generates `samples_budget` completions (the paper's x-axis; 0 = the ES budget of the same config,
es.generations x es.population x prompts per generation). One optimizer step generates
    GRPO: generation_batch_size x gradient_accumulation_steps / (steps_per_generation x num_iterations)
          (= per_device_train_batch_size x gradient_accumulation_steps with the defaults, one process)
    PPO:  per_device_train_batch_size x gradient_accumulation_steps (one completion per prompt per rollout)
completions, so steps = ceil(budget / completions_per_step): GRPOConfig.max_steps, PPOConfig.total_episodes =
steps x completions_per_step. The logged `samples` are counted (every completion the reward scored), not derived.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from es_repro.config.schema import RunConfig
from es_repro.util.errors import ConfigError

CONFIG_CLASSES = {"grpo": ("trl", "GRPOConfig"), "ppo": ("trl.experimental.ppo", "PPOConfig")}
DOCS = {
    "grpo": "https://huggingface.co/docs/trl/v1.12.0/en/grpo_trainer#trl.GRPOConfig",
    "ppo": "https://huggingface.co/docs/trl/v1.12.0/en/ppo_trainer#trl.experimental.ppo.PPOConfig",
}
KL_FIELD = {"grpo": "beta", "ppo": "kl_coef"}
_SCHEDULE = "baseline.samples_budget"
# Fields the adapter sets; the value says where to set them instead.
OWNED = {
    "output_dir": "the run directory (results/<experiment>/<overrides>/checkpoints)",
    "seed": "seed", "data_seed": "seed",
    "max_steps": _SCHEDULE, "num_train_epochs": _SCHEDULE, "total_episodes": _SCHEDULE,
    "save_strategy": "checkpoint_every", "save_steps": "checkpoint_every", "save_total_limit": "keep_checkpoints",
    "logging_strategy": "nothing (every step goes to metrics.jsonl)", "logging_steps": "nothing (every step is logged)",
    "report_to": "logger.wandb_mode", "disable_tqdm": "progress", "use_cpu": "model.device",
    "do_eval": "eval.* (the shared evaluator)", "eval_strategy": "eval.*", "eval_steps": "baseline.eval_every_samples",
    "resume_from_checkpoint": "nothing (a relaunch resumes from the run directory)",
    "beta": "baseline.kl_coef", "kl_coef": "baseline.kl_coef",
}


def config_class(method: str) -> type:
    module, name = CONFIG_CLASSES[method]
    return getattr(importlib.import_module(module), name)


def _class_path(method: str) -> str:
    return ".".join(CONFIG_CLASSES[method])


def check_fields(method: str, trl: dict) -> None:
    """Every key of baseline.trl must be a settable field of the method's TRL config and not one we own."""
    import trl as trl_pkg

    names = {f.name for f in dataclasses.fields(config_class(method)) if f.init}
    for key in trl:
        if key in OWNED:
            raise ConfigError(f"baseline.trl.{key} is set by es-repro; use {OWNED[key]} instead")
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"baseline.trl.{key} is not a field of {_class_path(method)} (TRL {trl_pkg.__version__})"
                              f"{hint} See {DOCS[method]}")


def _uses_cpu(cfg: RunConfig) -> bool:
    from es_repro.models.loading import resolve_device

    return resolve_device(cfg.model.device).type == "cpu"


def build_args(cfg: RunConfig, output_dir: Path, *, steps: int = 1, save_steps: int = 1) -> Any:
    """The TRL config object: the adapter's fields, then baseline.trl. TRL's own checks become ConfigErrors."""
    method = cfg.baseline.method
    check_fields(method, cfg.baseline.trl)
    owned: dict[str, Any] = dict(
        output_dir=str(output_dir), seed=cfg.seed, save_strategy="steps", save_steps=save_steps,
        save_total_limit=cfg.keep_checkpoints, logging_steps=1, report_to="none", disable_tqdm=not cfg.progress,
        use_cpu=_uses_cpu(cfg), **{KL_FIELD[method]: cfg.baseline.kl_coef},
    )
    if method == "grpo":
        owned["max_steps"] = steps
    else:
        trl = cfg.baseline.trl
        defaults = config_class(method)
        per_step = trl.get("per_device_train_batch_size", _default(defaults, "per_device_train_batch_size")) * \
            trl.get("gradient_accumulation_steps", _default(defaults, "gradient_accumulation_steps"))
        owned["total_episodes"] = steps * per_step
    try:
        return config_class(method)(**owned, **cfg.baseline.trl)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"baseline.trl rejected by {_class_path(method)}: {err}") from None


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def completions_per_step(method: str, args: Any) -> float:
    """Completions generated per optimizer step (one process)."""
    if method == "grpo":
        return args.generation_batch_size * args.gradient_accumulation_steps / (args.steps_per_generation * args.num_iterations)
    return float(args.per_device_train_batch_size * args.gradient_accumulation_steps)


@dataclass(frozen=True)
class Plan:
    """A baseline run's schedule, in optimizer steps, derived from budgets in sample evaluations."""
    budget: int  # completions to generate
    per_step: float  # completions per optimizer step
    steps: int  # optimizer steps = ceil(budget / per_step)
    save_steps: int  # checkpoint every this many steps (checkpoint_every ES generations' worth of samples)
    eval_every_samples: int  # 0 = evaluate only before and after training


def es_samples_per_generation(cfg: RunConfig, train_rows: int) -> int:
    """What one ES generation costs in sample evaluations: population x prompts per member."""
    prompts = min(cfg.es.prompts_per_generation, train_rows) if cfg.es.prompts_per_generation else train_rows
    return cfg.es.population * prompts


def make_plan(cfg: RunConfig, train_rows: int, per_step: float) -> Plan:
    per_gen = es_samples_per_generation(cfg, train_rows)
    budget = cfg.baseline.samples_budget or cfg.es.generations * per_gen
    eval_every = cfg.baseline.eval_every_samples or cfg.eval.every * per_gen
    return Plan(budget=budget, per_step=per_step, steps=max(1, math.ceil(budget / per_step)),
                save_steps=max(1, round(cfg.checkpoint_every * per_gen / per_step)), eval_every_samples=eval_every)


def check_trl_config(cfg: RunConfig) -> None:
    """Baseline runs' launch check (baselines/checks.py check_launch): names, ownership and TRL's own value checks,
    before any model loads."""
    build_args(cfg, Path("unused-by-validation"))
