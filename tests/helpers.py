"""Shared test helpers: compose real Hydra configs from conf/ (tiny-random model, synthetic task)."""
from __future__ import annotations

from es_repro.config import RunConfig, compose, compose_config

# A tiny-random ES run on the synthetic task: seconds on CPU.
TINY = ["model=tiny-random", "task=synthetic", "es.population=6", "es.generations=4", "es.sigma=0.03",
        "es.alpha=0.03", "eval.every=0", "eval.kl_prompts=2", "progress=false",
        "es.noise_table_values=1048576", "es.noise_table_chunk=1024"]  # a 4 MiB table: built in a blink


def compose_cfg(overrides: list[str]):
    return compose(overrides)


def make_cfg(overrides: list[str] = ()) -> RunConfig:
    return compose_config(TINY + list(overrides))


def single_thread_run(run_dir, overrides: list[str]):
    """An ES run in this process with one thread, as each torchrun/SLURM task runs: the bit-exact reference for
    multi-process runs (float reductions depend on the thread count)."""
    import torch

    from es_repro.train import run_es

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_es(make_cfg(overrides), run_dir)
    finally:
        torch.set_num_threads(threads)
    return run_dir


def assert_same_final_weights(run_a, run_b) -> None:
    """The newest checkpoints of two runs hold bit-identical weights."""
    import torch
    from safetensors.torch import load_file

    from es_repro.run.checkpoint import latest_checkpoint

    a, b = (load_file(latest_checkpoint(r) / "model.safetensors") for r in (run_a, run_b))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def missing_tool(message: str) -> None:
    """A system tool a test needs is absent: skipped on a developer's machine, a failure under CI (.ci/run installs
    every tool, so a skip there would hide a broken install step). Callable in a test or at a module's top level."""
    import os

    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI=true: .ci/run must provide it before the tests)")
    pytest.skip(message, allow_module_level=True)


def require_module(name: str):
    """The imported module, or missing_tool's skip (a failure under CI) when it cannot be imported: for a
    dependency that pyproject.toml installs, where pytest.importorskip would hide a broken install even under CI."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing_tool(f"{name} cannot be imported ({err}); it is a dependency in pyproject.toml")
