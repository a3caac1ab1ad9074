"""Per-job limits of the reward sandbox, set from ``task.options.sandbox`` (a dict) and checked up front."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ISOLATIONS = ("auto", "bwrap", "unshare", "none")


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 2.0  # wall clock per job; the job's whole process tree is killed at this point
    cpu_s: float = 2.0  # RLIMIT_CPU per process (rounded up to whole seconds)
    memory_mb: int = 1024  # address space a job may add to the warm worker's own (RLIMIT_AS)
    file_mb: int = 8  # largest file a job may write (RLIMIT_FSIZE)
    processes: int = 32  # tasks (processes + threads) of the job's uid (RLIMIT_NPROC)
    open_files: int = 64  # RLIMIT_NOFILE
    output_kb: int = 256  # largest result a job may return; stdout/stderr go to /dev/null
    workers: int = 2  # warm worker processes scoring in parallel
    isolation: str = "auto"  # auto: bwrap, else unshare, else refuse (docs/sandbox.md) | bwrap | unshare | none

    def job_limits(self) -> dict:
        return {k: getattr(self, k) for k in ("timeout_s", "cpu_s", "memory_mb", "file_mb", "processes",
                                              "open_files", "output_kb")}


def sandbox_limits(options: dict | None, where: str = "task.options.sandbox") -> SandboxLimits:
    """SandboxLimits from a user dict; unknown keys and bad values fail naming the field and what is allowed."""
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(SandboxLimits)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"{where} {unknown} not accepted; allowed: {', '.join(fields)}")
    limits = SandboxLimits(**options)
    if limits.isolation not in ISOLATIONS:
        raise ValueError(f"{where}.isolation={limits.isolation!r} is not allowed; choose one of: {', '.join(ISOLATIONS)}")
    for name in ("timeout_s", "cpu_s"):
        if not 0 < float(getattr(limits, name)) <= 3600:
            raise ValueError(f"{where}.{name}={getattr(limits, name)} is not allowed; it must be in (0, 3600]")
    for name in ("memory_mb", "file_mb", "processes", "open_files", "output_kb"):
        if int(getattr(limits, name)) < 1:
            raise ValueError(f"{where}.{name}={getattr(limits, name)} is not allowed; it must be >= 1")
    if not 1 <= int(limits.workers) <= 16:
        raise ValueError(f"{where}.workers={limits.workers} is not allowed; it must be in 1..16")
    if int(limits.open_files) < 16:
        raise ValueError(f"{where}.open_files={limits.open_files} is not allowed; it must be >= 16 (the interpreter needs a few)")
    return limits
