"""Runs -> one tidy DataFrame: one row per run x step, config as flat dotted columns.

Any directory tree works: a run directory is any directory holding a run.json (the shared log schema written
by ES and the RL baselines); its metrics.jsonl gives the rows. Train and eval lines of the same step are
merged into one row (`has_train`, `has_eval` say which were there); list-valued fields (seeds, coefficients,
the update) are dropped, since tables and figures only need scalars.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from es_repro.run.log import METRICS_FILE, RUN_FILE, read_jsonl

# Config keys that never change a run's result (or differ per seed), so they do not define a "setting".
IGNORED_KEYS = {"experiment", "seed", "out_root", "checkpoint_every", "keep_checkpoints", "progress"}
IGNORED_PREFIXES = ("logger.", "generation.")
# Baseline (TRL) bookkeeping that may differ per run; a seed there is the run seed again.
IGNORED_BASELINE_LEAVES = {"seed", "data_seed", "output_dir", "logging_dir", "run_name", "report_to",
                           "logging_steps", "save_steps", "disable_tqdm"}
# RL hyper-parameters (RL runs only: ES runs carry an unused baseline block); the first key present wins.
# baseline.kl_coef is the schema's (GRPO's beta, PPO's kl_coef); the others are TRL's own names, as fallbacks.
BETA_KEYS = ("baseline.kl_coef", "baseline.trl.beta", "baseline.trl.kl_coef", "baseline.beta")
LR_KEYS = ("baseline.trl.learning_rate", "baseline.learning_rate", "baseline.lr")
GROUP_KEYS = ("baseline.trl.num_generations", "baseline.num_generations", "baseline.group_size")
RUN_COLUMNS = ["run_dir", "method", "status", "seed", "setting"]


class RunFormatError(ValueError):
    """A run.json or metrics.jsonl does not follow the shared log schema; the message names the file and field."""


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"es": {"sigma": 1e-3}} -> {"es.sigma": 1e-3}; lists become JSON strings so columns stay hashable."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple, dict)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def is_setting_key(key: str) -> bool:
    if key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES):
        return False
    return not (key.startswith("baseline.") and key.rsplit(".", 1)[-1] in IGNORED_BASELINE_LEAVES)


def setting_of(flat_config: dict[str, Any]) -> str:
    """A run's setting: every result-changing config value except the seed, as a canonical JSON string."""
    return json.dumps({k: v for k, v in sorted(flat_config.items()) if is_setting_key(k) and v is not None},
                      sort_keys=True, default=str)


def _first(flat: dict[str, Any], keys: Iterable[str]) -> Any:
    return next((flat[k] for k in keys if flat.get(k) is not None), None)


def run_rows(info: dict, records: Iterable[dict], run_dir: str) -> list[dict]:
    """Rows of one run from its run.json dict and metrics records (shared by the JSONL and wandb loaders)."""
    for field in ("kind", "config"):
        if field not in info:
            raise RunFormatError(f"{run_dir}/{RUN_FILE}: missing field {field!r}")
    if not isinstance(info["config"], dict):
        raise RunFormatError(f"{run_dir}/{RUN_FILE}: field 'config' must be an object")
    flat = flatten(info["config"])
    rl = info["kind"] != "es"
    run = {**flat, "run_dir": run_dir, "method": info["kind"], "status": info.get("status"),
           "seed": info["config"].get("seed"), "setting": setting_of(flat),
           "beta": _first(flat, BETA_KEYS) if rl else None, "lr": _first(flat, LR_KEYS) if rl else None,
           "group": _first(flat, GROUP_KEYS) if rl else None}
    steps: dict[int, dict] = {}
    for i, rec in enumerate(records):
        kind = rec.get("kind")
        if kind not in ("train", "eval"):
            continue  # other line kinds (future) are not part of the tidy frame
        if rec.get("step") is None:
            raise RunFormatError(f"{run_dir}/{METRICS_FILE}: line {i + 1} ({kind}) has no 'step'")
        row = steps.setdefault(int(rec["step"]), {"has_train": False, "has_eval": False})
        row[f"has_{kind}"] = True
        for k, v in rec.items():
            if k == "kind" or isinstance(v, (list, dict)):
                continue
            if k == "samples" and kind == "eval" and row.get("samples") is not None:
                continue  # the train line's count wins; both should agree
            row[k] = v
    out, train_s = [], 0.0
    for step, row in sorted(steps.items()):
        train_s += (row.get("time_total") or 0.0) if row["has_train"] else 0.0
        out.append({**run, "step": step, **row, "train_s": train_s})  # training wall-clock so far (no evaluations)
    return out


def find_runs(root: str | Path) -> list[Path]:
    """Every directory under ``root`` (or ``root`` itself) that holds a run.json, sorted."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"runs path {root} does not exist")
    if (root / RUN_FILE).is_file():
        return [root]
    return sorted(p.parent for p in root.rglob(RUN_FILE) if ".hydra" not in p.parts)


def load_run(run_dir: str | Path) -> list[dict]:
    run_dir = Path(run_dir)
    try:
        info = json.loads((run_dir / RUN_FILE).read_text())
    except json.JSONDecodeError as err:
        raise RunFormatError(f"{run_dir / RUN_FILE}: not valid JSON ({err})") from err
    try:
        records = list(read_jsonl(run_dir / METRICS_FILE))
    except json.JSONDecodeError as err:
        raise RunFormatError(f"{run_dir / METRICS_FILE}: a line is not valid JSON ({err})") from err
    return run_rows(info, records, str(run_dir))


def tidy(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    front = RUN_COLUMNS + ["beta", "lr", "group", "step", "samples", "has_train", "has_eval"]
    front = [c for c in front if c in df.columns]
    return df[front + sorted(c for c in df.columns if c not in front)].reset_index(drop=True)


def load_runs(*roots: str | Path) -> pd.DataFrame:
    """The tidy frame of every run found under ``roots``. Runs without metrics contribute no rows."""
    rows: list[dict] = []
    for root in roots:
        for run_dir in find_runs(root):
            rows.extend(load_run(run_dir))
    return tidy(rows)


def load_wandb(project: str, entity: str | None = None, api: Any = None) -> pd.DataFrame:
    """The same tidy frame from wandb runs mirrored by es_repro.run.log (public API; needs network and login).

    wandb holds only the numeric metrics and the config, not run.json's kind: the method is the config's
    baseline.method unless absent or "none" (then "es"). wandb merges what was logged at one step into one
    history row, so a row is split back into an eval record (its eval_* keys) and a train record (the rest).
    Tested offline against a stand-in for wandb.Api only; not yet against the live service.
    """
    if api is None:
        import wandb  # lazily: the local loader must not need wandb

        api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    rows: list[dict] = []
    for run in api.runs(path):
        config = {k: v for k, v in dict(run.config).items() if not k.startswith("_")}
        baseline = config.get("baseline") if isinstance(config.get("baseline"), dict) else {}
        method = baseline.get("method") or "none"
        info = {"kind": "es" if method == "none" else method, "config": config, "status": run.state}
        records = []
        for h in run.scan_history():
            h = {k: v for k, v in h.items() if v is not None}
            common = {"step": h.get("step", h.get("_step")), "samples": h.get("samples")}
            evals = {k: v for k, v in h.items() if k.startswith("eval_")}
            rest = {k: v for k, v in h.items() if not k.startswith(("eval_", "_")) and k not in common}
            if evals:
                records.append({**common, **evals, "kind": "eval"})
            if rest.keys() - {"generation"}:
                records.append({**common, **rest, "kind": "train"})
        rows.extend(run_rows(info, records, f"wandb:{path}/{run.id}"))
    return tidy(rows)
