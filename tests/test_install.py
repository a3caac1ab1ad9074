"""A non-editable install (a wheel built from pyproject.toml + setup.py, as `pip install .` or `pip install git+...`
on a cluster makes it) runs from any directory: conf/ ships inside the package as es_repro.conf."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ["pyproject.toml", "setup.py", "README.md", "es_repro", "conf"]  # what a wheel is built from


@pytest.mark.slow
def test_a_wheel_install_runs_the_main_command_from_an_empty_directory(tmp_path):
    source, target, workdir = tmp_path / "source", tmp_path / "site", tmp_path / "elsewhere"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    workdir.mkdir()
    # dependencies come from this environment; the package itself only from the wheel installed into `target`
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(source)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    where = subprocess.run([sys.executable, "-c", "import es_repro.config as c; print(c.__file__); print(c.CONF_DIR)"],
                           cwd=workdir, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert where == [str(target / "es_repro" / "config" / "__init__.py"), str(target / "es_repro" / "conf")]
    assert (target / "es_repro" / "conf" / "experiment" / "quickstart.yaml").is_file()
    run = subprocess.run([sys.executable, "-m", "es_repro", "model=tiny-random", "task=synthetic", "es.generations=2",
                          "progress=false"], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (run_dir,) = (workdir / "results" / "default").iterdir()
    assert run_dir.name == "es.generations=2,model=tiny-random,task=synthetic"
    assert (run_dir / "run.json").is_file() and (run_dir / "metrics.jsonl").is_file()
