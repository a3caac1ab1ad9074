#!/usr/bin/env python3
"""Stability across seeds: one setting run with 4 seeds, ES against GRPO; the spread of the final reward and
accuracy across runs (es_repro.analysis.stability_table).

paper profile (GPUs): Countdown at the Table 1 settings on one model (MODEL below, default Qwen2.5-1.5B-Instruct),
  ES (experiment=table1) and GRPO group 30 with KL 1e-3 and lr 1e-6 (experiment=rl_grid_countdown), seeds 0-3.
  Seed 0 of each is the Table 1 run itself (same overrides, same run directory), so it is not run twice.
cpu profile (a laptop): SmolLM2-135M on Conciseness at experiment=quickstart scale (Countdown gives a 135M model
  no reward signal at all), ES sigma=0.001 and GRPO beta=0.0167, seeds 0-3: the same runs as the conciseness_kl
  cpu profile's, so either script fills them in for the other.

    .venv/bin/python sweeps/stability.py --status
    .venv/bin/python sweeps/stability.py --launcher slurm_4gpu model=qwen2.5-3b-instruct
    .venv/bin/python sweeps/stability.py --profile cpu
(an extra `model=...` override replaces MODEL for every grid.)
"""
from _sweep import Grid, floats, main
from conciseness_kl import QUICKSTART_SCALE

METHODS = ["es", "grpo"]
MODEL = "qwen2.5-1.5b-instruct"
GRPO = ["baseline=grpo", f"baseline.kl_coef={floats(1e-3)}", f"baseline.trl.learning_rate={floats(1e-6)}"]


def paper(methods: list[str]) -> list[Grid]:
    es, rl = ["experiment=table1", f"model={MODEL}"], ["experiment=rl_grid_countdown", f"model={MODEL}", *GRPO]
    grids = []
    if "es" in methods:
        grids += [Grid("ES seed 0 (the Table 1 run)", es), Grid("ES seeds 1-3", [*es, "seed=1,2,3"])]
    if "grpo" in methods:
        grids += [Grid("GRPO seed 0 (the Table 1 run)", rl), Grid("GRPO seeds 1-3", [*rl, "seed=1,2,3"])]
    return grids


def cpu(methods: list[str]) -> list[Grid]:
    model, seeds = "model=smollm2-135m", "seed=0,1,2,3"
    grids = []
    if "es" in methods:
        grids.append(Grid("ES", ["experiment=quickstart", model, *QUICKSTART_SCALE, f"es.sigma={floats(0.001)}",
                                 f"es.alpha={floats(0.0005)}", seeds]))
    if "grpo" in methods:
        grids.append(Grid("GRPO", ["experiment=rl_grid_conciseness", model, *QUICKSTART_SCALE,
                                   f"baseline.kl_coef={floats(0.0167)}", seeds]))
    return grids


if __name__ == "__main__":
    raise SystemExit(main(__doc__, METHODS, {"paper": paper, "cpu": cpu}, {"paper": "slurm_1gpu", "cpu": "basic"}))
