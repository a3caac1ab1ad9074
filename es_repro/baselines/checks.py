"""baseline.* settings (config/checks.py FEATURE_CHECKS), and at launch TRL's own checks of baseline.trl
(LAUNCH_CHECKS; trl_config.py imports TRL, so only baseline runs pay for it)."""
from __future__ import annotations

from es_repro.config.checks import one_of, positive
from es_repro.config.schema import BASELINE_METHODS
from es_repro.util.errors import ConfigError


def check(cfg) -> None:
    b = cfg.baseline
    one_of("baseline.method", b.method, BASELINE_METHODS)
    for name in ("samples_budget", "kl_coef", "value_learning_rate", "eval_every_samples", "completions_to_log"):
        positive(f"baseline.{name}", getattr(b, name), allow_zero=True)
    if b.method == "none" and b.trl:
        raise ConfigError(f"baseline.trl={dict(b.trl)} is only used by baseline=grpo or baseline=ppo (baseline.method=none runs ES)")


def check_launch(cfg) -> None:
    if cfg.baseline.method != "none":
        from es_repro.baselines.trl_config import check_trl_config  # imports TRL: only for baseline runs

        check_trl_config(cfg)
