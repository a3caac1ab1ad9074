"""Population sharding across processes: one process per device, only seeds and scalars on the wire.

Every process holds the full model. Generation g's members come from (seed, g) alone (es.ask), so each
process knows all of them without being told; process r evaluates members r, r + W, r + 2W, ... (W = world
size), the rewards are all-gathered back into member order, and every process applies the identical update.
Weights never cross the network. Rank 0 alone writes logs and checkpoints; the others read them on resume.

Launch:
- one process: nothing to do (WORLD_SIZE unset or 1; every helper below degrades to a no-op);
- torchrun: `torchrun --nproc_per_node=2 -m es_repro ...` sets RANK/WORLD_SIZE/MASTER_ADDR/...;
- submitit (hydra/launcher=slurm_*): each SLURM task exports the same variables from its job environment
  (submitit.helpers.TorchDistributedEnvironment), so `tasks_per_node` x `nodes` processes join one group;
- plain `srun python -m es_repro ...`, a step of several tasks: the ranks come from SLURM_PROCID,
  SLURM_STEP_NUM_TASKS, SLURM_LOCALID and the rendezvous from the step's first node (slurm_env). Across nodes gloo picks
  a network interface by the host name; where that resolves to the wrong one, name it: GLOO_SOCKET_IFNAME=ib0.

The group uses gloo even on GPUs: a generation sends N floats, so NCCL would buy nothing, and gloo works on
CPU-only test machines and across nodes alike. Each CUDA process binds the devices of its local rank
(device_group): with more processes on a node than device groups, several processes share a GPU, i.e. several
members are in flight on it (`torchrun --nproc_per_node=4` on a 1-GPU node).
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Callable, Sequence, TypeVar

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


def slurm_env(env: dict) -> dict:
    """torch.distributed's variables for one task of a plain srun step of several tasks, from SLURM's own; {} when
    another launcher already set RANK, outside an srun step (a batch script's own shell is no task of a group),
    or for a step of one task."""
    if "RANK" in env or "SLURM_PROCID" not in env or int(env.get("SLURM_STEP_NUM_TASKS", "1")) <= 1:
        return {}
    per_node = expand_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", env["SLURM_STEP_NUM_TASKS"]))
    node = int(env.get("SLURM_NODEID", "0"))
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_STEP_NUM_TASKS"],
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"), "LOCAL_WORLD_SIZE": str(per_node[min(node, len(per_node) - 1)]),
            "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(env.get("SLURM_STEP_NODELIST", "localhost")),
            # one port per job and step, so two steps sharing a first node do not meet at one rendezvous
            "MASTER_PORT": env.get("MASTER_PORT") or str(20000 + (int(env.get("SLURM_JOB_ID", "0")) * 7
                                                                 + int(env.get("SLURM_STEP_ID", "0"))) % 20000)}


def expand_tasks_per_node(spec: str) -> list[int]:
    """SLURM_STEP_TASKS_PER_NODE ("2(x3),1") as one count per node ([2, 2, 2, 1])."""
    out = []
    for part in spec.split(","):
        count, _, times = part.partition("(x")
        out += [int(count)] * (int(times.rstrip(")")) if times else 1)
    return out


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list ("gpu[07-09,12],cpu1" -> "gpu07")."""
    depth = 0
    for i, char in enumerate(nodelist):
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            nodelist = nodelist[:i]
            break
    if "[" not in nodelist:
        return nodelist
    prefix, ranges = nodelist.split("[", 1)
    return prefix + ranges.split(",")[0].split("-")[0].rstrip("]")


def _export_slurm_env() -> None:
    os.environ.update(slurm_env(dict(os.environ)))


def device_group(local_rank: int, local_world: int, device_count: int, per_process: int = 1) -> tuple[list[int], int]:
    """(the node's devices this process uses, how many of the node's processes use them).

    The node's devices split into device_count // per_process groups of per_process consecutive devices
    (per_process > 1: one tensor-parallel engine spans a group); local rank r takes group r % groups. Launching
    more processes than groups puts several on one group: their engines then split its memory.
    """
    if device_count < per_process:
        raise ValueError(f"each process needs {per_process} devices (generation.vllm.tensor_parallel_size) but "
                         f"this node has {device_count}")
    groups = device_count // per_process
    group = local_rank % groups
    return list(range(group * per_process, (group + 1) * per_process)), len(range(group, local_world, groups))


def local_device_group(per_process: int = 1) -> tuple[list[int], int]:
    """device_group for this process, from LOCAL_RANK/LOCAL_WORLD_SIZE (torchrun, submitit) and the visible GPUs;
    on a CPU-only machine the node counts as one device that every local process shares."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if not torch.cuda.is_available():
        return [], local_world
    return device_group(local_rank, local_world, torch.cuda.device_count(), per_process)


def device_ids(devices: list[int]) -> tuple[str, ...]:
    """Identities of this process's devices that mean the same in every process (CUDA_VISIBLE_DEVICES renumbers
    GPUs per process: SLURM's --gpus-per-task gives each task a "GPU 0"); ("cpu",) on a CPU machine, where the node
    counts as one device."""
    if not devices:
        return ("cpu",)
    return tuple(str(torch.cuda.get_device_properties(d).uuid) for d in devices)


def sharing(facts: Sequence[tuple], rank: int) -> tuple[int, int]:
    """(rank's turn among the processes on the same devices, how many there are), from every rank's
    (host, device ids)."""
    peers = [r for r, f in enumerate(facts) if tuple(f) == tuple(facts[rank])]
    return peers.index(rank), len(peers)


def placement(per_process: int = 1) -> tuple[list[int], int, int, int]:
    """(this process's devices, its turn among the processes sharing them, how many share them, the turns any
    group needs). With a process group the sharing is counted from every rank's (host, device ids), not from
    local ranks: with one GPU per SLURM task every process sees "GPU 0", yet none shares it."""
    devices, local_sharing = local_device_group(per_process)
    if not active():
        return devices, 0, local_sharing, 1
    facts = all_gather_objects((socket.gethostname(), device_ids(devices)))
    turn, count = sharing(facts, rank())
    return devices, turn, count, max(sharing(facts, r)[1] for r in range(len(facts)))


def in_turns(turn: int, turns: int, start: Callable[[], T]) -> T | None:
    """start() in this process's turn, every process stepping through ``turns`` barriers: engines that share a GPU
    start one after another (vLLM sizes its KV cache from the memory free while it profiles; an engine starting
    beside it would be charged to it, or make the profile fail)."""
    result = None
    for step in range(turns):
        if step == turn:
            result = start()
        barrier()
    return result


def init(devices_per_process: int = 1) -> bool:
    """Join the process group described by the environment; False (and no group) for a single process.
    On CUDA, bind the first device of this process's group (device_group).

    Safe to call again (a multirun in one process): the group is created once.
    """
    _export_submitit_env()
    _export_slurm_env()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        devices, _ = local_device_group(devices_per_process)
        if devices:
            torch.cuda.set_device(devices[0])
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


def all_gather_objects(obj: T) -> list[T]:
    """Every process's picklable ``obj`` (e.g. a dict of device facts), indexed by rank."""
    if not active():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def unshard(per_rank: list[list[T]], n: int) -> list[T]:
    """Inverse of shard: item i was evaluated by rank i % W as its (i // W)-th item."""
    world = len(per_rank)
    if sum(len(p) for p in per_rank) != n:
        raise ValueError(f"gathered {sum(len(p) for p in per_rank)} values for {n} items")
    return [per_rank[i % world][i // world] for i in range(n)]


def gather_sharded(local: Sequence[float], n: int) -> list[float]:
    """Values computed for shard(range(n)) on every process -> all n values in item order, on every process."""
    return unshard(all_gather_floats(local), n)


def gather_sharded_rows(local: Sequence[Sequence[float]], n: int, width: int) -> list[list[float]]:
    """gather_sharded for rows of ``width`` floats per item (a member's reward on each prompt)."""
    per_rank = all_gather_floats([x for row in local for x in row])
    rows = [[flat[j:j + width] for j in range(0, len(flat), width)] if width else [[] for _ in flat] for flat in per_rank]
    return unshard(rows, n)


def all_sum(value: float) -> float:
    """Sum of one scalar over the processes (e.g. generated tokens)."""
    return float(sum(v for vals in all_gather_floats([value]) for v in vals))


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
