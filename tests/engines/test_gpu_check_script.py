"""scripts/gpu_check.sh itself works: its dry mode (GPU_CHECK_DRY=1) runs every step on CPU with a tiny model, so a
GPU session's one device call is not spent finding a broken script. It runs as on the GPU image: from a copy of the
checkout that was never pip-installed (only on PYTHONPATH), with a Python that sees this environment's packages but
not its editable es_repro install."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKOUT = ["es_repro", "conf", "scripts", "tests", "pyproject.toml"]  # what the script reads


def uninstalled_checkout(tmp_path: Path) -> tuple[Path, Path]:
    """(a copy of the checkout, the bin folder of a venv that imports this environment's packages but not es_repro).
    site-packages goes in through a .pth line, and .pth files inside a folder added that way are not run, so the
    editable install's import hook (a .pth there) is absent, as on an image es-repro was never installed into."""
    tree = tmp_path / "checkout"
    for name in CHECKOUT:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, tree / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (site,) = venv.glob("lib/python*/site-packages")
    (site / "packages_of_the_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return tree, venv / "bin"


@pytest.mark.slow
def test_the_gpu_check_script_writes_every_section_of_its_report(tmp_path):
    tree, python_bin = uninstalled_checkout(tmp_path)
    env = {**os.environ, "GPU_CHECK_DRY": "1", "PATH": f"{python_bin}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    probe = "import importlib.util as u; print(u.find_spec('es_repro').origin)"
    origin = subprocess.run([str(python_bin / "python"), "-c", probe], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert origin.stdout.strip() == "None" or origin.returncode != 0, "the test's Python still sees es_repro installed"
    out = tmp_path / "report"
    run = subprocess.run(["bash", str(tree / "scripts" / "gpu_check.sh"), str(out)], cwd=tree, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (report,) = out.glob("gpu_check_*_dry.md")
    text = report.read_text()
    for heading in ("## Device and noise fingerprints", "## gpu-marked tests", "## Benchmark:", "## Members in flight"):
        assert heading in text, heading
    assert '"bfloat16/param": "' in text  # the fingerprints were drawn
    assert "8 skipped" in text  # the gpu tests were collected (and skip without CUDA)
    assert "| default | float32 |" in text and "| inflight x2 | float32 |" in text  # both benchmark rows ran


@pytest.mark.slow
def test_the_gpu_wheels_are_pure_python_and_supply_the_checks_imports(tmp_path):
    """scripts/gpu_wheels.sh (run where PyPI is reachable) gives the bare GPU image what the preflight imports; every
    wheel must install without a compiler or network there (omegaconf's antlr4 runtime exists only as a source
    archive on PyPI, so the script builds it)."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    built = subprocess.run(["bash", str(REPO / "scripts" / "gpu_wheels.sh"), str(wheels)], env=env,
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    names = sorted(p.name for p in wheels.glob("*.whl"))
    assert all(name.endswith("-py3-none-any.whl") for name in names), names
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target),
                    *map(str, wheels.glob("*.whl"))], check=True, capture_output=True, timeout=300)
    where = subprocess.run([sys.executable, "-c", "import hydra, omegaconf, submitit, pytest, antlr4\n"
                            "for m in (hydra, omegaconf, submitit, pytest, antlr4): print(m.__file__)"],
                           env={**env, "PYTHONPATH": str(target)}, cwd=tmp_path, capture_output=True, text=True,
                           check=True, timeout=120).stdout.split()
    assert len(where) == 5 and all(w.startswith(str(target)) for w in where), where
