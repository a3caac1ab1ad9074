"""One run lifecycle for ES and the RL baselines: skip a finished run, hold the run directory's lock, start
(run.json + optional wandb), record a failure (any exception, Ctrl-C or SIGTERM: status failed, the error and the
step reached), finish with a summary. Only the process that writes the run directory records anything."""
from __future__ import annotations

import signal
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path

from es_repro.run.lock import run_lock
from es_repro.run.log import RunLog
from es_repro.run.mirrors import open_mirror


def finished_summary(log: RunLog) -> dict | None:
    """The summary of a finished run (which is then skipped), or None if the run still has work to do."""
    if not log.is_finished():
        return None
    print(f"[es-repro] {log.dir} already finished; skipping (delete the run directory to run it again)")
    return log.info().get("summary", {})


def start(cfg, log: RunLog, kind: str, task_info: dict | None = None, backend_info: dict | None = None,
          noise_info: dict | None = None) -> None:
    """run.json (status running, config, commit, host; what the task reports about itself, e.g. the reward
    sandbox's isolation, under "task_info"; what the backend reports, e.g. its forward path, under "backend"; the
    noise fingerprint and device facts under "noise", es_repro/es/fingerprint.py) and the mirror (logger.name)."""
    config = asdict(cfg)
    extra = {k: v for k, v in (("task_info", task_info), ("backend", backend_info), ("noise", noise_info)) if v}
    log.start(config, kind=kind, **extra)
    log.mirror = open_mirror(cfg.logger, f"{cfg.experiment}/{Path(log.dir).name}", config, log.dir)


class Terminated(SystemExit):
    """SIGTERM (kill, SLURM's time limit) as an exception, so the run records why it stopped (exit code 143)."""


def _raise_terminated(signum, frame):
    raise Terminated(128 + signum)


@contextmanager
def _sigterm_raises():
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def failure_recorded(log: RunLog | None):
    """Any exception (Ctrl-C and SIGTERM included) marks run.json failed with the error before it propagates."""
    try:
        yield
    except BaseException as err:
        if log is not None:
            message = "SIGTERM" if isinstance(err, Terminated) else f"{type(err).__name__}: {err}"
            log.fail(message)
        raise


@contextmanager
def managed(log: RunLog, writer: bool = True):
    """The whole life of a launch: the run directory's lock (writer only), SIGTERM as an exception, failures
    recorded in run.json (writer only)."""
    with ExitStack() as stack:
        if writer:
            stack.enter_context(run_lock(log.dir))
        stack.enter_context(_sigterm_raises())
        stack.enter_context(failure_recorded(log if writer else None))
        yield
