"""Value checks that types alone cannot make, before any model loads: each names the field and what is allowed.

The generic helpers and the run-level settings (eval, checkpoints) live here; every feature checks its
own settings in its own package and is listed once in FEATURE_CHECKS, imported only when a config is validated.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
from typing import Any

from omegaconf import DictConfig

from es_repro.config.schema import RunConfig
from es_repro.util.errors import ConfigError

# "module:function" taking the RunConfig; a new feature with settings of its own adds one line.
FEATURE_CHECKS = (
    "es_repro.models.checks:check",
    "es_repro.tasks.checks:check",
    "es_repro.es.checks:check",
    "es_repro.engines.checks:check",
    "es_repro.qes.checks:check",
    "es_repro.engines.vllm.checks:check",
    "es_repro.baselines.checks:check",
    "es_repro.probe.checks:check",
    "es_repro.run.checks:check",
)
# Checks a launch runs after validate(): slower ones that a config rebuilt from run.json does not repeat.
LAUNCH_CHECKS = ("es_repro.baselines.checks:check_launch",)
OPEN_DICTS = {"task.options", "baseline.trl"}  # pass-through keywords, checked by their consumers


def one_of(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={value!r} is not allowed; it must be {bound}")


def finite_floats(obj: Any, prefix: str = "") -> None:
    """Every float field of the schema is a finite number (NaN and inf pass OmegaConf's type check)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            finite_floats(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{f.name}={value} is not allowed; it must be a finite number")


def known_keys(node: Any, schema: Any, prefix: str = "") -> None:
    """No key outside the schema, even one added with Hydra's '+' (which bypasses struct mode)."""
    names = [f.name for f in dataclasses.fields(schema)]
    for key in node.keys():
        path = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; {prefix or 'top-level '}fields: {', '.join(names)}"
            raise ConfigError(f"{path} is not a setting{hint}")
        sub = getattr(schema, key)
        if path not in OPEN_DICTS and dataclasses.is_dataclass(sub) and isinstance(node[key], DictConfig):
            known_keys(node[key], sub, f"{path}.")


def run_checks(cfg: RunConfig, specs: tuple[str, ...]) -> None:
    """Call each "module:function" on cfg; modules are imported here, so config/ imports no feature package."""
    for spec in specs:
        module, _, fn = spec.partition(":")
        getattr(importlib.import_module(module), fn)(cfg)


def validate(cfg: RunConfig) -> RunConfig:
    """Check every value that types alone cannot; raise ConfigError naming the field and what is allowed."""
    finite_floats(cfg)
    run_checks(cfg, FEATURE_CHECKS)
    positive("eval.every", cfg.eval.every, allow_zero=True)
    positive("eval.kl_samples", cfg.eval.kl_samples, allow_zero=True)
    positive("eval.kl_temperature", cfg.eval.kl_temperature)
    positive("checkpoint_every", cfg.checkpoint_every)
    positive("keep_checkpoints", cfg.keep_checkpoints)
    return cfg
