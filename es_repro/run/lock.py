"""One writer per run directory: an exclusive flock on <run dir>/.lock, held for the whole run.

A second launch of the same command fails at once, naming the host and PID that hold the lock. The kernel
releases a flock when its holder dies (SIGKILL, OOM, a requeued SLURM job's old process), so a lock left by a
dead process never blocks a relaunch; on NFS, locks of a lost node are released when the server's lease ends.
Only the process that writes the run directory (rank 0) takes it.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from es_repro.util.errors import RunStateError

LOCK_FILE = ".lock"


class RunDirBusy(RunStateError):
    pass


@contextmanager
def run_lock(run_dir: Path):
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunDirBusy(f"{run_dir} is in use by {holder}; wait for it to finish or stop it "
                             f"(two launches of one run would write one log twice)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
