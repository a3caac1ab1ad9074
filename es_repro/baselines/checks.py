"""baseline.* settings (config/checks.py); TRL's own checks of baseline.trl run in trl_config.py (imports TRL)."""
from __future__ import annotations

from es_repro.config.checks import one_of, positive
from es_repro.config.schema import BASELINE_METHODS
from es_repro.run.errors import ConfigError


def check(cfg) -> None:
    b = cfg.baseline
    one_of("baseline.method", b.method, BASELINE_METHODS)
    for name in ("samples_budget", "kl_coef", "value_learning_rate", "eval_every_samples", "completions_to_log"):
        positive(f"baseline.{name}", getattr(b, name), allow_zero=True)
    if b.method == "none" and b.trl:
        raise ConfigError(f"baseline.trl={dict(b.trl)} is only used by baseline=grpo or baseline=ppo (baseline.method=none runs ES)")
