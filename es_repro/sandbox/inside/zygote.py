"""The warm worker: reads one JSON job per stdin line, runs each in a fresh forked child under hard limits, and
writes one JSON reply per line to stdout.

Why a fork server: importing sympy/math-verify/reasoning-gym costs 1-3 s, forking a warm interpreter ~ms, and a
fresh child per job means no job can leave state (monkeypatched checkers, threads, files) for the next one.

A job child: new session, stdin/stdout/stderr on /dev/null, every other fd closed but its result pipe,
rlimits (CPU, address space, file size, processes, open files, no core), no_new_privs, and - when the worker
runs as root - a uid of its own (``job_uid``), so it can neither signal nor trace this process and its process
count is its own; without a job uid (a user namespace's root) it keeps the uid but loses every capability.
After each job everything left of it is killed (see ``_kill_leftovers``) and the work root emptied (its
directory, and anything a job running as this process's uid put next to it).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
import os
import resource
import select
import shutil
import signal
import sys
import time

from . import confine, handlers

PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 36, 38, 24
_libc = ctypes.CDLL(None, use_errno=True)


def _vm_bytes() -> int:
    """This process's address-space size (VmSize): a job's memory limit is added on top of it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


class Zygote:
    def __init__(self, config: dict):
        if config.get("confine"):  # the unshare level: before warm-up and any job (confine.py)
            confine.apply(**config["confine"])
        self.job_uid = config.get("job_uid")  # None: jobs keep this process's uid (not root)
        self.work_root = config["work_root"]
        self.count = 0
        # Orphans of a job (daemonised grandchildren) are re-parented here, so they can be reaped.
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        handlers.warm(config.get("warm", []))
        gc.collect()
        gc.freeze()  # warm objects leave the collector's view: forked jobs do not copy their pages to scan them
        self.base_vm = _vm_bytes()

    # ----------------------------------------------------------------------------------------- one job
    def run(self, job: dict) -> dict:
        limits = job["limits"]
        self.count += 1
        workdir = os.path.join(self.work_root, f"job{self.count}")
        os.mkdir(workdir, 0o700)
        if self.job_uid is not None:
            os.chown(workdir, self.job_uid, self.job_uid)
        read_fd, write_fd = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the job child: never returns
            os.close(read_fd)
            self._child(job, limits, workdir, write_fd)
        os.close(write_fd)
        try:
            status, data = self._collect(pid, read_fd, limits, start)
        finally:
            os.close(read_fd)
            self._kill_leftovers(pid)
            for name in os.listdir(self.work_root):  # the job's dir, and anything a job that shares this
                path = os.path.join(self.work_root, name)  # process's uid (no root) put next to it
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        return {"status": status, "result": data.decode("utf-8", "replace") if status == "ok" else "",
                "seconds": round(time.monotonic() - start, 4)}

    def _child(self, job: dict, limits: dict, workdir: str, write_fd: int) -> None:
        code = 1
        try:
            os.setsid()  # own process group: the non-root fallback kills the group
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            keep = 100  # the result pipe moves to a fixed fd; everything else above stderr is closed
            os.dup2(write_fd, keep)
            os.closerange(3, keep)
            os.closerange(keep + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            self._limit(limits)
            _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid binaries
            if self.job_uid is not None:
                os.setgroups([])
                os.setresgid(self.job_uid, self.job_uid, self.job_uid)
                os.setresuid(self.job_uid, self.job_uid, self.job_uid)  # drops every capability too
            else:
                _drop_capabilities()  # root of a user namespace could otherwise remount the host's files writable
            os.chdir(workdir)
            os.environ.clear()
            os.environ.update({"HOME": workdir, "TMPDIR": workdir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
            try:
                payload = {"value": handlers.run(job["handler"], job.get("args", {}))}
            except BaseException as err:  # the job's own failure is a result (scored 0 by the caller)
                payload = {"error": type(err).__name__}
            out = json.dumps(payload).encode()
            view = memoryview(out)
            while view:
                view = view[os.write(keep, view):]
            code = 0
        finally:
            os._exit(code)

    def _limit(self, limits: dict) -> None:
        cpu = max(1, math.ceil(limits["cpu_s"]))
        memory = self.base_vm + int(limits["memory_mb"]) * 2**20
        for res, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, memory),
                           (resource.RLIMIT_FSIZE, int(limits["file_mb"]) * 2**20),
                           (resource.RLIMIT_NPROC, int(limits["processes"])),
                           (resource.RLIMIT_NOFILE, int(limits["open_files"])), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(res, (value, value))

    def _collect(self, pid: int, read_fd: int, limits: dict, start: float) -> tuple[str, bytes]:
        """Read the child's result until it has exited and its pipe is drained, the wall clock runs out, or the
        result grows past the cap. Returns (status, bytes)."""
        cap = int(limits["output_kb"]) * 1024
        deadline = start + float(limits["timeout_s"])
        chunks, size, exit_status, eof = [], 0, None, False
        pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None  # readable once the child exits
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout", b""
                if exit_status is None:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    exit_status = status if done else None
                if exit_status is not None and (eof or not select.select([read_fd], [], [], 0)[0]):
                    break  # exited, nothing left to read (a leftover descendant may still hold the pipe open)
                watch = ([] if eof else [read_fd]) + ([pidfd] if pidfd is not None and exit_status is None else [])
                ready, _, _ = select.select(watch, [], [], min(remaining, 0.05))
                if read_fd in ready:
                    chunk = os.read(read_fd, 65536)
                    eof = not chunk
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > cap:
                        return "output_limit", b""
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if os.WIFSIGNALED(exit_status):
            return f"killed:{signal.Signals(os.WTERMSIG(exit_status)).name}", b""
        data = b"".join(chunks)
        return ("ok", data) if data else ("no_result", b"")

    def _kill_leftovers(self, pid: int) -> None:
        """SIGKILL every process the job left behind and reap it. As a child subreaper this process inherits
        every orphan of the job (double forks and setsid included), so the job's leftovers are exactly our
        descendants: found in /proc, killed, reaped, again until no child is left (a fork bomb is bounded by
        RLIMIT_NPROC, so the rounds end). Bounded at ~2 s; the pool kills the whole worker past that."""
        for _ in range(2000):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                return  # no child, so no descendant either
            for other in _descendants(os.getpid()):
                try:
                    os.kill(other, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.001)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


def _drop_capabilities() -> None:
    """Empty this process's capability sets and bounding set (so no exec can bring them back). Nothing to do
    for an ordinary user; fails loudly (the job then scores 0) if capabilities are held and cannot be dropped."""
    with open("/proc/self/status") as f:
        held = any(line.startswith(("CapEff:", "CapPrm:")) and int(line.split()[1], 16) for line in f)
    if not held:
        return
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    data = (ctypes.c_uint32 * 6)()  # two (effective, permitted, inheritable) triples, all empty
    if _libc.capset(ctypes.byref(_CapHeader(0x20080522, 0)), data) != 0:  # _LINUX_CAPABILITY_VERSION_3
        raise OSError(ctypes.get_errno(), "capset")


def _descendants(root: int) -> list[int]:
    """Pids below ``root`` in the process tree, read from /proc/<pid>/stat (ppid is the 4th field)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])  # the command name may contain spaces and ')'
        children.setdefault(ppid, []).append(int(name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def main() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    zygote = Zygote(json.loads(stdin.readline()))
    stdout.write(b'{"status": "ready"}\n')
    stdout.flush()
    for line in stdin:  # EOF (the training process went away) ends the worker
        reply = zygote.run(json.loads(line))
        stdout.write(json.dumps(reply).encode() + b"\n")
        stdout.flush()


if __name__ == "__main__":
    main()
