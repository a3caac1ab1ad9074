#!/usr/bin/env python3
"""Conciseness: reward against KL to the base model (the paper's Table 2 and its reward-KL figure).

paper profile (GPUs): Qwen2.5-7B-Instruct. ES at experiment=conciseness (N=30, 1000 generations, 20 sampled
  responses per held-out prompt for KL) with sigma in {0.0005, 0.001, 0.0015} and alpha = sigma/2, 4 seeds each;
  GRPO at experiment=rl_grid_conciseness (group 30, lr 5e-6, beta in {0} and 10 log-spaced values 0.01 ... 1.0,
  4 seeds each).
cpu profile (a laptop): SmolLM2-135M at experiment=quickstart scale (N=8, 6 generations, 32 new tokens, KL from
  2 samples on 8 prompts); the same sigma grid and 4 seeds; GRPO at the same scale with 4 of the betas.

    .venv/bin/python sweeps/conciseness_kl.py --status
    .venv/bin/python sweeps/conciseness_kl.py --launcher slurm_1gpu hydra.launcher.partition=gpu
    .venv/bin/python sweeps/conciseness_kl.py --profile cpu --methods es
Each sigma has its own alpha, so ES is three grids (a sweep cannot tie alpha to sigma).
"""
from _sweep import Grid, floats, main

METHODS = ["es", "grpo"]
SIGMAS = (0.0005, 0.001, 0.0015)
SEEDS = "seed=0,1,2,3"
# The cpu profile's scale, pinned for ES and GRPO alike (their budget and evaluation match), independent of
# later changes to experiment=quickstart (which now runs 12 antithetic generations)
QUICKSTART_SCALE = ["es.population=8", "es.generations=6", "es.antithetic=false", "task.max_new_tokens=32",
                    "eval.every=3", "eval.kl_samples=2", "eval.kl_prompts=8", "checkpoint_every=1"]


def _es(base: list[str]) -> list[Grid]:
    return [Grid(f"ES sigma={s}", [*base, f"es.sigma={floats(s)}", f"es.alpha={floats(s / 2)}", SEEDS]) for s in SIGMAS]


def paper(methods: list[str]) -> list[Grid]:
    model = "model=qwen2.5-7b-instruct"
    grids = _es(["experiment=conciseness", model]) if "es" in methods else []
    if "grpo" in methods:  # the preset sweeps the 11 betas x 4 seeds
        grids.append(Grid("GRPO beta grid", ["experiment=rl_grid_conciseness", model]))
    return grids


def cpu(methods: list[str]) -> list[Grid]:
    model = "model=smollm2-135m"
    grids = _es(["experiment=quickstart", model, *QUICKSTART_SCALE]) if "es" in methods else []
    if "grpo" in methods:
        grids.append(Grid("GRPO beta grid", ["experiment=rl_grid_conciseness", model, *QUICKSTART_SCALE,
                                             f"baseline.kl_coef={floats(0.0, 0.0167, 0.1291, 1.0)}", SEEDS]))
    return grids


if __name__ == "__main__":
    raise SystemExit(main(__doc__, METHODS, {"paper": paper, "cpu": cpu}, {"paper": "slurm_1gpu", "cpu": "basic"}))
