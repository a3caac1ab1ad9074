"""model.* settings (config/checks.py runs this before any model loads)."""
from __future__ import annotations

from es_repro.config.checks import one_of
from es_repro.config.schema import DEVICES, DTYPES, MODEL_SOURCES
from es_repro.util.errors import ConfigError


def check(cfg) -> None:
    m = cfg.model
    one_of("model.source", m.source, MODEL_SOURCES)
    one_of("model.dtype", m.dtype, DTYPES)
    one_of("model.device", m.device, DEVICES)
    if m.source in ("hf", "gguf_package") and not m.path:
        raise ConfigError(f"model.path is empty; model.source={m.source} needs an HF id, a local directory or a package name")
    if m.source == "random_shape":
        from es_repro.models.shapes import SHAPES

        one_of("model.path", m.path, tuple(SHAPES))
