"""probe.* settings (config/checks.py), set by conf/probe.yaml only."""
from __future__ import annotations

from es_repro.config.checks import one_of, positive
from es_repro.config.schema import PROBE_REWARDS, PROBE_SPLITS
from es_repro.util.errors import ConfigError


def check(cfg) -> None:
    p = cfg.probe
    if p is None:  # only python -m es_repro.probe sets it
        return
    if not p.sigmas or any(s <= 0 for s in p.sigmas) or len(set(p.sigmas)) != len(p.sigmas):
        raise ConfigError(f"probe.sigmas={list(p.sigmas)} is not allowed; give one or more distinct values > 0")
    if p.candidates < 2:
        raise ConfigError(f"probe.candidates={p.candidates} is not allowed; it must be >= 2")
    positive("probe.prompts", p.prompts)
    one_of("probe.split", p.split, PROBE_SPLITS)
    if not 1 <= p.batches <= p.candidates:
        raise ConfigError(f"probe.batches={p.batches} is not allowed; it must be in [1, probe.candidates={p.candidates}]")
    if not p.n_values or any(not 1 <= n <= p.candidates for n in p.n_values):
        raise ConfigError(f"probe.n_values={list(p.n_values)} is not allowed; each N must be in [1, probe.candidates={p.candidates}]")
    positive("probe.subsets", p.subsets, allow_zero=True)
    one_of("probe.reward", p.reward, PROBE_REWARDS)
    if not 1 <= p.n_ref <= p.candidates:
        raise ConfigError(f"probe.n_ref={p.n_ref} is not allowed; it must be in [1, probe.candidates={p.candidates}]")
    if not 0.0 < p.identical_max <= 1.0:
        raise ConfigError(f"probe.identical_max={p.identical_max} is not allowed; it must be in (0, 1]")
