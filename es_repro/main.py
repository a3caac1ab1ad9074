"""Hydra entry point: compose conf/, validate into typed dataclasses, run ES in a deterministic run directory.

    python -m es_repro experiment=quickstart
    python -m es_repro -m model=tiny-random seed=0,1,2     # multirun (local launcher)

The run directory is results/<experiment>/<override_dirname> ("default" without overrides), so relaunching
the same command resumes an unfinished run and skips a finished one.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from es_repro.config import RunConfig, register_schemas, to_run_config
from es_repro.errors import UserError

# conf/ sits at the repository root (an editable install); an absolute path works under `python -m` too.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
register_schemas()
MAX_RUN_NAME = 200  # file systems refuse names over 255 bytes; leave room for suffixes such as ".tmp"


_KEY = re.compile(r"(?:^|,)([+~]*[A-Za-z_][\w.\-]*)=")


def _path_label(value: str) -> str:
    """A path-valued override as a flat, short name: its last component + 8 hex of its contents (of the text when it
    is not a readable file), so a run directory never nests and is keyed by the data, not by where it lies."""
    path = Path(value)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    except OSError:
        digest.update(value.encode())
    return f"{(path.name or 'path')[:40]}-{digest.hexdigest()[:8]}"


def flatten_paths(overrides: str) -> str:
    """Replace every override value that contains '/' by its _path_label."""
    keys = list(_KEY.finditer(overrides))
    out = []
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(overrides)
        value = overrides[m.end():end]
        out.append(overrides[m.start():m.end()] + (_path_label(value) if "/" in value else value))
    return "".join(out).replace("/", "_") if keys else overrides.replace("/", "_")


def run_name(overrides: str) -> str:
    """A run directory's name from its overrides: "default" when there are none; path values flattened
    (flatten_paths); a long one is cut and given a hash of the whole, so two runs never share a directory and
    run.json still records every override."""
    if not overrides:
        return "default"
    overrides = flatten_paths(overrides)
    if len(overrides.encode()) <= MAX_RUN_NAME:
        return overrides
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:12]
    return overrides.encode()[: MAX_RUN_NAME - 13].decode(errors="ignore") + "~" + digest


if not OmegaConf.has_resolver("run_name"):
    OmegaConf.register_new_resolver("run_name", run_name)


def load_config(dcfg: DictConfig) -> RunConfig:
    """The typed, validated config of a launch; baseline runs also pass TRL's own checks (before any model loads)."""
    cfg = to_run_config(dcfg)
    if cfg.baseline.method != "none":
        from es_repro.baselines.trl_config import check_trl_config  # imports TRL: only for baseline runs

        check_trl_config(cfg)
    return cfg


def user_errors_in_one_line(fn):
    """A UserError (bad config value, data file, busy run directory) prints one line and exits 2; the traceback
    only with HYDRA_FULL_ERROR=1."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"{err.kind} error: {err}", file=sys.stderr)
            sys.exit(2)
    return wrapped


class OutputDirCheck(Callback):
    """Hydra creates the run (or sweep) directory before es-repro's code runs; an unwritable out_root would
    surface as Hydra's traceback. Checked here first, and reported in one line (exit 2)."""

    def _check(self, config: DictConfig, key: str) -> None:
        target = Path(str(OmegaConf.select(config, key)))
        try:
            target.mkdir(parents=True, exist_ok=True)
            probe = target / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"config error: out_root={config.out_root!r}: cannot write the run directory {target} "
                  f"({err.strerror or err})", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "hydra.sweep.dir")


def launch(dcfg: DictConfig, run_dir: Path) -> dict:
    cfg = load_config(dcfg)
    from es_repro.models import check_available  # a missing model is reported before anything loads

    check_available(cfg.model)
    if cfg.baseline.method != "none":  # baseline=grpo|ppo: TRL's trainers, same task, evaluator and run log
        from es_repro.baselines import run_baseline

        return run_baseline(cfg, run_dir)
    from es_repro import distributed
    from es_repro.train_es import run_es  # heavy imports only after the config is known to be valid

    # torchrun or a multi-task submitit/SLURM job: the processes share one ES population; a vLLM engine may span
    # several GPUs (tensor parallel), so each process binds a group of that size
    distributed.init(cfg.generation.vllm.tensor_parallel_size if cfg.generation.backend == "vllm" else 1)
    return run_es(cfg, run_dir)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
@user_errors_in_one_line
def main(dcfg: DictConfig) -> dict:
    return launch(dcfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
