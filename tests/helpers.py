"""Shared test helpers: compose real Hydra configs from conf/ (tiny-random model, synthetic task)."""
from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from es_repro.config import RunConfig
from es_repro.main import CONF_DIR, to_run_config

# A tiny-random ES run on the synthetic task: seconds on CPU.
TINY = ["model=tiny-random", "task=synthetic", "es.population=6", "es.generations=4", "es.sigma=0.03",
        "es.alpha=0.03", "eval.every=0", "eval.kl_prompts=2", "progress=false"]


def compose_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def make_cfg(overrides: list[str] = ()) -> RunConfig:
    return to_run_config(compose_cfg(TINY + list(overrides)))
