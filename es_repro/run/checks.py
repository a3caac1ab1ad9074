"""logger.* settings (config/checks.py FEATURE_CHECKS): the valid names come from the loggers' registry."""
from __future__ import annotations

from es_repro.config.checks import one_of
from es_repro.config.schema import WANDB_MODES
from es_repro.run.mirrors import LOGGERS


def check(cfg) -> None:
    one_of("logger.name", cfg.logger.name, tuple(LOGGERS))
    one_of("logger.wandb_mode", cfg.logger.wandb_mode, WANDB_MODES)
