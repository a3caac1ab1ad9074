"""Hydra entry point: compose conf/, validate into typed dataclasses, run ES in a deterministic run directory.

    python -m es_repro experiment=quickstart
    python -m es_repro -m model=tiny-random seed=0,1,2     # multirun (local launcher)

The run directory is results/<experiment>/<override_dirname> ("default" without overrides), so relaunching
the same command resumes an unfinished run and skips a finished one.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from es_repro.config.load import CONF_DIR, load_config, register
from es_repro.util.errors import UserError

# Before @hydra.main composes conf/: the typed schema and the run_name resolver. At import, because a submitit job
# process gets the task function by importing this module and resolves the run directory with run_name.
register()


def user_errors_in_one_line(fn):
    """A UserError (bad config value, data file, busy run directory) prints one line and exits 2; the traceback
    only with HYDRA_FULL_ERROR=1."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"{err.kind} error: {err}", file=sys.stderr)
            sys.exit(2)
    return wrapped


class OutputDirCheck(Callback):
    """Hydra creates the run (or sweep) directory before es-repro's code runs; an unwritable out_root would
    surface as Hydra's traceback. Checked here first, and reported in one line (exit 2)."""

    def _check(self, config: DictConfig, key: str) -> None:
        target = Path(str(OmegaConf.select(config, key)))
        try:
            target.mkdir(parents=True, exist_ok=True)
            probe = target / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"config error: out_root={config.out_root!r}: cannot write the run directory {target} "
                  f"({err.strerror or err})", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "hydra.sweep.dir")


def launch(dcfg: DictConfig, run_dir: Path) -> dict:
    cfg = load_config(dcfg)
    from es_repro.models.loading import check_available  # a missing model is reported before anything loads

    check_available(cfg.model)
    if cfg.baseline.method != "none":  # baseline=grpo|ppo: TRL's trainers, same task, evaluator and run log
        from es_repro.baselines import run_baseline

        return run_baseline(cfg, run_dir)
    from es_repro.engines.base import engine_class, engine_name
    from es_repro.train import run_es  # heavy imports only after the config is known to be valid
    from es_repro.util import distributed

    engine = engine_class(engine_name(cfg))
    engine.preflight(cfg)  # facts of this machine the engine needs (an installed library), before anything loads
    # torchrun or a multi-task submitit/SLURM job: the processes share one ES population; an engine may span
    # several GPUs (vLLM's tensor parallel), so each process binds a group of that size
    per_process = engine.devices_per_process(cfg)
    distributed.init(per_process)
    try:
        return run_es(fit_on_the_gpu(cfg, per_process), run_dir)
    finally:
        distributed.shutdown()  # the process group ends with the run (a no-op in a run of one process)


def fit_on_the_gpu(cfg, per_process: int):
    """On CUDA, the run's memory plan before anything loads (es_repro/engines/memory.py): es.master_device=auto
    decided, and a run that cannot fit refused in one line naming the levers. On CPU the host's memory is the limit."""
    import torch

    from es_repro.engines.memory import check_fits
    from es_repro.util import distributed

    if not torch.cuda.is_available():
        return cfg
    sharing = distributed.placement(per_process)[2]
    return check_fits(cfg, torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory, sharing)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
@user_errors_in_one_line
def main(dcfg: DictConfig) -> dict:
    return launch(dcfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
