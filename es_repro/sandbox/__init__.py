"""Reward sandbox: model-derived code and scorers that parse model text run here, in worker processes under
hard limits, never in the training process. See launch.py (isolation levels), pool.py (warm workers, the
training-process side), inside/ (the code that runs in the worker) and docs/sandbox.md."""
from es_repro.sandbox.limits import ISOLATIONS, SandboxLimits, sandbox_limits
from es_repro.sandbox.pool import JobResult, SandboxPool, SandboxRefused, WorkerError

__all__ = ["ISOLATIONS", "JobResult", "SandboxLimits", "SandboxPool", "SandboxRefused", "WorkerError", "sandbox_limits"]
