"""scripts/gpu_check.sh itself works: its dry mode (GPU_CHECK_DRY=1) runs every step on CPU with a tiny model, so a
GPU session's one device call is not spent finding a broken script."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_gpu_check_script_writes_every_section_of_its_report(tmp_path):
    env = {**os.environ, "GPU_CHECK_DRY": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (report,) = tmp_path.glob("gpu_check_*_dry.md")
    text = report.read_text()
    for heading in ("## Device and noise fingerprints", "## gpu-marked tests", "## Benchmark:", "## Members in flight"):
        assert heading in text, heading
    assert '"bfloat16/param": "' in text  # the fingerprints were drawn
    assert "4 skipped" in text  # the gpu tests were collected (and skip without CUDA)
    assert "| default | float32 |" in text and "| inflight x2 | float32 |" in text  # both benchmark rows ran
