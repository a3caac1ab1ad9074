"""The ES generation loop, top to bottom: ask -> (perturb, generate, score, restore) per member -> tell ->
update -> log -> checkpoint -> evaluate. Resumes from the newest checkpoint plus the log lines after it.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from es_repro import distributed, es
from es_repro.backends import HFGenerator
from es_repro.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from es_repro.config import RunConfig
from es_repro.evaluate import evaluate
from es_repro.models import load_model
from es_repro.replay import replay
from es_repro.runlog import SAMPLES_FILE, RunLog, open_wandb
from es_repro.tasks import Task, build_task, score
from es_repro.lowrank import LowRankESWeights, evaluate_population
from es_repro.weights import ESWeights, build_weights


class Timer:
    """Accumulates wall time per phase; synchronises CUDA so GPU work is charged to the right phase."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - start


def build_generator(cfg: RunConfig, task: Task, model, tokenizer) -> HFGenerator:
    return HFGenerator(model, tokenizer, prompt_format=cfg.task.prompt_format, max_new_tokens=cfg.task.max_new_tokens,
                       stop_strings=task.stop_strings, batch_size=cfg.generation.batch_size,
                       sort_by_length=cfg.generation.sort_by_length)


def evaluate_member(weights: ESWeights, member: es.Member, sigma: float, generator: HFGenerator, task: Task,
                    rows: list, timer: Timer) -> float:
    """Reward of one perturbed model: mean per-prompt reward over ``rows``; weights restored afterwards."""
    with timer("perturb"):
        weights.perturb(member.seed, member.sign * sigma)
    try:
        with timer("generate"):
            completions = generator.generate(rows)
        with timer("reward"):
            rewards = score(task.reward, completions, rows)
    finally:
        with timer("restore"):
            weights.restore()
    return float(np.mean(rewards))


def evaluate_members(weights: ESWeights, members: list, sigma: float, generator: HFGenerator, task: Task, rows: list,
                     timer: Timer, members_per_forward: int, progress: str = "") -> list[float]:
    """Rewards of ``members`` in order: one by one, or for low-rank weights (es.lowrank) several members sharing one
    batched generate. ``progress``: a per-member progress bar with this label ("" = none)."""
    if isinstance(weights, LowRankESWeights):
        return evaluate_population(weights, members, sigma, generator, task, rows, timer, members_per_forward)
    return [evaluate_member(weights, member, sigma, generator, task, rows, timer)
            for member in tqdm(members, desc=progress, leave=False, disable=not progress)]


def resume(run_dir: Path, weights: ESWeights, log: RunLog, decay: float) -> dict:
    """Newest checkpoint + replay of the generations logged after it. Returns {generation, samples}.
    Every process reads the same files; rank 0 alone trims the log, once all have read it."""
    state = {"generation": 0, "samples": 0}
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        state = load_checkpoint(ckpt, weights)
    train = log.records("train")
    done = replay(weights, train, decay, start=state["generation"])
    if done > state["generation"]:
        state = {"generation": done, "samples": next(r["samples"] for r in train if r["generation"] == done)}
    distributed.barrier()
    if distributed.is_main():
        log.truncate_after(state["generation"])
    return state


def run_es(cfg: RunConfig, run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    log = RunLog(run_dir)
    if log.is_finished():
        print(f"[es-repro] {run_dir} already finished; skipping (delete run.json to rerun)")
        return log.info().get("summary", {})
    task = build_task(cfg.task.name, cfg.task.train_size, cfg.task.eval_size, cfg.task.data_seed, cfg.task.options)
    model, tokenizer = load_model(cfg.model)
    weights = build_weights(model, cfg.es)
    generator = build_generator(cfg, task, model, tokenizer)
    state = resume(run_dir, weights, log, cfg.es.decay)
    config = asdict(cfg)
    is_main = distributed.is_main()  # with several processes, rank 0 alone writes run.json, logs, checkpoints
    if is_main:
        log.start(config, kind="es", task_info=task.info)
        log.wandb = open_wandb(cfg.logger.wandb_mode, cfg.logger.wandb_project, cfg.logger.wandb_entity,
                               f"{cfg.experiment}/{run_dir.name}", config, run_dir)
    base_model = None

    def run_eval(generation: int) -> dict:
        nonlocal base_model
        if base_model is None and cfg.eval.kl_samples > 0:
            base_model, _ = load_model(cfg.model)
        result = evaluate(task, generator, base_model=base_model if generation > 0 else None, size=cfg.eval.size,
                          kl_samples=cfg.eval.kl_samples, kl_prompts=cfg.eval.kl_prompts,
                          kl_temperature=cfg.eval.kl_temperature, kl_max_new_tokens=cfg.eval.kl_max_new_tokens,
                          samples_to_log=cfg.eval.samples_to_log, seed=cfg.seed + generation)
        metrics = result.metrics()
        if generation == 0:
            metrics["eval_kl"] = 0.0  # the base model against itself
        record = {"kind": "eval", "step": generation, "generation": generation, "samples": state["samples"], **metrics}
        log.append(record)
        for s in result.samples:
            log.append({"generation": generation, **s}, file=SAMPLES_FILE)
        tqdm.write(f"[eval] generation {generation}: accuracy {metrics['eval_accuracy']:.3f} "
                   f"reward {metrics['eval_reward']:.4f} kl {metrics['eval_kl'] if metrics['eval_kl'] is None else round(metrics['eval_kl'], 5)}")
        return record

    evaluated = {r["generation"] for r in log.records("eval")}
    if is_main and state["generation"] == 0 and 0 not in evaluated and cfg.eval.every > 0:
        run_eval(0)

    G, N = cfg.es.generations, cfg.es.population
    bar = tqdm(total=G, initial=state["generation"], desc="ES generations", disable=not (cfg.progress and is_main),
               dynamic_ncols=True)
    for g in range(state["generation"], G):
        timer, t0, tokens0 = Timer(), time.perf_counter(), generator.generated_tokens
        members = es.ask(cfg.seed, g, N, cfg.es.antithetic)
        row_ids = es.prompt_subset(cfg.seed, g, len(task.train_rows), cfg.es.prompts_per_generation)
        rows = [task.train_rows[i] for i in row_ids]
        # This process scores members[rank::world]; every process then holds all N rewards in member order.
        mine = distributed.shard(members)
        local = evaluate_members(weights, mine, cfg.es.sigma, generator, task, rows, timer, cfg.es.members_per_forward,
                                 progress=f"gen {g + 1} members" if cfg.progress and is_main else "")
        rewards = distributed.gather_sharded(local, N)
        coeffs = es.tell(members, rewards, cfg.es.alpha, cfg.es.fitness)
        update = es.merge_by_seed(members, coeffs)
        with timer("update"):
            weights.apply_update(update, decay=cfg.es.decay)
        state = {"generation": g + 1, "samples": state["samples"] + N * len(rows)}
        total = time.perf_counter() - t0
        tokens = int(distributed.all_sum(generator.generated_tokens - tokens0))  # over all processes
        if not is_main:
            continue  # the update is applied; rank 0 logs, checkpoints and evaluates
        r = np.asarray(rewards)
        log.append({
            "kind": "train", "step": g + 1, "generation": g + 1, "samples": state["samples"],
            "reward_mean": float(r.mean()), "reward_std": float(r.std()), "reward_min": float(r.min()), "reward_max": float(r.max()),
            "seeds": [m.seed for m in members], "signs": [m.sign for m in members], "rewards": rewards, "coeffs": coeffs,
            "update": update, "prompts": len(rows) if cfg.es.prompts_per_generation == 0 else row_ids,
            "tokens": tokens, "processes": distributed.world_size(), "time_total": total,
            **{f"time_{k}": v for k, v in timer.totals.items()}, "wall": time.time(),
        })
        bar.set_postfix(reward=f"{r.mean():.4f}", max=f"{r.max():.4f}", std=f"{r.std():.4f}")
        bar.update(1)
        tqdm.write(f"[train] generation {g + 1}/{G}: reward mean {r.mean():.4f} std {r.std():.4f} "
                   f"max {r.max():.4f} ({total:.1f}s, {tokens / total:.1f} tok/s)")
        last = g + 1 == G
        if (g + 1) % cfg.checkpoint_every == 0 or last:
            save_checkpoint(run_dir, weights, tokenizer, state, keep=cfg.keep_checkpoints)
        if cfg.eval.every and (g + 1) % cfg.eval.every == 0 and not last:
            run_eval(g + 1)
    bar.close()
    if not is_main:
        return {}  # rank 0 runs the final evaluation and writes the summary
    evals = log.records("eval")  # a relaunch after the last generation may find the final evaluation done
    final = evals[-1] if evals and evals[-1]["generation"] == state["generation"] else run_eval(state["generation"])
    return log.finish_run({"generations": state["generation"], "samples": state["samples"]}, final, "generations")
