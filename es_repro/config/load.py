"""From Hydra's composed DictConfig to a validated RunConfig: schema registration, composition for tools and tests
(the same conf/ the command line reads), and a run's config rebuilt from its run.json."""
from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from es_repro.config.checks import LAUNCH_CHECKS, known_keys, run_checks, validate
from es_repro.config.run_dirs import run_name
from es_repro.config.schema import RunConfig
from es_repro.util.errors import ConfigError


def conf_dir() -> str:
    """conf/ sits at the repository's top and ships inside the package as es_repro.conf (setup.py), so an installed
    es-repro finds the same configs as a checkout. A checkout that is only on PYTHONPATH, never installed (the bare
    GPU image scripts/gpu_check.sh runs on), has no es_repro.conf package: there the checkout's conf/ is used."""
    try:
        return str(Path(str(files("es_repro.conf"))).resolve())
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parents[2] / "conf"
        if not checkout.is_dir():
            raise
        return str(checkout)


CONF_DIR = conf_dir()


def register() -> None:
    """What conf/ needs before Hydra composes it: the typed schema and the run_name resolver (idempotent)."""
    from hydra.core.config_store import ConfigStore

    schema = OmegaConf.structured(RunConfig)
    # baseline.trl passes TRL's own fields through: `baseline.trl.<field>=...` may add keys without Hydra's "+".
    OmegaConf.set_struct(schema.baseline.trl, False)
    OmegaConf.set_struct(schema.task.options, False)  # likewise each task builder's own keywords
    ConfigStore.instance().store(name="run_schema", node=schema)
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)


def to_run_config(dcfg: DictConfig) -> RunConfig:
    """DictConfig -> RunConfig (unknown keys and types checked), then values checked by validate()."""
    known_keys(dcfg, RunConfig())
    try:
        cfg = OmegaConf.to_object(dcfg)
    except Exception as err:  # omegaconf's ValidationError / MissingMandatoryValue: a value of the wrong type
        raise ConfigError(str(err).splitlines()[0]) from None
    return validate(cfg)


def load_config(dcfg: DictConfig) -> RunConfig:
    """The typed, validated config of a launch, after LAUNCH_CHECKS too (baseline runs: TRL's own checks), before
    any model loads."""
    cfg = to_run_config(dcfg)
    run_checks(cfg, LAUNCH_CHECKS)
    return cfg


def compose(overrides: Sequence[str] = (), config_name: str = "config", return_hydra_config: bool = False) -> DictConfig:
    """conf/ composed with command-line style overrides, outside a Hydra app (tools, sweeps, tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def compose_config(overrides: Sequence[str] = ()) -> RunConfig:
    """The validated RunConfig of ``python -m es_repro <overrides>``."""
    return load_config(compose(overrides))


def config_from_run_dir(run_dir: Path, overrides: Sequence[str] = ()) -> RunConfig:
    """The RunConfig a run was launched with, from its run.json, with KEY=VALUE ``overrides`` (e.g. replaying on
    another engine: generation.backend=vllm) merged over it and checked like any config."""
    info = json.loads((Path(run_dir) / "run.json").read_text())
    return to_run_config(OmegaConf.merge(OmegaConf.structured(RunConfig), info["config"],
                                         OmegaConf.from_dotlist(list(overrides))))
