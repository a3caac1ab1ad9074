"""Reward sandbox: model-derived code and scorers that parse model text run here, in worker processes under
hard limits, never in the training process. See launch.py (isolation levels), pool.py (warm workers, the
training-process side), inside/ (the code that runs in the worker) and README "Sandboxed rewards"."""
from es_repro.sandbox.limits import ISOLATIONS, SandboxLimits, sandbox_limits
from es_repro.sandbox.pool import JobResult, SandboxPool, WorkerError

__all__ = ["ISOLATIONS", "JobResult", "SandboxLimits", "SandboxPool", "WorkerError", "sandbox_limits"]
