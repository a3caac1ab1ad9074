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

# Only light imports at module level: the spawned gloo workers below re-import this module.
from es_repro.run import distributed
from es_repro.run.log import RunLog
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
def test_shard_then_unshard_restores_member_order(world, n):
    items = [f"m{i}" for i in range(n)]
    shares = [items[r::world] for r in range(world)]  # what distributed.shard gives rank r
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
    distributed.barrier()
    out.joinpath(f"rank{rank}.txt").write_text(repr((mine, gathered, total)))
    distributed.shutdown()


@pytest.mark.slow
def test_gloo_gather_reassembles_exact_floats_in_member_order(tmp_path):
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_gather_worker, args=(2, port, tmp_path), nprocs=2, join=True, start_method="spawn")
    (mine0, got0, total0), (mine1, got1, total1) = (eval(tmp_path.joinpath(f"rank{r}.txt").read_text()) for r in (0, 1))
    assert (mine0, mine1) == ([0, 2, 4, 6], [1, 3, 5])
    expected = [1 / 3 + i * 1e-12 + 1e-17 * (i % 2) for i in range(7)]  # member i came from rank i % 2
    assert got0 == got1 == expected and total0 == total1 == 7.0


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
