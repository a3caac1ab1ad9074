"""Config composition and validation: bad values fail before any model loads, naming field and allowed values."""
from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ValidationError

from es_repro.config import ConfigError
from tests.helpers import compose_cfg, make_cfg


def test_defaults_are_the_papers_countdown_settings():
    from es_repro.config import to_run_config

    cfg = to_run_config(compose_cfg([]))
    assert (cfg.es.population, cfg.es.sigma, cfg.es.alpha, cfg.es.generations) == (30, 0.001, 0.0005, 500)
    assert (cfg.task.name, cfg.task.train_size, cfg.task.eval_size, cfg.task.max_new_tokens) == ("countdown", 200, 2000, 1024)
    assert cfg.es.noise == "table" and cfg.model.name == "smollm2-135m"  # the shared table (results/quickstart_noise/)


def test_unknown_model_lists_available_options():
    with pytest.raises(MissingConfigException) as err:
        compose_cfg(["model=gpt-17"])
    assert "gpt-17" in str(err.value) and "smollm2-135m" in str(err.value) and "tiny-random" in str(err.value)


@pytest.mark.parametrize(
    "override, field, hint",
    [
        ("es.sigma=-0.1", "es.sigma", "> 0"),
        ("es.alpha=0", "es.alpha", "> 0"),
        ("es.population=1", "es.population", ">= 2"),
        ("es.noise=lowrank", "es.noise", "iid, correlated"),
        ("es.fitness=softmax", "es.fitness", "zscore"),
        ("task.prompt_format=xml", "task.prompt_format", "raw, chat"),
        ("model.dtype=int4", "model.dtype", "bfloat16"),
        ("es.decay=1.5", "es.decay", "[0, 1)"),
        ("es.update=adam", "es.update", "sgd, momentum"),
        ("es.momentum=1.0", "es.momentum", "[0, 1)"),
        ("es.noise_dtype=float16", "es.noise_dtype", "param, float32"),
        ("es.seed_stream=global", "es.seed_stream", "rng, released"),
        ("generation.backend=vllm2", "generation.backend", "hf"),
    ],
)
def test_bad_values_name_the_field_and_allowed_values(override, field, hint):
    with pytest.raises(ConfigError) as err:
        make_cfg([override])
    assert field in str(err.value) and hint in str(err.value)


def test_odd_antithetic_population_rejected():
    with pytest.raises(ConfigError, match="even"):
        make_cfg(["es.antithetic=true", "es.population=5"])


def test_wrong_type_and_unknown_key_fail_while_composing():
    with pytest.raises((ValidationError, ConfigCompositionException)) as err:
        make_cfg(["es.sigma=abc"])
    assert "sigma" in str(err.value)
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg(["es.sigmaa=0.1"])
    assert "sigmaa" in str(err.value)


@pytest.mark.slow
def test_cli_config_error_exits_before_loading_a_model(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "es_repro", "model=smollm2-135m", "es.sigma=-1", f"out_root={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "config error: es.sigma=-1" in proc.stderr


def test_unknown_task_option_lists_allowed_options():
    from es_repro.tasks import build_task

    with pytest.raises(ValueError, match="target_char"):
        build_task("synthetic", 2, 2, 0, {"colour": "red"})


def test_long_override_lists_get_a_short_unique_directory_name():
    from es_repro.config.run_dirs import MAX_RUN_NAME, run_name

    assert run_name("") == "default" and run_name("seed=1") == "seed=1"
    a = ",".join(f"baseline.trl.key_{i}=value" for i in range(40))
    b = a + ",seed=2"  # the same first 200 bytes
    assert len(a.encode()) > 255
    assert len(run_name(a).encode()) <= MAX_RUN_NAME and len(run_name(b).encode()) <= MAX_RUN_NAME
    assert run_name(a) != run_name(b) and run_name(a) == run_name(a)
    assert run_name(a).startswith(a[:100])


def test_a_logger_name_is_checked_against_the_registry():
    """logger.name's choices are the keys of LOGGERS (es_repro/run/mirrors.py), listed in the error."""
    with pytest.raises(ConfigError, match="logger.name='tensorboard' is not allowed; choose one of: none, wandb"):
        make_cfg(["logger.name=tensorboard"])
    assert make_cfg(["logger=wandb_offline"]).logger.name == "wandb" and make_cfg().logger.name == "none"
