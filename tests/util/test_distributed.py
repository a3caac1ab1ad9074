"""Population sharding over real torch.distributed (gloo, CPU processes): the result does not depend on the
number of processes, bit for bit, and a run resumes under a different number of processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from es_repro.run.log import RunLog
# Only light imports at module level: the spawned gloo workers below re-import this module.
from es_repro.util import distributed
from tests.helpers import TINY, assert_same_final_weights

REPO = Path(__file__).resolve().parents[2]
# N=7 on 2 processes: unequal shares (4 + 3); 24 generations with checkpoints every 7 leave a log tail to replay.
RUN = ["es.population=7", "es.generations=24", "checkpoint_every=7", "eval.kl_samples=0", "task.train_size=6"]


def _env() -> dict:
    # One thread per process everywhere (torchrun's default too), so float reductions match the reference.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cli(out_root: Path, nproc: int) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*(launcher if nproc > 1 else [sys.executable]), "-m", "es_repro", *TINY, *RUN, f"out_root={out_root}"]


def _run_dir(out_root: Path) -> Path:
    (run_dir,) = (out_root / "default").iterdir()
    return run_dir


@pytest.mark.parametrize("world,n", [(1, 5), (2, 7), (3, 7), (4, 4), (4, 2), (3, 30)])
def test_shard_then_unshard_restores_member_order(world, n, monkeypatch):
    """distributed.shard as each rank r of ``world`` calls it (its rank and world size patched in): the shares
    cover every item once, are as equal as they can be, and unshard puts them back in member order."""
    items = [f"m{i}" for i in range(n)]
    shares = []
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        shares.append(distributed.shard(items))
    assert sorted(x for s in shares for x in s) == sorted(items)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert distributed.unshard(shares, n) == items
    with pytest.raises(ValueError, match="gathered"):
        distributed.unshard([s[:-1] if s else s for s in shares], n)


@pytest.mark.parametrize("local_rank, local_world, count, per, expected", [
    (0, 1, 1, 1, ([0], 1)),        # one process, one GPU
    (3, 4, 1, 1, ([0], 4)),        # 4 processes on one GPU: 4 members in flight there
    (3, 4, 2, 1, ([1], 2)),        # 4 processes on 2 GPUs: rank 3 on GPU 1, shared with rank 1
    (1, 2, 4, 2, ([2, 3], 1)),     # tensor parallel 2 on 4 GPUs: rank 1 spans GPUs 2-3 alone
    (2, 3, 4, 2, ([0, 1], 2)),     # 3 TP-2 engines on 4 GPUs: rank 2 shares GPUs 0-1 with rank 0
    (0, 1, 3, 2, ([0, 1], 1)),     # an odd GPU left over is not used
])
def test_device_groups_by_local_rank(local_rank, local_world, count, per, expected):
    assert distributed.device_group(local_rank, local_world, count, per) == expected


def test_a_device_group_larger_than_the_node_is_refused():
    with pytest.raises(ValueError, match="needs 4 devices .*tensor_parallel_size.* has 2"):
        distributed.device_group(0, 1, 2, 4)


def test_single_process_helpers_are_no_ops():
    assert not distributed.active() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.is_main() and distributed.shard([1, 2, 3]) == [1, 2, 3]
    assert distributed.gather_sharded([0.5, 0.25], 2) == [0.5, 0.25] and distributed.all_sum(3.0) == 3.0


def _gather_worker(rank: int, world: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    assert distributed.init() and distributed.rank() == rank and distributed.world_size() == world
    n = 7
    values = [1 / 3 + i * 1e-12 + 1e-17 * rank for i in range(n)]  # float64 digits float32 would lose
    mine = distributed.shard(range(n))
    gathered = distributed.gather_sharded([values[i] for i in mine], n)
    total = distributed.all_sum(len(mine))
    rows = distributed.gather_sharded_rows([[i + j / 4 + 1e-17 * rank for j in range(3)] for i in mine], n, 3)
    distributed.barrier()
    out.joinpath(f"rank{rank}.txt").write_text(repr((mine, gathered, total, rows)))
    distributed.shutdown()


@pytest.mark.slow
def test_gloo_gather_reassembles_exact_floats_in_member_order(tmp_path):
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_gather_worker, args=(2, port, tmp_path), nprocs=2, join=True, start_method="spawn")
    (mine0, got0, total0, rows0), (mine1, got1, total1, rows1) = (
        eval(tmp_path.joinpath(f"rank{r}.txt").read_text()) for r in (0, 1))
    assert (mine0, mine1) == ([0, 2, 4, 6], [1, 3, 5])
    expected = [1 / 3 + i * 1e-12 + 1e-17 * (i % 2) for i in range(7)]  # member i came from rank i % 2
    assert got0 == got1 == expected and total0 == total1 == 7.0
    # per-prompt rewards (es.fitness_baseline=prompt): each member's row, in member order, on every rank
    assert rows0 == rows1 == [[i + j / 4 + 1e-17 * (i % 2) for j in range(3)] for i in range(7)]


@pytest.mark.slow
def test_two_processes_equal_one_process_bit_for_bit(tmp_path, reference):
    t0 = time.perf_counter()
    proc = subprocess.run(_cli(tmp_path, 2), capture_output=True, text=True, timeout=600, cwd=REPO, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = _run_dir(tmp_path)
    assert_same_final_weights(run_dir, reference)
    train, ref = RunLog(run_dir).records("train"), RunLog(reference).records("train")
    assert [r["generation"] for r in train] == list(range(1, 25))  # rank 0 alone logged, once per generation
    assert [r["rewards"] for r in train] == [r["rewards"] for r in ref]
    assert [r["update"] for r in train] == [r["update"] for r in ref]
    assert {r["processes"] for r in train} == {2} and {r["processes"] for r in ref} == {1}
    assert [r["tokens"] for r in train] == [r["tokens"] for r in ref]  # summed over both processes
    assert RunLog(run_dir).info()["launches"] == 1 and RunLog(run_dir).info()["status"] == "finished"
    print(f"2-process run: {time.perf_counter() - t0:.1f}s wall")


@pytest.mark.slow
def test_run_killed_in_one_process_resumes_in_two(tmp_path, reference):
    """Kill a 1-process run mid-way, resume it with 2 processes: every rank loads rank 0's checkpoint and
    replays its log; the final weights equal the uninterrupted run's."""
    proc = subprocess.Popen(_cli(tmp_path, 1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                            env=_env())
    deadline, logged = time.time() + 300, 0
    while time.time() < deadline and proc.poll() is None:
        metrics = list((tmp_path / "default").glob("*/metrics.jsonl")) if (tmp_path / "default").is_dir() else []
        logged = sum(1 for line in metrics[0].open() if '"train"' in line) if metrics else 0
        if logged >= 10:  # past the first checkpoint (7), with generations to replay
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = _run_dir(tmp_path)
    logged = len(RunLog(run_dir).records("train"))
    assert 10 <= logged < 24, f"the run must be killed mid-way for this test to mean anything ({logged} logged)"

    done = subprocess.run(_cli(tmp_path, 2), capture_output=True, text=True, timeout=600, cwd=REPO, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_final_weights(run_dir, reference)
    train = RunLog(run_dir).records("train")
    assert [r["generation"] for r in train] == list(range(1, 25))
    assert [r["processes"] for r in train] == [1] * logged + [2] * (24 - logged)
    assert RunLog(run_dir).info()["launches"] == 2


SRUN_STEP = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
             "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242",
             "SLURM_STEP_ID": "0"}


def test_a_plain_srun_step_gives_the_ranks_and_the_rendezvous():
    env = distributed.slurm_env(SRUN_STEP)
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "gpu07"}
    assert env["MASTER_PORT"] == str(20000 + (4242 * 7) % 20000)  # per job: two jobs on one node do not meet
    assert distributed.slurm_env({**SRUN_STEP, "SLURM_STEP_ID": "1"})["MASTER_PORT"] != env["MASTER_PORT"]


@pytest.mark.parametrize("env", [
    {**SRUN_STEP, "RANK": "0"},                                  # torchrun or submitit already set the ranks
    {k: v for k, v in SRUN_STEP.items() if not k.startswith("SLURM_STEP_")},  # a batch script's own shell
    {**SRUN_STEP, "SLURM_STEP_NUM_TASKS": "1"},                  # a step of one task
])
def test_no_slurm_ranks_where_another_launcher_or_no_task_group_is(env):
    assert distributed.slurm_env(env) == {}


@pytest.mark.parametrize("nodelist,first", [("gpu[07-09,12],cpu1", "gpu07"), ("node1,node2", "node1"),
                                            ("a[3]", "a3"), ("solo", "solo"), ("n[1-2],m[5-6]", "n1")])
def test_first_host_of_a_node_list(nodelist, first):
    assert distributed.first_host(nodelist) == first


def test_tasks_per_node_expands_repeats():
    assert distributed.expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert distributed.expand_tasks_per_node("4") == [4]


@pytest.mark.parametrize("facts, expected", [
    # one GPU per SLURM task: every process sees "GPU 0", but the UUIDs differ: nobody shares
    ([("n1", ("GPU-a",)), ("n1", ("GPU-b",)), ("n1", ("GPU-c",)), ("n1", ("GPU-d",))], [(0, 1)] * 4),
    # 4 processes on a 2-GPU node: two engines per GPU, started in turns 0 and 1
    ([("n1", ("GPU-a",)), ("n1", ("GPU-b",)), ("n1", ("GPU-a",)), ("n1", ("GPU-b",))], [(0, 2), (0, 2), (1, 2), (1, 2)]),
    # two nodes, CPU stand-ins: the node is the device, shared by its processes only
    ([("n1", ("cpu",)), ("n1", ("cpu",)), ("n2", ("cpu",)), ("n2", ("cpu",))], [(0, 2), (1, 2), (0, 2), (1, 2)]),
    # tensor parallel groups of two GPUs, one process each
    ([("n1", ("GPU-a", "GPU-b")), ("n1", ("GPU-c", "GPU-d"))], [(0, 1), (0, 1)]),
])
def test_sharing_is_counted_from_every_ranks_devices(facts, expected):
    assert [distributed.sharing(facts, r) for r in range(len(facts))] == expected


def _turns_worker(rank: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE="2")
    distributed.init()
    devices, turn, count, turns = distributed.placement()

    def start():
        t0 = time.monotonic()
        time.sleep(0.5)  # an engine profiling the memory it may take
        return (t0, time.monotonic())

    span = distributed.in_turns(turn, turns, start)
    out.joinpath(f"rank{rank}.txt").write_text(repr((devices, turn, count, turns, span)))
    distributed.shutdown()


@pytest.mark.slow
def test_processes_sharing_a_device_start_their_engines_one_after_another(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_turns_worker, args=(port, tmp_path), nprocs=2, join=True, start_method="spawn")
    (dev0, turn0, count0, turns0, span0), (dev1, turn1, count1, turns1, span1) = (
        eval(tmp_path.joinpath(f"rank{r}.txt").read_text()) for r in (0, 1))
    assert (dev0, turn0, count0, turns0) == ([], 0, 2, 2) and (dev1, turn1, count1, turns1) == ([], 1, 2, 2)
    assert span0[1] <= span1[0]  # rank 1's engine started after rank 0's had finished starting
