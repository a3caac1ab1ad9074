"""Wall time per phase (generate / perturb / restore / update / reward), shared by the loop and the benchmark."""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class Timer:
    """Accumulates wall time per phase; synchronises CUDA so GPU work is charged to the right phase."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - start
