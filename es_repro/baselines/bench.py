"""Wall time, CPU time and peak memory per 1,000 sample evaluations, for ES and the RL baselines measured the same
way (the paper's memory argument): a short real run of each in a temporary run directory.

    python -m es_repro.baselines.bench --method es   --steps 2 --overrides es.population=2 task.train_size=16
    python -m es_repro.baselines.bench --method grpo --steps 3 --overrides baseline.trl.num_generations=8 \
        baseline.trl.per_device_train_batch_size=2 baseline.trl.gradient_accumulation_steps=8
    python -m es_repro.baselines.bench --method ppo  --steps 3 --overrides baseline.trl.gradient_accumulation_steps=2

Defaults: model smollm2-135m, task countdown, 128 new tokens; evaluation off (one held-out prompt at the end, no
KL), checkpoints only at the end. A "step" is an ES generation or an optimizer step. Per 1,000 samples = the
time between the first and the last train line of metrics.jsonl (so the first step, with its warm-up, is not
counted) divided by the completions generated in between, x 1000: an extrapolation from a few steps. CPU time is
this process's (all threads), read when each train line is written; on a shared machine it is steadier than
wall time. Peak RSS is the process's maximum resident memory: models, optimizer states, activations, libraries.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from es_repro.bench.throughput import peak_rss_gib
from es_repro.run.log import RunLog


class _TrainLineClock:
    """Notes process CPU time whenever a train line is logged (bench-only instrumentation of RunLog.append)."""

    def __init__(self):
        self.cpu: dict[int, float] = {}
        self._append = RunLog.append
        clock = self

        def append(log, record, *args, **kwargs):
            if record.get("kind") == "train":
                clock.cpu[record["step"]] = time.process_time()
            return clock._append(log, record, *args, **kwargs)

        RunLog.append = append

    def close(self) -> None:
        RunLog.append = self._append


def measure(method: str, model: str, task: str, max_new_tokens: int, steps: int, overrides: list[str]) -> dict:
    from es_repro.config.load import compose_config

    base = [f"model={model}", f"task={task}", f"task.max_new_tokens={max_new_tokens}", "eval.every=0",
            "eval.kl_samples=0", "task.eval_size=1", "checkpoint_every=1000000", "progress=false"]
    if method != "es":
        base += [f"baseline={method}", "baseline.eval_every_samples=0"]
    cfg = compose_config(base + list(overrides))
    clock = _TrainLineClock()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            if method == "es":
                from es_repro.train import run_es

                run_es(dataclasses.replace(cfg, es=dataclasses.replace(cfg.es, generations=steps)), run_dir)
            else:
                from es_repro.baselines import run_baseline
                from es_repro.baselines.trl_config import build_args, completions_per_step

                per_step = completions_per_step(method, build_args(cfg, Path(tmp)))
                budget = int(steps * per_step)
                run_baseline(dataclasses.replace(cfg, baseline=dataclasses.replace(cfg.baseline, samples_budget=budget)), run_dir)
            train = RunLog(run_dir).records("train")
    finally:
        clock.close()
    first, last = train[0], train[-1]
    samples = last["samples"] - first["samples"]
    wall = sum(r["time_total"] for r in train[1:])
    cpu = clock.cpu[last["step"]] - clock.cpu[first["step"]]
    tokens = sum(r["tokens"] for r in train[1:])
    return {"method": method, "samples_per_step": first["samples"], "steps_timed": len(train) - 1,
            "wall_s_per_1000": 1000 * wall / samples, "cpu_s_per_1000": 1000 * cpu / samples,
            "tokens_per_sample": tokens / samples, "peak_rss_GiB": peak_rss_gib()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=("es", "grpo", "ppo"), required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="countdown")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="ES generations or optimizer steps; the first is not timed")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2: the first step is warm-up and is not timed")
    r = measure(args.method, args.model, args.task, args.max_new_tokens, args.steps, args.overrides)
    import torch

    print(f"threads={torch.get_num_threads()} model={args.model} task={args.task} max_new_tokens={args.max_new_tokens} "
          f"overrides={' '.join(args.overrides)}")
    print("| " + " | ".join(r) + " |")
    print("|" + "---|" * len(r))
    print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
