"""Scoring through the reward sandbox, shared by the tasks whose scorers run model-derived code or parse model
text with heavy parsers (arc_program, math, the sandboxed reasoning-gym datasets).

One pool per (limits, warm-up) in a process, reused by every task built with them; a bounded memo of job
results, so reward() and accuracy() of one evaluation (same completions) run each job once and agree."""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

from es_repro.sandbox import JobResult, SandboxLimits, SandboxPool, SandboxRefused, sandbox_limits
from es_repro.util.errors import ConfigError

_POOLS: dict[str, SandboxPool] = {}


def shared_pool(limits: SandboxLimits, warm: list[dict]) -> SandboxPool:
    key = json.dumps([repr(limits), warm], sort_keys=True)
    if key not in _POOLS:
        try:
            _POOLS[key] = SandboxPool(limits, warm)
        except SandboxRefused as err:  # a config error: one line from the command line, before any model code
            raise ConfigError(str(err)) from None
    return _POOLS[key]


class SandboxRunner:
    """pool.run with a memo of the last ``cache_size`` distinct jobs."""

    def __init__(self, options: dict | None, warm: list[dict], cache_size: int = 16384):
        self.pool = shared_pool(sandbox_limits(options), warm)
        self.cache: OrderedDict[bytes, JobResult] = OrderedDict()
        self.cache_size = cache_size

    @property
    def info(self) -> dict[str, Any]:
        return {"sandbox": self.pool.isolation}

    def run(self, jobs: list[tuple[str, dict]]) -> list[JobResult]:
        keys = [hashlib.blake2b(json.dumps(job, sort_keys=True).encode(), digest_size=16).digest() for job in jobs]
        todo = {k: job for k, job in zip(keys, jobs) if k not in self.cache}
        fresh = dict(zip(todo, self.pool.run(list(todo.values()))))
        out = []
        for key in keys:
            if key in self.cache:
                self.cache.move_to_end(key)
            out.append(fresh[key] if key in fresh else self.cache[key])
        self.cache.update(fresh)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return out
