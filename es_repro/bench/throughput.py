"""Benchmark one ES generation: time split into generate / perturb / restore / update / reward, generated
tokens per second, overhead fraction (non-generation time / total) and peak memory.

    python -m es_repro.bench --model smollm2-135m --task countdown --population 8 --prompts 16 --max-new-tokens 128 \
        --modes paper@float32,default@float32,default@bfloat16,lowrank@bfloat16

A mode may carry the model dtype after "@" (default: --dtype). --timed-members K evaluates only the first K members
and scales their phases by N/K (every member costs the same: the same prompts and token budget), while the update
is timed in full over all N members; this makes the N=30, 256-token goal setting measurable in minutes.

Modes (each on a freshly loaded model, same seeds, one generation each):
- paper:   the released loop (es_repro/bench/release_loop.py): correlated noise regenerated to perturb
           (param += SIGMA * eps), to restore (param += -SIGMA * eps) and in the update (per tensor,
           sum of eps * z in the model dtype, / N, param += ALPHA * update, z in float32); generation without stop
           strings, prompts in their given order, all in one batch. Run it @bfloat16: the release's default.
- default: es-repro's path: noise drawn once to perturb, restore by copy from the fp32 master, fp32 update;
           stop strings, length-sorted batches of generation.batch_size.
- compiled: default with a static KV cache and a compiled decode step (generation.cache=static,
           generation.compile=on; CUDA graphs on GPU).
- lowrank: opt-in population-batched low-rank members (--rank, --members-per-forward) sharing one generate.
- vllm:    generation.backend=vllm (es_repro/engines/vllm/backend.py), when vLLM is importable.
- vllm-population: the population engine (es.lowrank=--rank on vLLM, members as LoRA adapters, waves of
           --max-loras; es_repro/engines/vllm/population.py).
- vllm-plain: the limit the population engine can reach: the same members x prompts sequences as ONE generate on
           the base weights (no adapters, no weight write, no update): plain batched inference, its prefix cache
           empty (members share no KV, so the repeated prompts may not share theirs either).
- inflight: members in flight: --inflight K processes on the one device, each with its own copy of the model in
           default mode, split the members round-robin as K torchrun processes sharing a GPU do; on CPU they split
           the threads. They start together once all are loaded and warm; time = the slowest one's members + the
           slowest update, tokens summed (bench_inflight).
"effective tok/s" = generated tokens / whole generation time (all phases), the number the goals refer to.
Runs on CPU here and on CUDA when one is visible (--device).

The GPU setting of issue 12 (a random model with Qwen2.5-1.5B's shape, 200 prompts cut to Countdown's length,
1024 generated tokens forced):
    python -m es_repro.bench --model qwen2.5-1.5b-random --device cuda --dtype bfloat16 --population 30 \
        --prompts 200 --prompt-tokens 140 --max-new-tokens 1024 --force-tokens --batch-size 200 --timed-members 1 \
        --modes default,compiled
"limit_s" is the hardware limit of the generation actually run (es_repro/bench/roofline.py: per forward pass the larger
of bytes moved / bandwidth and FLOPs / peak FLOP/s); "of_limit" = limit_s / generate_s. The GPU's numbers are
detected from its name (roofline.GPUS) or given with --mem-bandwidth-gbs and --peak-tflops (needed on CPU).
"""
from __future__ import annotations

import argparse
import queue as queue_module
import resource
import time
from dataclasses import replace

import numpy as np
import torch

from es_repro.bench import roofline
from es_repro.bench.release_loop import PaperLoopWeights, release_tell
from es_repro.config.load import to_run_config
from es_repro.engines.base import build_backend
from es_repro.engines.hf.backend import HFBackend
from es_repro.engines.hf.generation import HFGenerator
from es_repro.engines.weights import ESWeights
from es_repro.es import strategy as es
from es_repro.models.loading import load_model
from es_repro.tasks import task_from_config
from es_repro.util.timing import Timer

MODES = ("paper", "default", "compiled", "lowrank", "vllm", "vllm-population", "vllm-plain", "inflight")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


MEMBER_PHASES = ("generate", "perturb", "restore", "reward")


def update_of(backend: HFBackend, cfg, members: list, rewards: list[float]) -> list[tuple[int, float]]:
    """What the backend's apply_update takes: the release's (seed, float32 z) per member for the paper loop,
    es-repro's merged (seed, alpha/N * z) otherwise."""
    if isinstance(getattr(backend, "weights", None), PaperLoopWeights):
        return list(zip((m.seed for m in members), release_tell(rewards)))
    return es.merge_by_seed(members, es.tell(members, rewards, cfg.es.alpha, cfg.es.fitness))


def bench_generation(cfg, backend: HFBackend, task, generation: int = 0, timed_members: int = 0,
                     limits: tuple[float, float] | None = None) -> dict:
    """One full ES generation (members, then the update over all N), timed per phase. timed_members=K>0: only the
    first K members are evaluated and their phase times and tokens are scaled by N/K. limits=(bytes/s, FLOP/s):
    also the hardware limit of the generate calls made (limit_s) and generate_s's fraction of it (of_limit)."""
    timer = Timer()
    calls = backend.calls
    tokens0, calls0 = backend.generated_tokens, len(calls)
    members = es.ask(cfg.seed, generation, cfg.es.population, cfg.es.antithetic)
    evaluated = members[:timed_members] if timed_members else members
    rows = task.train_rows
    rewards = backend.fitness(evaluated, cfg.es.sigma, rows, task, timer)
    scale = len(members) / len(evaluated)
    # The update's cost does not depend on the reward values; untimed members reuse the timed members' rewards.
    all_rewards = [rewards[i % len(rewards)] for i in range(len(members))]
    with timer("update"):
        backend.apply_update(update_of(backend, cfg, members, all_rewards))
    phases = {f"{k}_s": timer.totals.get(k, 0.0) * (scale if k in MEMBER_PHASES else 1.0) for k in (*MEMBER_PHASES, "update")}
    limit = limit_of(backend, calls[calls0:], limits) * scale if limits is not None else None
    steps = sum(t for _, _, t in calls[calls0:]) * scale  # forward passes of the decode (one serves a whole batch)
    return _columns(phases, sum(phases.values()), round((backend.generated_tokens - tokens0) * scale), rewards, limit,
                    timed_members=len(evaluated), ms_per_step=1000 * phases["generate_s"] / max(steps, 1))


def bench_plain_batch(cfg, backend, task, limits: tuple[float, float] | None = None) -> dict:
    """Plain batched inference of the N x prompts sequences a generation generates, as one generate call on the
    base weights: the ceiling of population-batched members on the same engine."""
    timer, calls0, tokens0 = Timer(), len(backend.calls), backend.generated_tokens
    backend.llm.reset_prefix_cache()  # members never share KV (each has its own weights): no prefix hits here either
    with timer("generate"):
        backend.generate([row for _ in range(cfg.es.population) for row in task.train_rows])
    phases = {f"{k}_s": timer.totals.get(k, 0.0) for k in (*MEMBER_PHASES, "update")}
    calls = backend.calls[calls0:]
    limit = limit_of(backend, calls, limits) if limits is not None else None
    return _columns(phases, sum(phases.values()), backend.generated_tokens - tokens0, [0.0], limit,
                    timed_members=cfg.es.population,
                    ms_per_step=1000 * phases["generate_s"] / max(sum(t for _, _, t in calls), 1))


def _columns(phases: dict, total: float, tokens: int, rewards: list[float], limit: float | None, **extra) -> dict:
    """A row of the table from its phase seconds, total seconds, generated tokens, member rewards and hardware limit
    (None: no limit column)."""
    out = {**phases, "total_s": total, "tokens": tokens, "tok_per_s": tokens / total,
           "overhead": 1 - phases["generate_s"] / total, "gen_tok_per_s": tokens / phases["generate_s"],
           "reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards)), **extra}
    if limit is not None:
        out.update(limit_s=limit, of_limit=limit / phases["generate_s"])
    return out


def limit_of(backend, calls, limits: tuple[float, float]) -> float:
    """The hardware limit (s) of the generate calls (batch, width, steps) made by ``backend``."""
    if hasattr(backend, "meta_model"):  # vLLM: the same shape from its config, in the engine's dtype
        dtype = getattr(torch, backend.describe()["dtype"])
        shape, nbytes = roofline.shape_of(backend.meta_model()), torch.finfo(dtype).bits // 8
    else:
        shape, nbytes = roofline.shape_of(backend.model), next(backend.model.parameters()).element_size()
    return sum(roofline.generation_limit_s(shape, batch=b, width=w, steps=t, bytes_per_value=nbytes,
                                           bandwidth=limits[0], peak_flops=limits[1]) for b, w, t in calls)


def _inflight_worker(rank: int, cfg, dtype: str, processes: int, timed_members: int, force_tokens: bool,
                     prompt_tokens: int, threads: int, limits, barrier, queue) -> None:
    """One of bench_inflight's processes: members rank, rank + K, ... of the timed ones, then the full update."""
    try:
        if threads:
            torch.set_num_threads(threads)
        task = task_from_config(cfg.task, eval_size=1)
        backend = setup(cfg, task, "default", dtype, force_tokens=force_tokens)
        if prompt_tokens:
            task = cut_prompts(task, backend.tokenizer, prompt_tokens)
        backend.generate(task.train_rows[:1], max_new_tokens=2)  # warm-up, as the other modes
        members = es.ask(cfg.seed, 0, cfg.es.population, cfg.es.antithetic)
        mine = (members[:timed_members] if timed_members else members)[rank::processes]
        timer, tokens0, calls0 = Timer(), backend.generated_tokens, len(backend.generator.calls)
        barrier.wait()  # every process loaded and warm: start together
        start = time.perf_counter()
        rewards = backend.fitness(mine, cfg.es.sigma, task.train_rows, task, timer)
        members_s = time.perf_counter() - start
        barrier.wait()  # in a run the update waits for every process's rewards (all-gather)
        update_timer = Timer()  # synchronises CUDA: the update's queued kernels are charged to it
        with update_timer("update"):
            backend.apply_update(update_of(backend, cfg, members, [rewards[i % len(rewards)] for i in range(len(members))]))
        update_s = update_timer.totals["update"]
        cuda = next(backend.model.parameters()).is_cuda
        queue.put(dict(rank=rank, members_s=members_s, update_s=update_s, phases=dict(timer.totals), rewards=rewards,
                       tokens=backend.generated_tokens - tokens0, rss=peak_rss_gib(),
                       cuda_peak=torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
                       limit=limit_of(backend, backend.generator.calls[calls0:], limits) if limits else None))
    except BaseException as exc:  # the parent must not wait on a barrier forever
        barrier.abort()
        queue.put(dict(rank=rank, error=f"{type(exc).__name__}: {exc}"))
        raise


def bench_inflight(cfg, dtype: str, processes: int, timed_members: int = 0, force_tokens: bool = False,
                   prompt_tokens: int = 0, limits: tuple[float, float] | None = None) -> dict:
    """Members in flight on one device: ``processes`` spawned processes, each with its own model copy in default
    mode, split the (timed) members round-robin, as torchrun processes sharing a GPU split a generation
    (es_repro/util/distributed.py). On CPU each gets threads // processes threads. Phases are the slowest process's,
    scaled by N/K like bench_generation's; total_s = slowest members + slowest update; tokens are summed."""
    n = cfg.es.population
    timed = timed_members or n
    if processes > timed:
        raise SystemExit(f"--inflight={processes} needs at least as many timed members, got {timed}")
    ctx = torch.multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    cuda = torch.cuda.is_available() and cfg.model.device != "cpu"
    threads = 0 if cuda else max(1, torch.get_num_threads() // processes)
    procs = [ctx.Process(target=_inflight_worker, args=(r, cfg, dtype, processes, timed_members, force_tokens,
                                                        prompt_tokens, threads, limits, barrier, queue))
             for r in range(processes)]
    for p in procs:
        p.start()
    reports = []
    while len(reports) < processes:
        try:
            reports.append(queue.get(timeout=5))
        except queue_module.Empty:  # a process killed outright (e.g. out of memory) reports nothing
            reported = {r["rank"] for r in reports}
            dead = [(rank, p.exitcode) for rank, p in enumerate(procs)
                    if p.exitcode not in (None, 0) and rank not in reported]
            if dead:
                for p in procs:
                    p.terminate()
                raise RuntimeError(f"inflight process {dead[0][0]} died (exit code {dead[0][1]}) without reporting") from None
    reports.sort(key=lambda r: r["rank"])
    for p in procs:
        p.join()
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise RuntimeError(f"an inflight process failed: {errors[0]}")
    scale = n / timed
    phases = {f"{k}_s": max(r["phases"].get(k, 0.0) for r in reports) * scale for k in MEMBER_PHASES}
    phases["update_s"] = max(r["update_s"] for r in reports)
    # the processes share the device's bandwidth and FLOPs: their limits add up
    limit = sum(r["limit"] for r in reports) * scale if limits is not None else None
    return _columns(phases, max(r["members_s"] for r in reports) * scale + phases["update_s"],
                    round(sum(r["tokens"] for r in reports) * scale), [x for r in reports for x in r["rewards"]], limit,
                    timed_members=timed, processes=processes, threads=threads,
                    ms_per_step=float("nan"),  # the processes' decode steps overlap: no per-step time of its own
                    peak_rss_GiB=sum(r["rss"] for r in reports), peak_cuda_GiB=sum(r["cuda_peak"] for r in reports))


def parse_mode(spec: str, default_dtype: str) -> tuple[str, str]:
    """'default@bfloat16' -> ('default', 'bfloat16'); 'paper' -> ('paper', default_dtype)."""
    mode, _, dtype = spec.partition("@")
    if mode not in MODES:
        raise SystemExit(f"--modes: {mode!r} is not one of {', '.join(MODES)}")
    return mode, dtype or default_dtype


def setup(cfg, task, mode: str, dtype: str, args_rank: int = 1, force_tokens: bool = False,
          max_loras: int = 0) -> HFBackend:
    """The backend of one benchmark mode, from a fresh load in ``dtype``. force_tokens: every sequence runs the full
    max_new_tokens (no EOS, no stop strings), so modes and machines compare on equal token counts."""
    backend = _setup(cfg, task, mode, dtype, args_rank, max_loras)
    if force_tokens:
        target = backend if mode.startswith("vllm") else backend.generator
        target.stop_strings, target.min_new_tokens = (), cfg.task.max_new_tokens
    return backend


def mode_config(cfg, mode: str, dtype: str, lowrank_rank: int = 1, max_loras: int = 0):
    """The run config a benchmark mode times: ``python -m es_repro`` with these settings builds the same engine,
    through the same build (the paper mode alone is the release's loop, not a run of es-repro)."""
    cfg = replace(cfg, model=replace(cfg.model, dtype=dtype))
    if mode == "compiled":
        return replace(cfg, generation=replace(cfg.generation, cache="static", compile="on"))
    if mode == "lowrank":
        return replace(cfg, es=replace(cfg.es, lowrank=lowrank_rank))
    if mode in ("vllm", "vllm-plain"):
        return replace(cfg, generation=replace(cfg.generation, backend="vllm"))
    if mode == "vllm-population":
        vllm = replace(cfg.generation.vllm, max_loras=max_loras or cfg.es.population)
        return replace(cfg, generation=replace(cfg.generation, backend="vllm", vllm=vllm),
                       es=replace(cfg.es, lowrank=lowrank_rank, lowrank_targets="projections"))
    return cfg


def _setup(cfg, task, mode: str, dtype: str, args_rank: int, max_loras: int = 0) -> HFBackend:
    if mode != "paper":
        return build_backend(mode_config(cfg, mode, dtype, args_rank, max_loras), task)
    model, tokenizer = load_model(replace(cfg.model, dtype=dtype))
    weights = PaperLoopWeights(model, "correlated", cfg.es.alpha, cfg.es.population)
    generator = HFGenerator(model, tokenizer, prompt_format=cfg.task.prompt_format,
                            max_new_tokens=cfg.task.max_new_tokens, stop_strings=(),
                            batch_size=len(task.train_rows), sort_by_length=False)
    return HFBackend(model, tokenizer, generator, weights)


def cut_prompts(task, tokenizer, n_tokens: int):
    """The task with each training prompt cut to its first n_tokens tokens (a random-weight model's byte tokenizer
    would otherwise see ~3x Countdown's real prompt length)."""
    rows = [{**row, "prompt": tokenizer.decode(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"][:n_tokens])}
            for row in task.train_rows]
    return replace(task, train_rows=rows)


def _population_ratios(results: dict) -> None:
    """The population engine's goals: its members' tokens/s (adapters + generate) against plain batched inference
    of the same sequences, and its whole generation against the full-rank vLLM path's."""
    for key, r in results.items():
        if not key.startswith("vllm-population@"):
            continue
        dtype = key.partition("@")[2]
        members_tok_s = r["tokens"] / (r["generate_s"] + r["perturb_s"])
        plain, full = results.get(f"vllm-plain@{dtype}"), results.get(f"vllm@{dtype}")
        if plain:
            print(f"{key}: members at {members_tok_s:.1f} tok/s (adapters + generate) = "
                  f"{members_tok_s / plain['gen_tok_per_s']:.2f} of plain batched inference ({plain['gen_tok_per_s']:.1f} tok/s)")
        if full:
            print(f"{key}: {full['total_s'] / r['total_s']:.2f}x the full-rank vLLM path per generation "
                  f"({r['total_s']:.1f}s against {full['total_s']:.1f}s)")


def _bandwidth(value: str) -> float | str:
    """--mem-bandwidth-gbs: GB/s, or 'measure'."""
    if value == "measure":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither GB/s nor 'measure'") from None


def _cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> None:
    from es_repro.config.load import compose

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
    ap.add_argument("--max-loras", type=int, default=0,
                    help="vllm-population mode: LoRA slots, members per wave (0 = the whole population)")
    ap.add_argument("--inflight", type=int, default=2, help="inflight mode: processes sharing the device")
    ap.add_argument("--force-tokens", action="store_true", help="every sequence generates --max-new-tokens tokens")
    ap.add_argument("--prompt-tokens", type=int, default=0, help="cut each prompt to this many tokens (raw prompts)")
    ap.add_argument("--mem-bandwidth-gbs", type=_bandwidth, default=None,
                    help="for the limit column (else from the GPU name); 'measure': on CPU, a 1 GiB read measured "
                         "just before each row (its bw_GBs column)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, for the limit column")
    ap.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    args = ap.parse_args(argv)
    if args.prompt_tokens and args.prompt_format != "raw":
        raise SystemExit("--prompt-tokens cuts raw prompts; use it with --prompt-format raw")
    overrides = [f"model={args.model}", f"task={args.task}", f"es.population={args.population}",
                 f"task.train_size={args.prompts}", f"task.max_new_tokens={args.max_new_tokens}",
                 f"generation.batch_size={args.batch_size}", f"model.device={args.device}", f"model.dtype={args.dtype}",
                 f"task.prompt_format={args.prompt_format}", f"es.members_per_forward={args.members_per_forward}",
                 *args.overrides]
    cfg = to_run_config(compose(overrides))
    torch.manual_seed(0)
    task = task_from_config(cfg.task, eval_size=1)
    specs = [parse_mode(spec, args.dtype) for spec in args.modes.split(",")]
    if args.timed_members and (args.timed_members > cfg.es.population or any(
            m == "lowrank" and args.timed_members % cfg.es.members_per_forward for m, _ in specs)):
        raise SystemExit(f"--timed-members={args.timed_members} must be <= N={cfg.es.population} and, with lowrank, "
                         f"a multiple of --members-per-forward={cfg.es.members_per_forward}")
    cuda = torch.cuda.is_available() and cfg.model.device != "cpu"
    measure = args.mem_bandwidth_gbs == "measure"
    if measure and (cuda or not args.peak_tflops):
        raise SystemExit("--mem-bandwidth-gbs measure reads CPU memory: use it on CPU (--device cpu), "
                         "with --peak-tflops")
    limits = roofline.device_limits(torch.cuda.get_device_name() if cuda else None,
                                    None if measure else args.mem_bandwidth_gbs, args.peak_tflops)
    if measure:
        limits = (float("nan"), args.peak_tflops * 1e12)  # the bandwidth is measured per row, below
    cols = ["total_s", "generate_s", "perturb_s", "restore_s", "update_s", "reward_s", "tokens", "tok_per_s",
            "gen_tok_per_s", "overhead", "ms_per_step"] + (["limit_s", "of_limit"] if limits else []) + (
        ["bw_GBs"] if measure else [])
    print(f"model={cfg.model.name} N={cfg.es.population} prompts={len(task.train_rows)} "
          f"max_new_tokens={cfg.task.max_new_tokens}{' (forced)' if args.force_tokens else ''} "
          f"threads={torch.get_num_threads()} timed_members={args.timed_members or cfg.es.population}"
          + (f" limits: {limits[0] / 1e9:g} GB/s, {limits[1] / 1e12:g} TFLOP/s" if limits and not measure else
             f" limits: the bw_GBs measured before each row, {args.peak_tflops:g} TFLOP/s" if measure else
             " (no limit column: "
             "give --mem-bandwidth-gbs and --peak-tflops)"))
    print("| mode | dtype | " + " | ".join(cols + ["peak_rss_GiB", "peak_cuda_GiB", "reward_mean"]) + " |")
    print("|---|---|" + "---|" * (len(cols) + 3))
    results = {}
    for mode, dtype in specs:
        if measure:
            limits = (roofline.measured_read_bandwidth(), limits[1])
        if mode == "inflight":  # its own processes: memory is theirs, summed
            r = results[f"inflight{args.inflight}@{dtype}"] = bench_inflight(
                cfg, dtype, args.inflight, args.timed_members, args.force_tokens, args.prompt_tokens, limits)
            r["bw_GBs"] = limits[0] / 1e9 if measure else None
            print(f"| inflight x{args.inflight} | {dtype} | " + " | ".join(_cell(r[c]) for c in cols)
                  + f" | {r['peak_rss_GiB']:.2f} | {r['peak_cuda_GiB']:.2f} | {r['reward_mean']:.4f} |", flush=True)
            continue
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        backend = setup(cfg, task, mode, dtype, args.rank, args.force_tokens, args.max_loras)
        if args.prompt_tokens:
            task = cut_prompts(task, backend.tokenizer, args.prompt_tokens)
        # Warm-up: first-call costs are not ES costs. The compiled mode compiles per shape (batch, cache length):
        # warm it on the very shapes it will run (one run pays this once).
        if mode == "compiled":
            backend.generate(task.train_rows)
        else:
            backend.generate(task.train_rows[:1], max_new_tokens=2)
        if isinstance(getattr(backend, "weights", None), ESWeights):  # es.noise=table: the table is read in once per
            backend.weights.draw(0, 0)  # process (a run does it at its noise fingerprint, before training)
        elif mode.startswith("vllm"):
            backend.llm.collective_rpc("es_warm_noise")  # the same, on the engine's workers
        if mode == "vllm-plain":
            r = results[f"{mode}@{dtype}"] = bench_plain_batch(cfg, backend, task, limits)
        else:
            r = results[f"{mode}@{dtype}"] = bench_generation(cfg, backend, task, timed_members=args.timed_members,
                                                              limits=limits)
        r["bw_GBs"] = limits[0] / 1e9 if measure else None
        cuda_peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
        print(f"| {mode} | {dtype} | " + " | ".join(_cell(r[c]) for c in cols)
              + f" | {peak_rss_gib():.2f} | {cuda_peak:.2f} | {r['reward_mean']:.4f} |", flush=True)
        del backend
    _population_ratios(results)
    papers = [k for k in results if k.startswith("paper@")]
    for ref in papers:
        for key, r in results.items():
            if not key.startswith("paper@"):
                print(f"speed-up of {key} over {ref}: {results[ref]['total_s'] / r['total_s']:.2f}x per generation")


if __name__ == "__main__":
    main()
