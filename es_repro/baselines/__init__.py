"""RL baselines (the paper's PPO and GRPO) through a thin adapter over TRL, on the same model, task, evaluator,
run log and sample budget as ES: `python -m es_repro baseline=grpo` / `baseline=ppo`.

    trl_config.py    baseline.trl -> TRL's config class; budgets in sample evaluations -> TRL steps
    generation.py    prompts, stop strings, completion cutting and reward calls matched to ES
    reward_model.py  the task's reward in the reward-model shape TRL's PPO reads
    session.py       run.json / metrics.jsonl / samples.jsonl, the shared evaluator, checkpoints, resume
    grpo.py, ppo.py  one function each that wires a TRL trainer to the above

TRL is imported only here, inside run_baseline, so ES start-up does not pay for it.
"""
from __future__ import annotations

import logging
from pathlib import Path

from es_repro.config.schema import RunConfig


def run_baseline(cfg: RunConfig, run_dir: Path) -> dict:
    """Train with cfg.baseline.method in run_dir; skip a finished run, resume an unfinished one."""
    from es_repro.run import lifecycle
    from es_repro.run.log import RunLog
    from es_repro.tasks import task_from_config

    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its per-step INFO lines under Hydra's logging
    run_dir = Path(run_dir)
    log = RunLog(run_dir)
    summary = lifecycle.finished_summary(log)
    if summary is not None:
        return summary
    if cfg.baseline.method == "grpo":
        from es_repro.baselines.grpo import run
    else:
        from es_repro.baselines.ppo import run
    task = task_from_config(cfg.task)
    with lifecycle.managed(log):
        return run(cfg, run_dir, task, log)
