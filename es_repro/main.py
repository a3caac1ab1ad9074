"""Hydra entry point: compose conf/, validate into typed dataclasses, run ES in a deterministic run directory.

    python -m es_repro experiment=quickstart
    python -m es_repro -m model=tiny-random seed=0,1,2     # multirun (local launcher)

The run directory is results/<experiment>/<override_dirname> ("default" without overrides), so relaunching
the same command resumes an unfinished run and skips a finished one.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from es_repro.config import ConfigError, RunConfig, register_schemas, to_run_config

# conf/ sits at the repository root (an editable install); an absolute path works under `python -m` too.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
register_schemas()
MAX_RUN_NAME = 200  # file systems refuse names over 255 bytes; leave room for suffixes such as ".tmp"


def run_name(overrides: str) -> str:
    """A run directory's name from its overrides: "default" when there are none; a long one is cut and given a
    hash of the whole, so two runs never share a directory and run.json still records every override."""
    if not overrides:
        return "default"
    if len(overrides.encode()) <= MAX_RUN_NAME:
        return overrides
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:12]
    return overrides.encode()[: MAX_RUN_NAME - 13].decode(errors="ignore") + "~" + digest


if not OmegaConf.has_resolver("run_name"):
    OmegaConf.register_new_resolver("run_name", run_name)


def load_config(dcfg: DictConfig) -> RunConfig:
    """The typed, validated config of a launch; baseline runs also pass TRL's own checks (before any model loads)."""
    cfg = to_run_config(dcfg)
    if cfg.baseline.method != "none":
        from es_repro.baselines.trl_config import check_trl_config  # imports TRL: only for baseline runs

        check_trl_config(cfg)
    return cfg


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(dcfg: DictConfig) -> dict:
    try:
        cfg = load_config(dcfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    if cfg.baseline.method != "none":  # baseline=grpo|ppo: TRL's trainers, same task, evaluator and run log
        from es_repro.baselines import run_baseline

        return run_baseline(cfg, Path(HydraConfig.get().runtime.output_dir))
    from es_repro import distributed
    from es_repro.train_es import run_es  # heavy imports only after the config is known to be valid

    distributed.init()  # torchrun or a multi-task submitit/SLURM job: the processes share one ES population
    return run_es(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
