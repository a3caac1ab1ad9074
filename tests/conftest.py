"""Fixtures shared across the test tree. Helpers to import are in tests/helpers.py, test-only engines in tests/fakes/.

Markers (pyproject.toml): ``slow`` for end-to-end runs (``pytest -m "not slow"`` is the quick loop; CI runs all),
``gpu`` for CUDA (deselected by default; scripts/gpu_check.sh runs them), ``vllm`` for the real engine."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import single_thread_run


@pytest.fixture(scope="module")
def reference(request, tmp_path_factory) -> Path:
    """The test module's RUN overrides as one uninterrupted run in this process with one thread: the bit-exact
    reference that multi-process runs (torchrun, SLURM tasks) are compared with."""
    return single_thread_run(tmp_path_factory.mktemp("reference"), request.module.RUN)
