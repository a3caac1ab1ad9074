"""An ES run, top to bottom: the noise fingerprint agreed -> the task -> the engine -> resume (newest checkpoint +
the log lines after it) -> per generation: ask -> fitness of each member (the engine perturbs, generates, scores
and restores) -> tell -> update -> log -> checkpoint -> evaluate -> the final evaluation and summary.
ask/tell/merge come from a Strategy (es_repro/es/strategy.py: the paper's by default, mirrored pair coefficients
for es.update=qes); everything model-specific sits behind the Backend (es_repro/engines/base.py); where the run
stands is a RunState (es_repro/run/state.py).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from es_repro.config.schema import RunConfig
from es_repro.engines.base import build_backend
from es_repro.es import fingerprint
from es_repro.es import strategy as es
from es_repro.run import lifecycle
from es_repro.run.checkpoint import save_checkpoint
from es_repro.run.evaluate import Evaluator
from es_repro.run.log import RunLog
from es_repro.run.replay import resume
from es_repro.run.state import RunState
from es_repro.tasks import task_from_config
from es_repro.tasks.prompt_limits import check_prompt_lengths
from es_repro.util import distributed
from es_repro.util.timing import Timer


def run_es(cfg: RunConfig, run_dir: Path) -> dict:
    log = RunLog(Path(run_dir))
    is_main = distributed.is_main()  # with several processes, rank 0 alone writes run.json, logs, checkpoints
    summary = lifecycle.finished_summary(log)
    if summary is not None:
        return summary
    bars = bars_wanted(cfg, is_main)  # before the model loads: its loading bar too
    with lifecycle.managed(log, writer=is_main):
        # before the model loads, and before resume: replay draws the logged members' noise, which must be the
        # noise they were trained with, on every process
        noise = fingerprint.agreed_noise(cfg, log.info().get("noise"),
                                         distributed.all_gather_objects(fingerprint.this_process(cfg)))
        task = task_from_config(cfg.task)
        backend = build_backend(cfg, task)
        check_prompt_lengths(task, backend, cfg)
        state = resume(log.dir, backend, log)
        if is_main:
            lifecycle.start(cfg, log, kind="es", task_info=task.info, backend_info=backend.describe(),
                            noise_info=noise)
        return _generations(cfg, log, task, backend, state, is_main, bars)


FLAT_GENERATIONS_WARNING = 3  # consecutive generations with identical member rewards before a sigma warning


def bars_wanted(cfg: RunConfig, is_main: bool) -> bool:
    """Progress bars only on a terminal: piped to a file they are escape-code clutter (the [train] lines stay)."""
    wanted = cfg.progress and is_main and sys.stderr.isatty()
    if not wanted:  # transformers' own bars (e.g. "Writing model shards") too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return wanted


def _generations(cfg: RunConfig, log: RunLog, task, backend, state: RunState, is_main: bool, bars: bool) -> dict:
    evaluator = Evaluator(cfg, task, backend, log)
    evaluated = {r["step"] for r in log.records("eval")}
    if is_main and state.generation == 0 and 0 not in evaluated and cfg.eval.every > 0:
        evaluator.run(0, 0, unit="generation")
    strategy = es.build_strategy(cfg.es, cfg.seed)  # how members are drawn and rewards become the update
    G, flat = cfg.es.generations, 0
    bar = tqdm(total=G, initial=state.generation, desc="ES generations", disable=not bars, dynamic_ncols=True)
    for g in range(state.generation, G):
        record, state = _one_generation(cfg, task, backend, strategy, state, bars)
        if not is_main:
            continue  # the update is applied; rank 0 logs, checkpoints and evaluates
        log.append(record)
        flat = _report(cfg, record, bar, flat)
        last = g + 1 == G
        if (g + 1) % cfg.checkpoint_every == 0 or last:
            save_checkpoint(log.dir, backend, state, keep=cfg.keep_checkpoints)
        if cfg.eval.every and (g + 1) % cfg.eval.every == 0 and not last:
            evaluator.run(g + 1, state.samples, unit="generation")
    bar.close()
    if not is_main:
        return {}  # rank 0 runs the final evaluation and writes the summary
    evals = log.records("eval")  # a relaunch after the last generation may find the final evaluation done
    done = evals and evals[-1]["step"] == state.generation
    final = evals[-1] if done else evaluator.run(state.generation, state.samples, unit="generation")
    return log.finish_run({"generations": state.generation, "samples": state.samples}, final, "generations")


def _one_generation(cfg: RunConfig, task, backend, strategy, state: RunState, bars: bool) -> tuple[dict, RunState]:
    """ask -> every member's fitness (sharded over processes) -> tell -> the update applied; returns the
    generation's log line and the state after it."""
    g, N = state.generation, cfg.es.population
    timer, t0, tokens0 = Timer(), time.perf_counter(), backend.generated_tokens
    members = strategy.ask(g)
    row_ids = es.prompt_subset(cfg.seed, g, len(task.train_rows), cfg.es.prompts_per_generation)
    rows = [task.train_rows[i] for i in row_ids]
    # This process scores members[rank::world]; every process then holds all N rewards in member order.
    local = backend.member_rewards(distributed.shard(members), cfg.es.sigma, rows, task, timer,
                                   progress=f"gen {g + 1} members" if bars else "")
    per_prompt = distributed.gather_sharded_rows(local, N, len(rows))
    rewards = [backend.member_mean(r) for r in per_prompt]
    if not np.isfinite(rewards).all():  # a NaN would z-score every coefficient to NaN and poison the weights
        raise RuntimeError(f"generation {g + 1}: non-finite member rewards {rewards}; the weights were not updated")
    fitness = es.member_fitness(cfg.es.fitness_baseline, per_prompt, rewards)
    coeffs = strategy.tell(members, fitness)
    update = strategy.merge(members, coeffs)
    with timer("update"):
        backend.apply_update(update)
    state = state.advanced(N * len(rows))
    total = time.perf_counter() - t0
    tokens = int(distributed.all_sum(backend.generated_tokens - tokens0))  # over all processes
    r = np.asarray(rewards)
    record = {
        "kind": "train", "step": state.generation, "generation": state.generation, "samples": state.samples,
        "reward_mean": float(r.mean()), "reward_std": float(r.std()), "reward_min": float(r.min()), "reward_max": float(r.max()),
        "seeds": [m.seed for m in members], "signs": [m.sign for m in members], "rewards": rewards, "coeffs": coeffs,
        **({"fitness": fitness} if cfg.es.fitness_baseline != "none" else {}),
        "update": update, "prompts": len(rows) if cfg.es.prompts_per_generation == 0 else row_ids,
        "tokens": tokens, "processes": distributed.world_size(), "time_total": total,
        **backend.update_stats(),
        **{f"time_{k}": v for k, v in timer.totals.items()}, "wall": time.time(),
    }
    return record, state


def _report(cfg: RunConfig, record: dict, bar, flat: int) -> int:
    """The generation's progress line; warns when the members have scored alike for FLAT_GENERATIONS_WARNING
    generations in a row. Returns the new count of such generations."""
    r, total = np.asarray(record["rewards"]), record["time_total"]
    bar.set_postfix(reward=f"{r.mean():.4f}", max=f"{r.max():.4f}", std=f"{r.std():.4f}")
    bar.update(1)
    tqdm.write(f"[train] generation {record['generation']}/{cfg.es.generations}: reward mean {r.mean():.4f} std "
               f"{r.std():.4f} max {r.max():.4f} ({total:.1f}s, {record['tokens'] / total:.1f} tok/s)")
    flat = flat + 1 if r.min() == r.max() else 0
    if flat == FLAT_GENERATIONS_WARNING:
        tqdm.write(f"[es-repro] warning: all {len(r)} members scored the same for {flat} generations in a row, so "
                   f"the update is zero: es.sigma={cfg.es.sigma} is too small for this model and task (try a larger "
                   f"es.sigma, or measure with the sigma probe)")
    return flat
