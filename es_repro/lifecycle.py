"""One run lifecycle for ES and the RL baselines: skip a finished run, start (run.json + optional wandb),
record a failure, finish with a summary. Only the process that writes the run directory calls these."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from es_repro.runlog import RunLog, open_wandb


def finished_summary(log: RunLog) -> dict | None:
    """The summary of a finished run (which is then skipped), or None if the run still has work to do."""
    if not log.is_finished():
        return None
    print(f"[es-repro] {log.dir} already finished; skipping (delete the run directory to run it again)")
    return log.info().get("summary", {})


def start(cfg, log: RunLog, kind: str, details: dict | None = None) -> None:
    """run.json (status running, config, commit, host; ``details``: what the backend reports about itself, e.g.
    its forward path, under "backend") and the wandb mirror when enabled."""
    config = asdict(cfg)
    log.start(config, kind=kind, **({"backend": details} if details else {}))
    log.wandb = open_wandb(cfg.logger.wandb_mode, cfg.logger.wandb_project, cfg.logger.wandb_entity,
                           f"{cfg.experiment}/{Path(log.dir).name}", config, log.dir)


@contextmanager
def failure_recorded(log: RunLog | None):
    """Any exception (Ctrl-C included) marks run.json failed with the error before it propagates."""
    try:
        yield
    except BaseException as err:
        if log is not None:
            log.fail(f"{type(err).__name__}: {err}")
        raise
