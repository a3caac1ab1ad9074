"""generation.* settings shared by every engine, and the chosen engine's own checks through its class
(config/checks.py FEATURE_CHECKS); generation.vllm.* values in engines/vllm/checks.py."""
from __future__ import annotations

from es_repro.config.checks import one_of, positive
from es_repro.util.errors import ConfigError


def check(cfg) -> None:
    from es_repro.engines.base import BACKENDS, engine_class, engine_name
    from es_repro.engines.hf.decode import FAST_DECODE, LINEAR_KERNELS, ruled_out_by_settings
    from es_repro.engines.hf.generation import CACHES, COMPILE_MODES
    from es_repro.engines.hf.packed import PACKED_WEIGHTS

    g = cfg.generation
    positive("generation.batch_size", g.batch_size)
    one_of("generation.cache", g.cache, CACHES)
    one_of("generation.compile", g.compile, COMPILE_MODES)
    one_of("generation.packed_weights", g.packed_weights, PACKED_WEIGHTS)
    if g.packed_weights == "on" and g.compile == "on":
        raise ConfigError("generation.packed_weights=on cannot be combined with generation.compile=on (the compiled "
                          "decode reads the weights itself); set one of them to auto/off")
    one_of("generation.fast_decode", g.fast_decode, FAST_DECODE)
    one_of("generation.linear_kernel", g.linear_kernel, LINEAR_KERNELS)
    if g.fast_decode == "on" and (setting := ruled_out_by_settings(cfg)):
        raise ConfigError(f"generation.fast_decode=on cannot run with {setting}: it runs full-rank "
                          f"members with generation.cache=dynamic and generation.compile=auto/off; set "
                          f"generation.fast_decode=auto or off")
    if g.repetition_penalty is not None:
        positive("generation.repetition_penalty", g.repetition_penalty)
    if g.backend not in BACKENDS and ":" not in g.backend:
        raise ConfigError(f"generation.backend={g.backend!r} is not allowed; choose one of: "
                          f"{', '.join(BACKENDS)} (or a factory as package.module:function)")
    name = engine_name(cfg)
    try:
        engine = engine_class(name)
    except ValueError as err:  # a package.module:function that does not import
        raise ConfigError(str(err)) from None
    if cfg.es.update not in engine.update_rules:
        implied = f" (es.update={cfg.es.update} runs generation.backend={name})" if name != g.backend else ""
        raise ConfigError(f"es.update={cfg.es.update} does not run on generation.backend={g.backend}{implied}; that "
                          f"engine runs es.update: {', '.join(engine.update_rules)}")
    engine.check_config(cfg)
