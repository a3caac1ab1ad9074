"""Population sharding across processes: one process per device, only seeds and scalars on the wire.

Every process holds the full model. Generation g's members come from (seed, g) alone (es.ask), so each
process knows all of them without being told; process r evaluates members r, r + W, r + 2W, ... (W = world
size), the rewards are all-gathered back into member order, and every process applies the identical update.
Weights never cross the network. Rank 0 alone writes logs and checkpoints; the others read them on resume.

Launch:
- one process: nothing to do (WORLD_SIZE unset or 1; every helper below degrades to a no-op);
- torchrun: `torchrun --nproc_per_node=2 -m es_repro ...` sets RANK/WORLD_SIZE/MASTER_ADDR/...;
- submitit (hydra/launcher=slurm_*): each SLURM task exports the same variables from its job environment
  (submitit.helpers.TorchDistributedEnvironment), so `tasks_per_node` x `nodes` processes join one group.

The group uses gloo even on GPUs: a generation sends N floats, so NCCL would buy nothing, and gloo works on
CPU-only test machines and across nodes alike. Each CUDA process binds the GPU of its local rank.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# How long a collective waits for the other processes (a slow evaluation on rank 0 holds the others here).
TIMEOUT = timedelta(seconds=int(os.environ.get("ES_REPRO_DIST_TIMEOUT_S", 6 * 3600)))


def _export_submitit_env() -> None:
    """Inside a multi-task submitit job, export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK for env://."""
    if os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local"):
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        # overwrite: sbatch copies the submitting shell's environment, which may carry stale RANK/WORLD_SIZE.
        # CUDA_VISIBLE_DEVICES is left to SLURM; init() binds cuda:LOCAL_RANK instead.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def init() -> bool:
    """Join the process group described by the environment; False (and no group) for a single process.

    Safe to call again (a multirun in one process): the group is created once.
    """
    _export_submitit_env()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group("gloo", init_method="env://", timeout=TIMEOUT)
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of ``items``, round-robin: items[rank::world]."""
    return list(items[rank()::world_size()])


def all_gather_floats(values: Sequence[float]) -> list[list[float]]:
    """Every process's list of floats (lengths may differ by process), indexed by rank. Exact: float64."""
    if not active():
        return [list(values)]
    world = world_size()
    counts = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(values)], dtype=torch.int64))
    width = max(int(c) for c in counts)
    mine = torch.zeros(width, dtype=torch.float64)
    mine[: len(values)] = torch.tensor(list(values), dtype=torch.float64)
    gathered = [torch.empty(width, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(gathered, mine)
    return [g[: int(c)].tolist() for g, c in zip(gathered, counts)]


def unshard(per_rank: list[list[T]], n: int) -> list[T]:
    """Inverse of shard: item i was evaluated by rank i % W as its (i // W)-th item."""
    world = len(per_rank)
    if sum(len(p) for p in per_rank) != n:
        raise ValueError(f"gathered {sum(len(p) for p in per_rank)} values for {n} items")
    return [per_rank[i % world][i // world] for i in range(n)]


def gather_sharded(local: Sequence[float], n: int) -> list[float]:
    """Values computed for shard(range(n)) on every process -> all n values in item order, on every process."""
    return unshard(all_gather_floats(local), n)


def all_sum(value: float) -> float:
    """Sum of one scalar over the processes (e.g. generated tokens)."""
    return float(sum(v for vals in all_gather_floats([value]) for v in vals))


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
