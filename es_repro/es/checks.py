"""es.* settings of the strategy, noise and update rule (config/checks.py); es.qes.* are checked in qes/checks.py."""
from __future__ import annotations

from es_repro.config.checks import one_of, positive
from es_repro.config.schema import LOWRANK_TARGETS, MASTER_DEVICES
from es_repro.es.noise import NOISE_CACHE, NOISE_DTYPES, NOISE_MODES
from es_repro.es.strategy import FITNESS_BASELINES, FITNESS_SHAPING, SEED_STREAMS
from es_repro.es.update_rules import UPDATES
from es_repro.util.errors import ConfigError


def check(cfg) -> None:
    es = cfg.es
    if es.population < 2:
        raise ConfigError(f"es.population={es.population} is not allowed; it must be >= 2 (z-scores need two members)")
    if es.antithetic and es.population % 2:
        raise ConfigError(f"es.population={es.population} must be even when es.antithetic=true (mirrored pairs)")
    positive("es.sigma", es.sigma)
    positive("es.alpha", es.alpha)
    positive("es.generations", es.generations, allow_zero=True)
    one_of("es.noise", es.noise, tuple(NOISE_MODES))
    one_of("es.fitness", es.fitness, tuple(FITNESS_SHAPING))
    one_of("es.update", es.update, tuple(UPDATES))
    if not 0.0 <= es.momentum < 1.0:
        raise ConfigError(f"es.momentum={es.momentum} is not allowed; it must be in [0, 1)")
    positive("es.noise_table_chunk", es.noise_table_chunk)
    if es.noise_table_values < 2 * es.noise_table_chunk:
        raise ConfigError(f"es.noise_table_values={es.noise_table_values} is not allowed; it must be at least twice "
                          f"es.noise_table_chunk={es.noise_table_chunk}")
    one_of("es.noise_dtype", es.noise_dtype, NOISE_DTYPES)
    one_of("es.master_device", es.master_device, MASTER_DEVICES)
    one_of("es.noise_cache", es.noise_cache, NOISE_CACHE)
    one_of("es.seed_stream", es.seed_stream, SEED_STREAMS)
    if not 0.0 <= es.decay < 1.0:
        raise ConfigError(f"es.decay={es.decay} is not allowed; it must be in [0, 1)")
    positive("es.prompts_per_generation", es.prompts_per_generation, allow_zero=True)
    positive("es.lowrank", es.lowrank, allow_zero=True)
    positive("es.members_per_forward", es.members_per_forward)
    one_of("es.lowrank_targets", es.lowrank_targets, LOWRANK_TARGETS)
    one_of("es.fitness_baseline", es.fitness_baseline, FITNESS_BASELINES)
    if es.lowrank and es.noise == "correlated":
        raise ConfigError(f"es.noise=correlated cannot be combined with es.lowrank={es.lowrank}; low-rank factors are "
                          f"drawn per tensor (use es.noise=iid or table)")
