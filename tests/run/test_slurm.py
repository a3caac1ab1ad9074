"""ES on a real single-node SLURM cluster (scripts/slurm_local.sh: munge + slurmctld + slurmd on this machine),
launched through hydra-submitit-launcher's presets in conf/hydra/launcher/.

- a multirun sweep (2 configs x 2 seeds) becomes one job array; every run directory finishes;
- a 2-task job (two gloo processes sharing the population) ends with the single-process run's weights, bit for bit;
- a job requeued twice mid-run, first by the cluster (`scontrol requeue`), then by submitit's own time-out /
  preemption handler (SIGUSR2 -> the launcher's checkpoint hook -> `scontrol requeue`), resumes each time in
  the same run directory: generations continue, and the final weights equal the uninterrupted run's.

The cluster is started once per session (and stopped afterwards) unless one is already up. Without the SLURM
binaries these tests skip, except under CI=true, where they fail: CI must install them (.ci/run does).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from es_repro.run.log import RunLog
from tests.helpers import TINY, assert_same_final_weights, missing_tool

pytestmark = pytest.mark.slow  # end-to-end: a real single-node SLURM cluster
REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm_local.sh"
SLURM_DIR = Path(os.environ.get("ES_SLURM_DIR", "/tmp/es-repro-slurm"))
BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "srun", "scontrol", "squeue")
# The run shared by the 2-task test and the requeue test (and its single-process reference).
G = 60
RUN = ["es.population=6", f"es.generations={G}", "checkpoint_every=7", "eval.kl_samples=0"]


def _have(binary: str) -> bool:
    return shutil.which(binary) is not None or any(Path(d, binary).exists() for d in ("/usr/sbin", "/usr/bin"))


@pytest.fixture(scope="session")
def slurm() -> dict:
    """Environment for SLURM clients (SLURM_CONF) of a running local cluster."""
    missing = [b for b in BINARIES if not _have(b)]
    if missing:
        message = (f"SLURM is not installed ({', '.join(missing)} missing); "
                   "install it with: apt-get install -y slurmctld slurmd munge")
        missing_tool(message)
    env = {**os.environ, "ES_SLURM_DIR": str(SLURM_DIR), "SLURM_CONF": str(SLURM_DIR / "slurm.conf"),
           "ES_SLURM_NO_INSTALL": "1"}
    already_up = subprocess.run([str(SCRIPT), "status"], env=env, capture_output=True).returncode == 0
    if not already_up:
        t0 = time.perf_counter()
        start = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=180)
        assert start.returncode == 0, f"scripts/slurm_local.sh start failed:\n{start.stdout}\n{start.stderr}"
        print(f"\n[slurm] cluster started in {time.perf_counter() - t0:.1f}s")
    yield env
    if not already_up:  # leave a cluster someone else started running
        stop = subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, f"scripts/slurm_local.sh stop failed:\n{stop.stdout}\n{stop.stderr}"
        for pidfile in ("slurmctld.pid", "slurmd.pid", "munge/munged.pid"):
            assert not (SLURM_DIR / pidfile).exists(), f"{pidfile} left behind: a daemon did not stop"


def _multirun(out_root: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "es_repro", "-m", "hydra/launcher=slurm_cpu", *TINY, *overrides,
            f"out_root={out_root}"]


def _jobcomp(array_job: str) -> list[dict]:
    """The cluster's job-completion records (log/jobcomp.log) of one job array."""
    records = []
    for line in (SLURM_DIR / "log" / "jobcomp.log").read_text().splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields.get("ArrayJobId") == array_job:
            records.append(fields)
    return records


def _sh(args: list[str], env: dict) -> str:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=True).stdout.strip()


def _job_ids(submitit_dir: Path) -> list[str]:
    """SLURM job ids of a sweep's submitit job folders: JOB for a single run, ARRAY_TASK for each run of an array."""
    if not submitit_dir.is_dir():
        return []
    names = [p.name for p in submitit_dir.iterdir() if p.is_dir() and re.fullmatch(r"\d+(_\d+)?", p.name)]
    tasks = [n for n in names if "_" in n]
    return sorted(tasks or names)


def _wait_gone_from_queue(job: str, env: dict) -> None:
    """submitit returns once every task wrote its result; the processes may still be exiting."""
    def gone() -> bool:  # squeue exits 1 once the controller has forgotten the job
        listed = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], env=env, capture_output=True, text=True)
        return listed.returncode != 0 or not listed.stdout.strip()

    _wait(gone, f"job {job} to leave the queue", 120)


def _sweep_module():
    sys.path.insert(0, str(REPO / "sweeps"))
    import _sweep

    return _sweep


def test_sweep_through_the_slurm_launcher_then_filling_a_gap(slurm, tmp_path, monkeypatch, capsys):
    """2 sigmas x 2 seeds through sweeps/_sweep.py and the slurm_cpu preset: one array of four 1-CPU jobs, two at
    a time; every run directory finishes. Then one run is lost: the sweep sees the gap and refills only it."""
    _sweep = _sweep_module()
    grid = [*TINY, "es.sigma=0.03,0.05", "seed=0,1"]
    sweep = {"paper": lambda methods: [_sweep.Grid("tiny ES", grid)]}
    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the in-process (basic launcher) refill below, as the SLURM jobs

    def run_sweep(*args: str) -> int:
        return _sweep.main("test sweep", ["es"], sweep, {"paper": "slurm_cpu"}, [*args, f"out_root={tmp_path}"])

    t0 = time.perf_counter()
    assert run_sweep() == 0
    wall = time.perf_counter() - t0
    run_dirs = sorted(p for p in (tmp_path / "default").iterdir() if p.is_dir() and p.name.startswith("es."))
    names = [dict(kv.split("=", 1) for kv in p.name.split(",")) for p in run_dirs]
    assert [(n["es.sigma"], n["seed"]) for n in names] == [("0.03", "0"), ("0.03", "1"), ("0.05", "0"), ("0.05", "1")]
    for run_dir in run_dirs:
        log = RunLog(run_dir)
        assert log.info()["status"] == "finished" and log.info()["launches"] == 1, run_dir
        assert [r["generation"] for r in log.records("train")] == [1, 2, 3, 4]
    (array_job,) = {name.split("_")[0] for name in _job_ids(tmp_path / "default" / ".submitit")}
    _wait_gone_from_queue(array_job, slurm)
    tasks = _jobcomp(array_job)
    assert sorted(t["ArrayTaskId"] for t in tasks) == ["0", "1", "2", "3"], tasks
    assert {t["JobState"] for t in tasks} == {"COMPLETED"} and {t["ProcCnt"] for t in tasks} == {"1"}
    spans = [(t["StartTime"], t["EndTime"]) for t in tasks]  # ISO times compare as strings
    assert any(a[0] <= b[0] < a[1] for a in spans for b in spans if a is not b), f"no two tasks overlapped: {spans}"
    print(f"\n[slurm] 4-run sweep: {wall:.1f}s wall; array {array_job}: {spans}")

    shutil.rmtree(run_dirs[1])
    capsys.readouterr()
    assert run_sweep("--status") == 0
    assert "4 runs: 3 finished, 0 started, 1 missing" in capsys.readouterr().out
    assert run_sweep("--launcher", "basic") == 0  # in turn, here: three runs skip, one runs
    for run_dir in run_dirs:
        assert RunLog(run_dir).info()["status"] == "finished" and RunLog(run_dir).info()["launches"] == 1, run_dir
    capsys.readouterr()
    assert run_sweep() == 0 and "nothing to launch: every run is finished" in capsys.readouterr().out


def test_two_task_job_equals_single_process_run(slurm, tmp_path, reference):
    t0 = time.perf_counter()
    proc = subprocess.run(_multirun(tmp_path, [*RUN, "hydra.launcher.tasks_per_node=2"]), env=slurm,
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run_dir,) = [p for p in (tmp_path / "default").iterdir() if p.is_dir() and p.name.startswith("es.")]
    assert_same_final_weights(run_dir, reference)
    train = RunLog(run_dir).records("train")
    assert [r["generation"] for r in train] == list(range(1, G + 1))
    assert {r["processes"] for r in train} == {2}
    assert [r["rewards"] for r in train] == [r["rewards"] for r in RunLog(reference).records("train")]
    (job,) = _job_ids(tmp_path / "default" / ".submitit")
    assert (tmp_path / "default" / ".submitit" / job / f"{job}_1_log.out").is_file(), "no second task ran"
    _wait_gone_from_queue(job, slurm)
    print(f"\n[slurm] 2-task job: {time.perf_counter() - t0:.1f}s wall")


def test_a_plain_srun_of_two_tasks_equals_single_process_run(slurm, tmp_path, reference):
    """No torchrun, no submitit: `srun -n 2 python -m es_repro ...` takes its ranks from SLURM_PROCID and
    SLURM_STEP_NUM_TASKS (distributed.slurm_env); without them each task would train the whole run alone."""
    env = {k: v for k, v in slurm.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    cmd = ["srun", "--ntasks=2", "--cpus-per-task=1", "--export=ALL,OMP_NUM_THREADS=1", sys.executable, "-m",
           "es_repro", *TINY, *RUN, f"out_root={tmp_path}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run_dir,) = [p for p in (tmp_path / "default").iterdir() if p.is_dir()]
    assert_same_final_weights(run_dir, reference)
    train = RunLog(run_dir).records("train")
    assert [r["generation"] for r in train] == list(range(1, G + 1)) and {r["processes"] for r in train} == {2}
    assert RunLog(run_dir).info()["noise"]["ranks"][1]["fingerprint"] == RunLog(run_dir).info()["noise"]["fingerprint"]


def _train_count(metrics: Path) -> int:
    """Complete train lines of metrics.jsonl (a torn last line is not counted, as resume drops it)."""
    if not metrics.is_file():
        return 0
    return sum(1 for line in metrics.open() if line.endswith("\n") and '"kind": "train"' in line)


def _wait(condition, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _requeue(job: str, env: dict) -> None:
    """`scontrol requeue JOB`, then SIGKILL for the job's task processes at once. slurmd itself sends SIGTERM
    (which submitit ignores: it checkpoints on SIGUSR2) and SIGKILL only max(KillWait, 5) s later; a fast machine
    could finish this short run in that time, leaving nothing to resume."""
    listing = _sh(["scontrol", "listpids", job], env).splitlines()[1:]  # PID JOBID STEPID LOCALID GLOBALID
    tasks = [int(row.split()[0]) for row in listing if row.split()[2] != "batch"]  # the srun step: ES processes
    assert tasks, f"no task processes listed for job {job}: {listing}"
    _sh(["scontrol", "requeue", job], env)
    for pid in tasks:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _release_when_requeued(job: str, metrics: Path, env: dict) -> tuple[int, float]:
    """Wait until the requeued job is PENDING again (its processes are gone), then let it start now: SLURM
    holds a requeued job back for about two minutes (BeginTime). Returns (generations logged, release time)."""
    def pending():
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=env, capture_output=True, text=True)
        assert "COMPLETED" not in state.stdout and (state.stdout.strip() or _train_count(metrics) < G), \
            "the job finished before it could be requeued; the run is too short for this machine"
        return state.stdout.strip() == "PENDING"

    _wait(pending, f"job {job} to be requeued (PENDING)", timeout=120)
    # slurmctld revokes the job's old launch credential with one-second resolution: a restart allocated within
    # the same second as the requeue gets a credential that counts as revoked too, and the job is killed
    # ("Killing non-startable batch JobId=...: Job credential revoked" in slurmctld.log; seen in full-suite runs).
    time.sleep(2)
    logged = _train_count(metrics)
    released = time.time()
    _sh(["scontrol", "update", f"jobid={job}", "StartTime=now"], env)
    return logged, released


def test_requeued_job_resumes_in_its_run_directory(slurm, tmp_path, reference):
    t0 = time.perf_counter()
    log_file = (tmp_path / "multirun.log").open("w")  # a file, not a pipe: nobody reads it while the job runs
    proc = subprocess.Popen(_multirun(tmp_path, [*RUN, "hydra.launcher.tasks_per_node=2"]), env=slurm, cwd=REPO,
                            stdout=log_file, stderr=subprocess.STDOUT)
    submitit_dir, job = tmp_path / "default" / ".submitit", None
    try:
        job = _wait(lambda: next(iter(_job_ids(submitit_dir)), None), "the job to be submitted")
        run_dir = _wait(lambda: next((p for p in (tmp_path / "default").iterdir() if p.name.startswith("es.")), None),
                        "the run directory")
        metrics = run_dir / "metrics.jsonl"
        _wait(lambda: _train_count(metrics) >= 10, "10 generations")  # past the first checkpoint (7)

        _requeue(job, slurm)  # what an admin does (and SLURM itself after a node failure)
        first, released1 = _release_when_requeued(job, metrics, slurm)
        _wait(lambda: _train_count(metrics) >= first + 10, "10 more generations after the first requeue")

        # submitit's path for time-outs and preemption: SIGUSR2 -> the launcher's checkpoint() -> scontrol requeue
        _sh(["scancel", "--signal=USR2", job], slurm)
        second, released2 = _release_when_requeued(job, metrics, slurm)
        assert proc.wait(timeout=600) == 0, (tmp_path / "multirun.log").read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            if job:
                subprocess.run(["scancel", job], env=slurm)
        log_file.close()

    assert 10 <= first < second < G, (first, second)
    log = RunLog(run_dir)
    assert log.info()["launches"] == 3 and log.info()["status"] == "finished"
    train = log.records("train")
    assert [r["generation"] for r in train] == list(range(1, G + 1))  # numbering continues, nothing repeated
    # generations up to each requeue were written before it and kept; the rest came after the release
    assert all(r["wall"] < released1 for r in train[:first]) and all(r["wall"] > released1 for r in train[first:])
    assert all(r["wall"] < released2 for r in train[:second]) and all(r["wall"] > released2 for r in train[second:])
    assert_same_final_weights(run_dir, reference)
    # what the cluster and submitit recorded
    assert "Restarts=2" in _sh(["scontrol", "show", "job", job], slurm)
    _wait_gone_from_queue(job, slurm)
    task0 = (submitit_dir / job / f"{job}_0_log.err").read_text()
    assert task0.count("DUE TO JOB REQUEUE") >= 2 and "Caught signal SIGUSR2" in task0
    print(f"\n[slurm] requeued at generations {first} and {second} of {G}; {time.perf_counter() - t0:.1f}s wall")


def test_every_sweep_profile_composes_into_the_expected_runs():
    """The sweep scripts' grids compose against conf/ (no SLURM needed), with the paper's numbers of runs."""
    _sweep_module()
    import conciseness_kl
    import stability
    import table1

    expected = {
        (table1, "paper"): [7, 84],  # ES per model; PPO, GRPO 30, GRPO 8 x KL {1e-3, 5e-3} x lr {1e-6, 1e-5}
        (table1, "cpu"): [1, 3],
        (conciseness_kl, "paper"): [4, 4, 4, 44],  # 3 sigmas x 4 seeds; 11 betas x 4 seeds
        (conciseness_kl, "cpu"): [4, 4, 4, 16],
        (stability, "paper"): [1, 3, 1, 3],
        (stability, "cpu"): [4, 4],
    }
    _sweep = sys.modules["_sweep"]
    planned = {}
    for (module, profile), counts in expected.items():
        grids = getattr(module, profile)(module.METHODS)
        _sweep.plan(grids, [])
        assert [g.error for g in grids] == [""] * len(grids), [g.error for g in grids]
        assert [len(g.runs) for g in grids] == counts, (module.__name__, profile)
        planned[module.__name__, profile] = grids
    # stability's seed-0 runs are Table 1's runs (the same directories), and its cpu runs are conciseness_kl's
    table1_dirs = {d for g in planned["table1", "paper"] for _, d in g.runs}
    seed0 = [d for g in planned["stability", "paper"] if "seed 0" in g.name for _, d in g.runs]
    assert len(seed0) == 2 and set(seed0) <= table1_dirs
    concise_dirs = {d for g in planned["conciseness_kl", "cpu"] for _, d in g.runs}
    assert {d for g in planned["stability", "cpu"] for _, d in g.runs} <= concise_dirs
    # ES's alpha follows sigma in every Conciseness run
    for grid in planned["conciseness_kl", "paper"][:3]:
        for job, _ in grid.runs:
            values = dict(o.split("=", 1) for o in job)
            assert float(values["es.alpha"]) == float(values["es.sigma"]) / 2
