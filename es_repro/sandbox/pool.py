"""A small pool of warm sandbox workers, driven from the training process.

SandboxPool.run(jobs) sends jobs to the workers in parallel (one thread per worker, each blocking on its own
pipe) and returns one JobResult per job, in order. A job that fails in any way (exception, timeout, a limit,
oversized result, the worker dying) comes back with ok=False and the caller scores 0; a worker that stops
answering is killed with its whole process tree and restarted on its next job.

Before any job, a probe job checks what a job can actually do at the chosen level (write to each world-writable
place, $HOME, the checkout and the training process's cwd; reach the training process's network port; see that
process or read its environment). A namespace level that allows any of it is not used, and ``isolation=auto``
never falls back to ``none``: SandboxRefused says, in one line, what to install or how to accept ``none``.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from es_repro.sandbox import launch
from es_repro.sandbox.launch import PACKAGE
from es_repro.sandbox.limits import SandboxLimits

START_TIMEOUT_S = 120.0  # worker start-up (imports and warm-up); generous for a loaded machine
REPLY_MARGIN_S = 3.0  # past a job's own wall clock before the worker itself is presumed stuck
_printed: set[str] = set()


@dataclass(frozen=True)
class JobResult:
    status: str  # ok | error:<Exception> | timeout | killed:<SIGNAL> | output_limit | no_result | worker_lost | bad_result
    value: Any = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class WorkerError(RuntimeError):
    """A worker could not start (the message carries its stderr)."""


class SandboxRefused(RuntimeError):
    """No level that keeps the host's files unwritten works here, and none was asked for (one-line message)."""


class Worker:
    """One warm worker process and its empty host working directory."""

    def __init__(self, level: str, index: int, limits: SandboxLimits, warm: list[dict]):
        self.level, self.index, self.limits, self.warm = level, index, limits, warm
        self.uid = launch.job_uid(index)
        self.proc: subprocess.Popen | None = None
        self.host_work: str | None = None
        self._buffer = b""

    # ----------------------------------------------------------------------------------------- life cycle
    def start(self) -> None:
        self.host_work = tempfile.mkdtemp(prefix="es-sandbox-")
        os.chmod(self.host_work, 0o711)  # a job uid may enter its own job directory, not list the others
        argv, _, work, confine = launch.worker_command(self.level, self.host_work)
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=dict(launch.WORKER_ENV), cwd=self.host_work, close_fds=True,
                                     start_new_session=True)
        self._buffer = b""
        config = {"job_uid": self.uid, "work_root": work, "warm": self.warm, "confine": confine}
        try:
            self.proc.stdin.write(json.dumps(config).encode() + b"\n")
            self.proc.stdin.flush()
            line = self._read_line(time.monotonic() + START_TIMEOUT_S, 4096)
        except OSError:
            line = None
        if line is None or json.loads(line).get("status") != "ready":
            error = self._stderr_tail()
            self.stop()
            raise WorkerError(f"sandbox worker ({self.level}) did not start: {error or 'no output'}")

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read()[-2000:].decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def stop(self) -> None:
        """Kill the worker and everything it started; remove its working directory."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # bwrap/unshare: their pid namespace dies with them
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            self._stderr.close()
            self.proc = None
            if self.uid is not None and self.level == "none":  # jobs are not in a pid namespace: kill the uid's
                subprocess.run(["kill", "-9", "-1"], user=self.uid, group=self.uid, extra_groups=[],
                               env=dict(launch.WORKER_ENV), stderr=subprocess.DEVNULL, check=False)
        if self.host_work is not None:
            shutil.rmtree(self.host_work, ignore_errors=True)
            self.host_work = None

    # ----------------------------------------------------------------------------------------- jobs
    def _read_line(self, deadline: float, cap: int) -> bytes | None:
        """One reply line, or None on EOF, past ``deadline`` or past ``cap`` bytes."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(self._buffer) > cap:
                return None
            if not select.select([fd], [], [], remaining)[0]:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def call(self, handler: str, args: dict) -> JobResult:
        if self.proc is None:
            self.start()
        start = time.monotonic()
        job = {"handler": handler, "args": args, "limits": self.limits.job_limits()}
        try:
            self.proc.stdin.write(json.dumps(job).encode() + b"\n")
            self.proc.stdin.flush()
            cap = 8 * self.limits.output_kb * 1024 + 65536
            line = self._read_line(start + self.limits.timeout_s + REPLY_MARGIN_S, cap)
        except OSError:
            line = None
        if line is None:
            self.stop()  # restarted by the next call
            return JobResult("worker_lost", None, time.monotonic() - start)
        return parse_reply(line)


def refusal(isolation: str, reasons: dict[str, str]) -> str:
    tried = "; ".join(f"{level}: {reason}" for level, reason in reasons.items())
    return (f"task.options.sandbox.isolation={isolation}: no isolation level that keeps model-written code from "
            f"writing the host's files works here ({tried}). Install bubblewrap (apt-get install bubblewrap), or "
            f"accept the weaker level explicitly with task.options.sandbox.isolation=none (jobs can then write "
            f"world-writable places such as /tmp and reach the network; run.json records a warning)")


def probe_places() -> dict[str, tuple[str, str]]:
    """{label: (a directory as a job names it, the same directory on the host)} for the probe's writes."""
    cwd, home = os.getcwd(), os.path.expanduser("~")
    places = {p: (p, p) for p in launch.world_writable_places()}
    places.update({"$HOME": (home, home), "checkout": (str(PACKAGE.parent),) * 2, "cwd": (cwd, cwd),
                   "/proc/<training pid>/cwd": (f"/proc/{os.getpid()}/cwd", cwd)})
    return places


def run_probe(worker: Worker) -> dict:
    """Run the probe job on ``worker``; its record with, per place, where the write landed: "host" (a file
    appeared on the host; removed here), "private" (the job wrote somewhere the host does not see) or the
    error the job got (EROFS, EACCES, ENOENT, ...). Raises WorkerError if the probe job itself failed."""
    places = probe_places()
    token = secrets.token_hex(6)
    names = {label: f".es-sandbox-probe-{token}-{i}" for i, label in enumerate(places)}  # cwd is two places
    files = {label: (os.path.join(job, names[label]), os.path.join(host, names[label]))
             for label, (job, host) in places.items()}
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    with open("/proc/self/environ", "rb") as f:
        environ_sha256 = hashlib.sha256(f.read()).hexdigest()
    training = {"pid": os.getpid(), "starttime": int(stat[stat.rindex(b")") + 2:].split()[19]),
                "environ_sha256": environ_sha256}
    with socket.socket() as server:  # listening, never accepted: a connection completes in the backlog
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        args = {"files": {label: job for label, (job, _) in files.items()}, "port": server.getsockname()[1],
                "training": training}
        try:
            result = worker.call("probe", args)
        finally:
            landed = {label for label, (_, host) in files.items() if os.path.lexists(host)}
            for label in landed:
                os.unlink(files[label][1])  # nothing of the probe stays on the host
    if not result.ok:
        raise WorkerError(f"sandbox worker ({worker.level}): the probe job failed: {result.status}")
    probe = dict(result.value)
    probe["writes"] = {label: "host" if label in landed else "private" if outcome == "written" else outcome
                       for label, outcome in probe["writes"].items()}
    return probe


def leaks(probe: dict) -> list[str]:
    """What a probe job could do that a namespace level must prevent, in words (empty: nothing)."""
    written = [label for label, where in probe["writes"].items() if where == "host"]
    found = [f"wrote to {', '.join(written)} on the host"] if written else []
    if probe["network"] == "reached":
        found.append("reached the training process's network port")
    if probe["interfaces"] != ["lo"]:
        found.append(f"saw network interfaces {probe['interfaces']}")
    if probe["training_process_visible"]:
        found.append("saw the training process")
    if probe["training_environ"] == "read":
        found.append("read the training process's environment")
    return found


def parse_reply(line: bytes) -> JobResult:
    """The worker's reply -> JobResult. The result text came from the job child: untrusted, size-capped JSON."""
    reply = json.loads(line)
    status, seconds = reply["status"], float(reply["seconds"])
    if status != "ok":
        return JobResult(status, None, seconds)
    try:
        payload = json.loads(reply["result"])
    except (ValueError, RecursionError):
        return JobResult("bad_result", None, seconds)
    if not isinstance(payload, dict):
        return JobResult("bad_result", None, seconds)
    if "error" in payload:
        return JobResult(f"error:{str(payload['error'])[:64]}", None, seconds)
    return JobResult("ok", payload.get("value"), seconds)


class SandboxPool:
    """``workers`` warm workers at the strongest isolation level that works (or the one asked for).

    warm: warm-up specs run once per worker before any job (see inside/handlers.py).
    isolation: a dict for run.json - the level, what it promises and what a probe job actually saw.
    """

    def __init__(self, limits: SandboxLimits, warm: list[dict] | tuple = ()):
        self.limits, self.warm = limits, list(warm)
        self._lock = threading.Lock()
        # auto: the namespace levels only; none runs only when asked for by name
        levels = ["bwrap", "unshare"] if limits.isolation == "auto" else [limits.isolation]
        reasons = {}
        for level in levels:
            if not launch.available(level):
                reasons[level] = "not installed"
                continue
            first = Worker(level, 0, limits, self.warm)
            try:
                first.start()
                probe = run_probe(first)
            except WorkerError as err:
                first.stop()
                reasons[level] = str(err).strip().splitlines()[-1][:300]  # the error line of the worker's stderr
                continue
            leaked = leaks(probe)
            if level != "none" and leaked:
                first.stop()
                reasons[level] = "a probe job " + ", ".join(leaked)
                continue
            self.level = level
            self.isolation = {**launch.describe(level, first.uid), "probe": probe}
            if level == "none":
                found = f"; a probe job {', '.join(leaked)}" if leaked else ""
                self.isolation["warning"] = ("isolation=none (asked for in task.options.sandbox.isolation): jobs run "
                                             f"without namespaces{found}")
            break
        else:
            raise SandboxRefused(refusal(limits.isolation, reasons))
        self.workers = [first] + [Worker(self.level, i, limits, self.warm) for i in range(1, limits.workers)]
        starting = [threading.Thread(target=w.start, daemon=True) for w in self.workers[1:]]  # warm-ups overlap
        for t in starting:
            t.start()
        for t in starting:
            t.join()
        # A worker that failed to start here is retried on its first job (Worker.call starts it).
        self.isolation["limits"] = {**limits.job_limits(), "workers": limits.workers}
        key = json.dumps({k: v for k, v in self.isolation.items() if k not in ("probe", "limits")}, sort_keys=True)
        if key not in _printed:  # once per process and kind of isolation
            _printed.add(key)
            print(f"[sandbox] isolation: {self.level} ({self.isolation['tool'] or 'no tool'}); network: "
                  f"{self.isolation['network']}; files: {self.isolation['filesystem']}; jobs run as "
                  f"{self.isolation['job_uid']}", flush=True)
            if self.level == "none":
                print(f"[sandbox] WARNING: {self.isolation['warning']}", flush=True)
        atexit.register(self.close)

    def run(self, jobs: list[tuple[str, dict]]) -> list[JobResult]:
        """Run (handler, args) jobs on the workers in parallel; results in job order."""
        results: list[JobResult | None] = [None] * len(jobs)
        with self._lock:
            if len(jobs) <= 1 or len(self.workers) == 1:
                for i, (handler, args) in enumerate(jobs):
                    results[i] = self._call(self.workers[0], handler, args)
                return results
            next_job = iter(range(len(jobs)))
            claim = threading.Lock()

            def drain(worker: Worker) -> None:
                while True:
                    with claim:
                        i = next(next_job, None)
                    if i is None:
                        return
                    results[i] = self._call(worker, *jobs[i])

            threads = [threading.Thread(target=drain, args=(w,), daemon=True) for w in self.workers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return results

    @staticmethod
    def _call(worker: Worker, handler: str, args: dict) -> JobResult:
        try:
            return worker.call(handler, args)
        except WorkerError as err:  # a restart failed: this job scores 0; the next call tries again
            return JobResult("worker_lost", str(err)[:200])

    def close(self) -> None:
        for worker in getattr(self, "workers", []):
            worker.stop()
