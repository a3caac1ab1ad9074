#!/usr/bin/env python3
"""Table 1: Countdown accuracy of the paper's seven models after ES, PPO, GRPO (group 30) and GRPO (group 8).

paper profile (GPUs): ES at experiment=table1 (N=30, sigma=1e-3, alpha=5e-4, 500 generations, 200 training and
  2000 test problems, 1024 new tokens), one run per model. The RL baselines at experiment=rl_grid_countdown: the
  paper's grid, KL coefficient {1e-3, 5e-3} x learning rate {1e-6, 1e-5}, with the same sample budget; the table
  reports the best setting per model and method (es_repro.analysis).
cpu profile (a laptop): the same methods on the embedded SmolLM2-135M at experiment=countdown_cpu scale, one
  RL setting (KL 1e-3, lr 1e-5).

    .venv/bin/python sweeps/table1.py --status                                  # finished / started / missing
    .venv/bin/python sweeps/table1.py --launcher slurm_4gpu hydra.launcher.partition=gpu
    .venv/bin/python sweeps/table1.py --methods es --profile cpu                # a laptop, ES only
Re-running fills the gaps: finished runs are skipped, started ones resume from their checkpoints.
"""
from _sweep import PAPER_MODELS, Grid, floats, main

METHODS = ["es", "ppo", "grpo", "grpo_g8"]  # grpo: group 30; grpo_g8: group 8 (conf/baseline/)


def _grids(es: list[str], rl: list[str], methods: list[str]) -> list[Grid]:
    grids = [Grid("ES", es)] if "es" in methods else []
    rl_methods = [m for m in methods if m != "es"]
    if rl_methods:  # one multirun for the RL methods; the preset sweeps baseline x KL x learning rate
        grids.append(Grid(f"RL ({', '.join(rl_methods)})", [*rl, f"baseline={','.join(rl_methods)}"]))
    return grids


def paper(methods: list[str]) -> list[Grid]:
    models = f"model={','.join(PAPER_MODELS)}"
    return _grids(["experiment=table1", models], ["experiment=rl_grid_countdown", models], methods)


def cpu(methods: list[str]) -> list[Grid]:
    base = ["experiment=countdown_cpu", "model=smollm2-135m"]
    return _grids(base, [*base, f"baseline.kl_coef={floats(1e-3)}", f"baseline.trl.learning_rate={floats(1e-5)}"],
                  methods)


if __name__ == "__main__":
    raise SystemExit(main(__doc__, METHODS, {"paper": paper, "cpu": cpu}, {"paper": "slurm_1gpu", "cpu": "basic"}))
