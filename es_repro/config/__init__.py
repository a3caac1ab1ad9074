"""The run configuration: schema.py (typed dataclasses, one per conf/ group), checks.py (values; each feature checks
its own settings), load.py (compose conf/, validate, rebuild from run.json), run_dirs.py (run directory names)."""
from es_repro.config.checks import validate
from es_repro.config.load import (CONF_DIR, compose, compose_config, config_from_run_dir, load_config, register,
                                  to_run_config)
from es_repro.config.schema import (BaselineConfig, ESConfig, EvalConfig, GenerationConfig, LoggerConfig, ModelConfig,
                                    ProbeConfig, QESConfig, RunConfig, TaskConfig, VLLMConfig)
from es_repro.util.errors import ConfigError

__all__ = ["CONF_DIR", "compose", "compose_config", "config_from_run_dir", "load_config", "register", "to_run_config",
           "validate", "ConfigError", "BaselineConfig", "ESConfig", "EvalConfig", "GenerationConfig", "LoggerConfig",
           "ModelConfig", "ProbeConfig", "QESConfig", "RunConfig", "TaskConfig", "VLLMConfig"]
