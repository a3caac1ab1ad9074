"""Benchmark one ES generation: time split into generate / perturb / restore / update / reward, generated
tokens per second, overhead fraction (non-generation time / total) and peak memory.

    python -m es_repro.bench --model smollm2-135m --task countdown --population 8 --prompts 16 --max-new-tokens 128 \
        --modes paper@float32,default@float32,default@bfloat16,lowrank@bfloat16

A mode may carry the model dtype after "@" (default: --dtype). --timed-members K evaluates only the first K members
and scales their phases by N/K (every member costs the same: the same prompts and token budget), while the update
is timed in full over all N members; this makes the N=30, 256-token goal setting measurable in minutes.

Modes (each on a freshly loaded model, same seeds, one generation each):
- paper:   the released loop (es_repro/paper_loop.py): correlated noise regenerated to perturb
           (param += SIGMA * eps), to restore (param += -SIGMA * eps) and in the update (per tensor,
           sum of eps * z in the model dtype, / N, param += ALPHA * update, z in float32); generation without stop
           strings, prompts in their given order, all in one batch. Run it @bfloat16: the release's default.
- default: es-repro's path: noise drawn once to perturb, restore by copy from the fp32 master, fp32 update;
           stop strings, length-sorted batches of generation.batch_size.
- lowrank: opt-in population-batched low-rank members (--rank, --members-per-forward) sharing one generate.
"effective tok/s" = generated tokens / whole generation time (all phases), the number the goals refer to.
Runs on CPU here and on CUDA when one is visible (--device).
"""
from __future__ import annotations

import argparse
import resource
from dataclasses import replace

import numpy as np
import torch

from es_repro import es
from es_repro.config import to_run_config
from es_repro.hf_backend import HFBackend, HFLowRankBackend, make_generator
from es_repro.hf_generation import HFGenerator
from es_repro.lowrank import LowRankESWeights
from es_repro.models import load_model
from es_repro.paper_loop import PaperLoopWeights, release_tell
from es_repro.tasks import build_task
from es_repro.timing import Timer
from es_repro.weights import ESWeights


MODES = ("paper", "default", "lowrank")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


MEMBER_PHASES = ("generate", "perturb", "restore", "reward")


def update_of(backend: HFBackend, cfg, members: list, rewards: list[float]) -> list[tuple[int, float]]:
    """What the backend's apply_update takes: the release's (seed, float32 z) per member for the paper loop,
    es-repro's merged (seed, alpha/N * z) otherwise."""
    if isinstance(backend.weights, PaperLoopWeights):
        return list(zip((m.seed for m in members), release_tell(rewards)))
    return es.merge_by_seed(members, es.tell(members, rewards, cfg.es.alpha, cfg.es.fitness))


def bench_generation(cfg, backend: HFBackend, task, generation: int = 0, timed_members: int = 0) -> dict:
    """One full ES generation (members, then the update over all N), timed per phase. timed_members=K>0: only the
    first K members are evaluated and their phase times and tokens are scaled by N/K."""
    timer = Timer()
    tokens0 = backend.generated_tokens
    members = es.ask(cfg.seed, generation, cfg.es.population, cfg.es.antithetic)
    evaluated = members[:timed_members] if timed_members else members
    rows = task.train_rows
    rewards = backend.fitness(evaluated, cfg.es.sigma, rows, task, timer)
    scale = len(members) / len(evaluated)
    # The update's cost does not depend on the reward values; untimed members reuse the timed members' rewards.
    all_rewards = [rewards[i % len(rewards)] for i in range(len(members))]
    with timer("update"):
        backend.apply_update(update_of(backend, cfg, members, all_rewards))
    out = {f"{k}_s": timer.totals.get(k, 0.0) * (scale if k in MEMBER_PHASES else 1.0) for k in (*MEMBER_PHASES, "update")}
    total = sum(out.values())
    tokens = round((backend.generated_tokens - tokens0) * scale)
    out.update(total_s=total, tokens=tokens, tok_per_s=tokens / total, overhead=1 - out["generate_s"] / total,
               gen_tok_per_s=tokens / out["generate_s"], reward_mean=float(np.mean(rewards)),
               reward_std=float(np.std(rewards)), timed_members=len(evaluated))
    return out


def parse_mode(spec: str, default_dtype: str) -> tuple[str, str]:
    """'default@bfloat16' -> ('default', 'bfloat16'); 'paper' -> ('paper', default_dtype)."""
    mode, _, dtype = spec.partition("@")
    if mode not in MODES:
        raise SystemExit(f"--modes: {mode!r} is not one of {', '.join(MODES)}")
    return mode, dtype or default_dtype


def setup(cfg, task, mode: str, dtype: str, args_rank: int = 1) -> HFBackend:
    """The backend of one benchmark mode, from a fresh load in ``dtype``."""
    model, tokenizer = load_model(replace(cfg.model, dtype=dtype))
    if mode == "paper":
        weights = PaperLoopWeights(model, "correlated", cfg.es.alpha, cfg.es.population)
        generator = HFGenerator(model, tokenizer, prompt_format=cfg.task.prompt_format,
                                max_new_tokens=cfg.task.max_new_tokens, stop_strings=(),
                                batch_size=len(task.train_rows), sort_by_length=False)
        return HFBackend(model, tokenizer, generator, weights)
    generator = make_generator(cfg, task, model, tokenizer)
    if mode == "lowrank":
        return HFLowRankBackend(model, tokenizer, generator, LowRankESWeights(model, rank=args_rank),
                                members_per_forward=cfg.es.members_per_forward)
    return HFBackend(model, tokenizer, generator, ESWeights(model, cfg.es.noise, cfg.es.noise_dtype))


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
    ap.add_argument("--modes", default="default", help=f"comma-separated, from {MODES}, each optionally @dtype")
    ap.add_argument("--timed-members", type=int, default=0,
                    help="evaluate only this many members and scale their phases by N/K (0 = all N)")
    ap.add_argument("--rank", type=int, default=1, help="lowrank mode: perturbation rank")
    ap.add_argument("--members-per-forward", type=int, default=8, help="lowrank mode: members per batched generate")
    ap.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    args = ap.parse_args(argv)
    overrides = [f"model={args.model}", f"task={args.task}", f"es.population={args.population}",
                 f"task.train_size={args.prompts}", f"task.max_new_tokens={args.max_new_tokens}",
                 f"generation.batch_size={args.batch_size}", f"model.device={args.device}", f"model.dtype={args.dtype}",
                 f"task.prompt_format={args.prompt_format}", f"es.members_per_forward={args.members_per_forward}",
                 *args.overrides]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = to_run_config(compose(config_name="config", overrides=overrides))
    torch.manual_seed(0)
    task = build_task(cfg.task.name, cfg.task.train_size, 1, cfg.task.data_seed, cfg.task.options)
    specs = [parse_mode(spec, args.dtype) for spec in args.modes.split(",")]
    if args.timed_members and (args.timed_members > cfg.es.population or any(
            m == "lowrank" and args.timed_members % cfg.es.members_per_forward for m, _ in specs)):
        raise SystemExit(f"--timed-members={args.timed_members} must be <= N={cfg.es.population} and, with lowrank, "
                         f"a multiple of --members-per-forward={cfg.es.members_per_forward}")
    cols = ["total_s", "generate_s", "perturb_s", "restore_s", "update_s", "reward_s", "tokens", "tok_per_s",
            "gen_tok_per_s", "overhead"]
    print(f"model={cfg.model.name} N={cfg.es.population} prompts={len(task.train_rows)} "
          f"max_new_tokens={cfg.task.max_new_tokens} threads={torch.get_num_threads()} "
          f"timed_members={args.timed_members or cfg.es.population}")
    print("| mode | dtype | " + " | ".join(cols + ["peak_rss_GiB", "reward_mean"]) + " |")
    print("|---|---|" + "---|" * (len(cols) + 2))
    results = {}
    for mode, dtype in specs:
        backend = setup(cfg, task, mode, dtype, args.rank)
        backend.generate(task.train_rows[:1], max_new_tokens=2)  # warm-up: first-call costs are not ES costs
        r = results[f"{mode}@{dtype}"] = bench_generation(cfg, backend, task, timed_members=args.timed_members)
        print(f"| {mode} | {dtype} | " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols)
              + f" | {peak_rss_gib():.2f} | {r['reward_mean']:.4f} |", flush=True)
        del backend
    papers = [k for k in results if k.startswith("paper@")]
    for ref in papers:
        for key, r in results.items():
            if not key.startswith("paper@"):
                print(f"speed-up of {key} over {ref}: {results[ref]['total_s'] / r['total_s']:.2f}x per generation")
    if torch.cuda.is_available():
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
