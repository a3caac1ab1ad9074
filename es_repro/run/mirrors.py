"""Where a run's log lines are mirrored besides metrics.jsonl (the source of truth): LOGGERS maps logger.name (the
conf/logger/ group) to a builder of a Mirror, or of nothing. A new logger (TensorBoard, CSV, ...) is one class with
``log(metrics, step)`` and ``finish(summary)``, one entry here and one conf/logger/<name>.yaml."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol


class Mirror(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def finish(self, summary: dict) -> None: ...


class WandbMirror:
    """A wandb run fed every numeric field of each metrics.jsonl line; resumes the same wandb run id on relaunch."""

    def __init__(self, logger_cfg, name: str, config: dict, run_dir: Path):
        import wandb

        run_id = (name.replace("/", "-").replace("=", "_").replace(",", "-"))[-120:]
        self.run = wandb.init(mode=logger_cfg.wandb_mode, project=logger_cfg.wandb_project,
                              entity=logger_cfg.wandb_entity, name=name, id=run_id, resume="allow", config=config,
                              dir=str(run_dir))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, summary: dict) -> None:
        self.run.summary.update(summary)
        self.run.finish()


def no_mirror(logger_cfg, name: str, config: dict, run_dir: Path) -> None:
    return None


# logger.name -> (logger config, run name, run config, run directory) -> a Mirror, or None
LOGGERS: dict[str, Callable[[Any, str, dict, Path], Mirror | None]] = {"none": no_mirror, "wandb": WandbMirror}


def open_mirror(logger_cfg, name: str, config: dict, run_dir: Path) -> Mirror | None:
    return LOGGERS[logger_cfg.name](logger_cfg, name, config, run_dir)
