"""Synthetic run trees in the exact shared log schema, with answers known by construction (tests, notebooks).

`write_run` writes one run directory (run.json + metrics.jsonl) as ES and the baselines do; `paper_tree`
writes a small Countdown grid and a Conciseness study whose tables, fronts and curves are given in KNOWN.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from es_repro.config.schema import ESConfig, ModelConfig, RunConfig, TaskConfig


def run_config(method: str, model: str, task: str, seed: int, es: dict | None = None, kl_coef: float = 0.001,
               trl: dict | None = None) -> dict:
    """The full resolved config dict (RunConfig's keys); RL methods fill its baseline block as conf/baseline does."""
    cfg = asdict(RunConfig(seed=seed, experiment=f"fixture-{task}", model=ModelConfig(name=model),
                           task=TaskConfig(name=task), es=ESConfig(**(es or {}))))
    if method != "es":
        group = {"num_generations": 8} if method == "grpo" else {}
        # seed and output_dir differ per run yet are not part of the setting (the loader must know that)
        trl = {"learning_rate": 1e-6, **group, "seed": seed, "output_dir": f"/scratch/{method}-{seed}", **(trl or {})}
        cfg["baseline"] = {**cfg.get("baseline", {}), "method": method, "kl_coef": kl_coef, "trl": trl}
    return cfg


def write_run(run_dir: Path, kind: str, config: dict, records: list[dict], status: str = "finished",
              torn_tail: bool = False) -> Path:
    """run.json + metrics.jsonl; ``torn_tail`` appends half a line, as a killed writer leaves."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {"kind": kind, "config": config, "status": status, "git_commit": "0" * 40, "host": "fixture",
            "started_at": 0.0, "finished_at": 1.0 if status == "finished" else None, "summary": {}}
    (run_dir / "run.json").write_text(json.dumps(info, indent=2))
    text = "".join(json.dumps(r) + "\n" for r in records) + ('{"kind": "train", "st' if torn_tail else "")
    (run_dir / "metrics.jsonl").write_text(text)
    return run_dir


def train(step: int, samples: int, reward: float, seconds: float = 10.0) -> dict:
    return {"kind": "train", "step": step, "generation": step, "samples": samples, "reward_mean": reward,
            "reward_std": 0.1, "seeds": [1, 2], "rewards": [reward, reward], "time_total": seconds}


def evaluation(step: int, samples: int, accuracy: float, reward: float, kl: float | None, **extra) -> dict:
    return {"kind": "eval", "step": step, "samples": samples, "eval_accuracy": accuracy, "eval_reward": reward,
            "eval_kl": kl, "eval_n": 10, **{f"eval_{k}": v for k, v in extra.items()}}


def _countdown_run(root: Path, name: str, kind: str, cfg: dict, final_acc: float, per_step: int,
                   reward_of_step, status: str = "finished", torn: bool = False) -> None:
    steps = [1, 2, 3, 4]
    records = [evaluation(0, 0, 0.007, 0.01, 0.0)]
    records += [train(t, t * per_step, reward_of_step(t)) for t in steps]
    records += [evaluation(2, 2 * per_step, final_acc / 2, 0.1, 0.01),
                evaluation(4, 4 * per_step, final_acc, 0.2, 0.02)]
    write_run(root / name, kind, cfg, records, status, torn)


# Countdown on qwen2.5-1.5b-instruct. Final accuracies (fractions) per method/setting/seed.
ES_ACC = {0: 0.30, 1: 0.35, 2: 0.40}  # mean 35.0 %, std 5.0 %
GRPO_ACC = {(1e-3, 1e-6): (0.10, 0.12), (1e-3, 1e-5): (0.20, 0.16),  # (kl_coef, lr): seeds 0, 1
            (5e-3, 1e-6): (0.05, 0.07), (5e-3, 1e-5): (0.17, 0.17)}
PPO_ACC = {0: 0.14, 1: 0.15}
# Conciseness on qwen2.5-7b-instruct: final (normalised reward, KL) per setting and seed.
CONCISE = {
    ("es", 0.0005, 0.001): [(0.885, 0.20), (0.889, 0.30), (0.893, 0.25), (0.889, 0.35)],
    ("es", 0.00075, 0.0015): [(0.91, 0.7), (0.92, 0.8), (0.93, 0.9), (0.92, 0.8)],
    ("grpo", 0.0167, 5e-6): [(0.95, 1.2), (0.85, 1.8), (0.90, 1.5), (0.94, 1.9)],
}
KNOWN = {
    "table1": {("base", "qwen2.5-1.5b-instruct"): (0.7, 0.0, 15, None),  # mean %, std %, n runs, best setting
               ("es", "qwen2.5-1.5b-instruct"): (35.0, 5.0, 3, None),
               ("grpo_g8", "qwen2.5-1.5b-instruct"): (18.0, 2.8284271247, 2, (1e-3, 1e-5)),
               ("ppo", "qwen2.5-1.5b-instruct"): (14.5, 0.7071067812, 2, None)},
    "paper_table1": {"es": 37.3, "grpo_g8": 13.9, "ppo": 14.2, "base": 0.7},
    "es_curve": lambda step: (0.1 * step + 0.01, 0.01),  # ES train reward mean, std over seeds 0,1,2 at a step
    "es_samples_per_step": 60,
}


def countdown_tree(root: Path) -> Path:
    model = "qwen2.5-1.5b-instruct"
    for seed, acc in ES_ACC.items():
        cfg = run_config("es", model, "countdown", seed)
        _countdown_run(root, f"es/seed={seed}", "es", cfg, acc, 60, lambda t, s=seed: 0.1 * t + 0.01 * s,
                       torn=seed == 1)
    for (beta, lr), accs in GRPO_ACC.items():
        for seed, acc in enumerate(accs):
            cfg = run_config("grpo", model, "countdown", seed, kl_coef=beta, trl={"learning_rate": lr})
            _countdown_run(root, f"grpo/beta={beta},lr={lr},seed={seed}", "grpo", cfg, acc, 50, lambda t: 0.05 * t)
    # Unfinished runs with high accuracy: must not win the grid (tables use finished runs only).
    for status in ("failed", "running"):
        cfg = run_config("grpo", model, "countdown", 7, kl_coef=5e-3, trl={"learning_rate": 1e-6})
        _countdown_run(root, f"grpo/{status}", "grpo", cfg, 0.9, 50, lambda t: 0.05 * t, status=status)
    for seed, acc in PPO_ACC.items():
        cfg = run_config("ppo", model, "countdown", seed, kl_coef=0.05)
        _countdown_run(root, f"ppo/seed={seed}", "ppo", cfg, acc, 50, lambda t: 0.04 * t)
    return root


def conciseness_tree(root: Path) -> Path:
    model = "qwen2.5-7b-instruct"
    for (method, a, b), finals in CONCISE.items():
        for seed, (reward, kl) in enumerate(finals):
            if method == "es":
                cfg = run_config("es", model, "conciseness", seed, es={"alpha": a, "sigma": b})
            else:
                cfg = run_config("grpo", model, "conciseness", seed, kl_coef=a,
                                 trl={"learning_rate": b, "num_generations": 30})
            records = [evaluation(0, 0, 0.0, -300.0, 0.0, display_reward=0.85)]
            records += [train(t, 60 * t, 0.5 + 0.1 * t) for t in (1, 2)]
            records += [evaluation(1, 60, 0.1, -20.0, kl / 2, display_reward=reward - 0.05),
                        evaluation(2, 120, 0.2, -10.0, kl, display_reward=reward)]
            write_run(root / f"{method}/a={a},b={b},seed={seed}", method, cfg, records)
    return root


def paper_tree(root: str | Path) -> Path:
    """Both studies under one root, plus clutter a loader must ignore (a .hydra copy, a stray JSON file)."""
    root = Path(root)
    countdown_tree(root / "countdown")
    conciseness_tree(root / "conciseness")
    (root / "countdown" / "es" / "seed=0" / ".hydra").mkdir(parents=True, exist_ok=True)
    (root / "countdown" / "es" / "seed=0" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (root / "notes.json").write_text("{}")
    return root


if __name__ == "__main__":  # python -m es_repro.analysis.fixtures DIR: a demo tree for the notebooks
    import sys

    print(paper_tree(sys.argv[1] if len(sys.argv) > 1 else "results/fixture"))
