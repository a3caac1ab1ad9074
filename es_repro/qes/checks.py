"""es.qes.* settings, and which settings es.update=qes rules out (config/checks.py). Which engine runs it is the
engine's own fact (QESBackend.update_rules, checked in es_repro/engines/checks.py)."""
from __future__ import annotations

from es_repro.config.checks import one_of, positive
from es_repro.qes import BITS, INIT_RESIDUALS, NORMS, RESIDUAL_MODES
from es_repro.util.errors import ConfigError


def check(cfg) -> None:
    es, q = cfg.es, cfg.es.qes
    if es.update != "qes":
        return
    if es.population % 2:
        raise ConfigError(f"es.population={es.population} must be even when es.update=qes (mirrored pairs)")
    if es.lowrank:
        raise ConfigError(f"es.lowrank={es.lowrank} cannot be combined with es.update=qes (integer codes are perturbed in full)")
    if es.decay:
        raise ConfigError(f"es.decay={es.decay} is not used by es.update=qes; set es.decay=0")
    if es.fitness != "zscore":
        raise ConfigError(f"es.fitness={es.fitness!r} is not used by es.update=qes (pair-difference z-scores); set es.fitness=zscore")
    if not 0.0 <= q.gamma <= 1.0:
        raise ConfigError(f"es.qes.gamma={q.gamma} is not allowed; it must be in [0, 1]")
    positive("es.qes.window", q.window)
    one_of("es.qes.residual", q.residual, RESIDUAL_MODES)
    positive("es.qes.coeff_clip", q.coeff_clip)
    one_of("es.qes.norm", q.norm, NORMS)
    one_of("es.qes.init_residual", q.init_residual, INIT_RESIDUALS)
    one_of("es.qes.bits", q.bits, BITS)
    positive("es.qes.group_size", q.group_size)
    if es.noise == "table":
        raise ConfigError("es.noise=table cannot be combined with es.update=qes (its integer steps round with a seeded "
                          "generator); use es.noise=iid or correlated")
