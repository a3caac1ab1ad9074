"""Benchmark one ES generation: time split into generate / perturb / restore / update / reward, generated
tokens per second, overhead fraction (non-generation time / total) and peak memory.

    python -m es_repro.bench --model smollm2-135m --task countdown --population 8 --prompts 16 --max-new-tokens 128

Runs on CPU here and on CUDA when one is visible (--device). Prints one table row per mode.
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from es_repro import es
from es_repro.main import to_run_config
from es_repro.models import load_model
from es_repro.tasks import build_task
from es_repro.train_es import Timer, build_generator, evaluate_member
from es_repro.weights import ESWeights


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def bench_generation(cfg, weights: ESWeights, generator, task, generation: int = 0) -> dict:
    """One full ES generation (all members, then the update), timed per phase."""
    timer = Timer()
    tokens0, t0 = generator.generated_tokens, time.perf_counter()
    members = es.ask(cfg.seed, generation, cfg.es.population, cfg.es.antithetic)
    rows = task.train_rows
    rewards = [evaluate_member(weights, m, cfg.es.sigma, generator, task, rows, timer) for m in members]
    with timer("update"):
        weights.apply_update(es.merge_by_seed(members, es.tell(members, rewards, cfg.es.alpha, cfg.es.fitness)))
    total = time.perf_counter() - t0
    tokens = generator.generated_tokens - tokens0
    out = {f"{k}_s": v for k, v in timer.totals.items()}
    out.update(total_s=total, tokens=tokens, tok_per_s=tokens / total, overhead=1 - timer.totals["generate"] / total,
               reward_mean=float(np.mean(rewards)), reward_std=float(np.std(rewards)))
    return out


def main(argv: list[str] | None = None) -> None:
    from hydra import compose, initialize_config_dir

    from es_repro.main import CONF_DIR

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="countdown")
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--prompt-format", default="raw")
    ap.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    args = ap.parse_args(argv)
    overrides = [f"model={args.model}", f"task={args.task}", f"es.population={args.population}",
                 f"task.train_size={args.prompts}", f"task.max_new_tokens={args.max_new_tokens}",
                 f"generation.batch_size={args.batch_size}", f"model.device={args.device}", f"model.dtype={args.dtype}",
                 f"task.prompt_format={args.prompt_format}", *args.overrides]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = to_run_config(compose(config_name="config", overrides=overrides))
    torch.manual_seed(0)
    task = build_task(cfg.task.name, cfg.task.train_size, 1, cfg.task.data_seed, cfg.task.options)
    model, tokenizer = load_model(cfg.model)
    weights = ESWeights(model, cfg.es.noise)
    generator = build_generator(cfg, task, model, tokenizer)
    n_params = sum(p.numel() for p in weights.params)
    print(f"model={cfg.model.name} params={n_params / 1e6:.1f}M device={model.device} dtype={model.dtype} "
          f"N={cfg.es.population} prompts={len(task.train_rows)} max_new_tokens={cfg.task.max_new_tokens} "
          f"threads={torch.get_num_threads()}")
    r = bench_generation(cfg, weights, generator, task)
    cols = ["total_s", "generate_s", "perturb_s", "restore_s", "update_s", "reward_s", "tokens", "tok_per_s", "overhead"]
    print("| " + " | ".join(cols + ["peak_rss_GiB"]) + " |")
    print("|" + "---|" * (len(cols) + 1))
    print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + f" | {peak_rss_gib():.2f} |")
    if torch.cuda.is_available():
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
