"""How a sandbox worker process is started at each isolation level (strongest first):

bwrap    bubblewrap (Debian package ``bubblewrap``): new network, pid, ipc and uts namespaces; a fresh mount
         namespace holding only read-only system directories (/usr, /etc, /lib*), the Python installation and
         the sandbox's own code, a read-only tmpfs /tmp, a minimal read-only /dev and the worker's empty working
         directory (the only writable place); no $HOME, no /work, no /var, no /sys. The worker exits when its
         stdin closes (the training process went away); its pid namespace, and every job process in it, dies
         with it.
unshare  util-linux ``unshare``: new network, pid, ipc, uts and mount namespaces (fresh /proc). In its mount
         namespace the worker makes the whole host tree read-only and covers every world-writable place (/tmp,
         /var/tmp, /dev/shm and any other world-writable mount) and $HOME with an empty read-only tmpfs before
         anything else runs (inside/confine.py; a Python or checkout below them is bound back read-only): other
         host files stay readable as the job's uid allows, none is writable; the only writable place is the
         worker's work directory. Needs Linux >= 5.12 (mount_setattr).
none     rlimits, a fresh session and the job uid only: the network, the other processes and every place the job's
         uid may write (world-writable /tmp, /var/tmp, /dev/shm, ...) stay reachable. Never chosen by
         ``isolation=auto``; only when asked for by name (pool.py records a warning).

When the training process is root, every job runs under a uid of its worker's own (``job_uid``): it cannot
signal or trace the worker, setuid binaries cannot raise it (no_new_privs), and RLIMIT_NPROC (which the
kernel never applies to root) bounds fork bombs. Without root, bwrap/unshare map the user into a user
namespace and jobs keep the worker's uid.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

LEVELS = ("bwrap", "unshare", "none")
UID_BASE = 1_500_000_000  # far above any real account; + (pid mod 2**22) * 16 + worker index
INSIDE_ROOT = "/opt/es-repro"  # where bwrap shows the sandbox code
WORK_INSIDE = "/tmp/work"
# The worker's whole environment: nothing of the training process's (tokens, paths, proxies) is passed on.
WORKER_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}
PACKAGE = Path(__file__).resolve().parents[1]  # .../es_repro


def job_uid(index: int) -> int | None:
    """The uid jobs of worker ``index`` run under (root only; None: jobs keep the worker's uid)."""
    return UID_BASE + (os.getpid() % 2**22) * 16 + index if os.geteuid() == 0 else None


def available(level: str) -> bool:
    return level == "none" or shutil.which(level) is not None


def world_writable_places() -> list[str]:
    """/tmp, /var/tmp, /dev/shm and every other world-writable mount point: where any uid may create files."""
    places = ["/tmp", "/var/tmp", "/dev/shm"]
    try:
        with open("/proc/self/mountinfo") as f:
            # field 5 is the mount point, with space, tab, newline and backslash written as octal escapes
            points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4]) for line in f]
    except OSError:
        points = []
    for point in points:
        try:
            writable = os.stat(point).st_mode & 0o002 and not os.path.islink(point)
        except OSError:
            continue
        if writable and point not in places and point != "/" and not point.startswith(("/proc/", "/sys/")):
            places.append(point)
    return [p for p in places if os.path.isdir(p)]


def _home() -> list[str]:
    """The training user's home, hidden at the unshare level like the world-writable places (tokens, keys and
    caches there are readable by a job that keeps the user's uid); never "/"."""
    home = os.path.realpath(os.path.expanduser("~"))
    return [home] if home != "/" and os.path.isdir(home) else []


def tool_version(level: str) -> str:
    if level == "none":
        return ""
    try:
        out = subprocess.run([level, "--version"], capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown version"


def _python_dirs() -> list[str]:
    """The interpreter and its libraries (venv and base installation), outermost directories only."""
    dirs = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    dirs |= {p for p in (sys.prefix, sys.base_prefix) if os.path.isdir(p)}  # the venv path as the executable names it
    dirs.add(os.path.dirname(os.path.realpath(sys.executable)))
    return sorted(d for d in dirs if not any(d != o and d.startswith(o.rstrip("/") + "/") for o in dirs))


def _bwrap_args(host_work: str) -> list[str]:
    # No --die-with-parent: its death signal follows the THREAD that started bwrap (pool threads come and go).
    # A worker ends on EOF on its stdin instead, i.e. when the training process goes away.
    args = ["bwrap", "--new-session", "--unshare-net", "--unshare-pid", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    if os.geteuid() != 0:
        args.append("--unshare-user")
    # The tmpfs /tmp first: bwrap applies mounts in order, so a later tmpfs would hide a Python (venv, checkout)
    # that lives under /tmp and the worker would not start (the pool then falls back to a weaker level).
    args += ["--tmpfs", "/tmp"]
    for d in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    made: set[str] = set()

    def ro_bind(source: str, dest: str) -> None:
        # bwrap creates missing parents of a mount point as 0700 dirs, which a job uid could not traverse (its
        # imports would fail): create them 0755 first.
        for parent in reversed(Path(dest).parents[:-1]):
            if str(parent) not in made:
                made.add(str(parent))
                args.extend(["--perms", "0755", "--dir", str(parent)])
        args.extend(["--ro-bind", source, dest])

    for d in _python_dirs():
        ro_bind(d, d)
    code = f"{INSIDE_ROOT}/es_repro"
    ro_bind(str(PACKAGE / "__init__.py"), f"{code}/__init__.py")
    ro_bind(str(PACKAGE / "sandbox"), f"{code}/sandbox")
    args += ["--proc", "/proc", "--dev", "/dev", "--bind", host_work, WORK_INSIDE]
    # The new root, /tmp and /dev (with /dev/shm) are tmpfs mounts that a job running as the user who started
    # bwrap (no root: no job uid) could write: read-only, each alone (the work dir stays writable).
    args += ["--remount-ro", "/", "--remount-ro", "/tmp", "--remount-ro", "/dev", "--chdir", WORK_INSIDE]
    return args


def worker_command(level: str, host_work: str) -> tuple[list[str], str, str, dict | None]:
    """(argv, the path of es_repro's parent dir as the worker sees it, the work directory as it sees it, the
    file-system confinement the worker applies to itself before anything else (inside/confine.py) or None)."""
    confine = None
    if level == "bwrap":
        prefix, root, work = _bwrap_args(host_work), INSIDE_ROOT, WORK_INSIDE
    elif level == "unshare":
        # --mount makes the new namespace's mounts private (no propagation to or from the host)
        prefix = ["unshare", "--net", "--pid", "--ipc", "--uts", "--mount", "--fork", "--kill-child", "--mount-proc"]
        if os.geteuid() != 0:
            prefix.append("--map-root-user")
        prefix.append("--")
        root, work = str(PACKAGE.parent), WORK_INSIDE
        confine = {"tmpfs": world_writable_places() + _home(), "keep": _python_dirs() + [root],
                   "host_work": host_work, "work": work}
    elif level == "none":
        prefix, root, work = [], str(PACKAGE.parent), host_work
    else:
        raise ValueError(f"isolation level {level!r} is unknown; choose one of: {', '.join(LEVELS)}")
    if prefix:
        prefix[0] = shutil.which(prefix[0]) or prefix[0]  # the tool available() found, not one on the worker's PATH
    boot = f"import sys; sys.path.insert(0, {root!r}); from es_repro.sandbox.inside.zygote import main; main()"
    # -I: ignore PYTHON* variables, the user site and the current directory; -B: write no .pyc files
    return prefix + [sys.executable, "-I", "-B", "-c", boot], root, work, confine


def describe(level: str, uid: int | None) -> dict:
    """What a level promises (the probe result is added by the pool: what the job actually saw)."""
    return {
        "level": level,
        "tool": tool_version(level),
        "network": "own namespace (loopback only)" if level != "none" else "host network (NOT isolated)",
        "pid_namespace": level != "none",
        "filesystem": {"bwrap": "read-only /usr /etc /lib* + Python; read-only tmpfs /tmp; empty work dir",
                       "unshare": "host file system read-only (readable as the job uid may); empty read-only tmpfs "
                                  "on /tmp, /var/tmp, /dev/shm, other world-writable mounts and $HOME; empty work dir",
                       "none": "host file system (NOT isolated: the job uid may write world-writable places)"}[level],
        "job_uid": "a uid per worker (>= %d)" % UID_BASE if uid is not None else "the training process's uid",
    }
