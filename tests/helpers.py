"""Shared test helpers: compose real Hydra configs from conf/ (tiny-random model, synthetic task)."""
from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from es_repro.config import RunConfig
from es_repro.main import CONF_DIR, load_config

# A tiny-random ES run on the synthetic task: seconds on CPU.
TINY = ["model=tiny-random", "task=synthetic", "es.population=6", "es.generations=4", "es.sigma=0.03",
        "es.alpha=0.03", "eval.every=0", "eval.kl_prompts=2", "progress=false"]


def compose_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def make_cfg(overrides: list[str] = ()) -> RunConfig:
    return load_config(compose_cfg(TINY + list(overrides)))


def single_thread_run(run_dir, overrides: list[str]):
    """An ES run in this process with one thread, as each torchrun/SLURM task runs: the bit-exact reference for
    multi-process runs (float reductions depend on the thread count)."""
    import torch

    from es_repro.train_es import run_es

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

    from es_repro.checkpoint import latest_checkpoint

    a, b = (load_file(latest_checkpoint(r) / "model.safetensors") for r in (run_a, run_b))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"
