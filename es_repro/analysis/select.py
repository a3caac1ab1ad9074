"""Picking rows out of the tidy frame: final evaluations, base-model evaluations, best setting of a grid."""
from __future__ import annotations

import json

import pandas as pd

FACET = ["task.name", "model.name"]  # tables and figures are always split by task and model


def require(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{what} needs column(s) {missing}; the runs loaded have none (is the log schema right?)")


def evals(df: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """Eval rows, optionally only those where ``metric`` was logged."""
    if df.empty or "has_eval" not in df.columns:
        return df.iloc[0:0]
    out = df[df["has_eval"].fillna(False).astype(bool)]
    if metric is not None:
        out = out[out[metric].notna()] if metric in out.columns else out.iloc[0:0]
    return out


def final_evals(df: pd.DataFrame, metric: str = "eval_accuracy", finished_only: bool = True) -> pd.DataFrame:
    """One row per run: its last evaluation (highest step) with ``metric`` logged, after training (step > 0)."""
    rows = evals(df, metric)
    rows = rows[rows["step"] > 0]
    if finished_only:
        rows = rows[rows["status"] == "finished"]
    return rows.sort_values("step").groupby("run_dir", sort=True).tail(1).reset_index(drop=True)


def base_evals(df: pd.DataFrame, metric: str = "eval_accuracy") -> pd.DataFrame:
    """One row per run: its step-0 evaluation, i.e. the base model before any update."""
    rows = evals(df, metric)
    return rows[rows["step"] == 0].groupby("run_dir", sort=True).tail(1).reset_index(drop=True)


def method_key(df: pd.DataFrame) -> pd.Series:
    """The method as the paper names its columns: GRPO is split by group size (grpo_g8, grpo_g30) when logged."""
    group = df["group"] if "group" in df.columns else pd.Series(None, index=df.index, dtype=object)

    def key(method, g):
        if method == "grpo" and pd.notna(g):
            return f"grpo_g{int(g)}"
        return method

    return pd.Series([key(m, g) for m, g in zip(df["method"], group)], index=df.index, dtype=object)


def varying_keys(settings: list[str]) -> list[str]:
    """Config keys whose values differ among these setting strings (what a grid varies). A key missing from some
    settings (a run logged before that setting existed) varies only if the runs that have it disagree."""
    parsed = [json.loads(s) for s in settings]
    keys = sorted(set().union(*parsed)) if parsed else []
    return [k for k in keys if len({json.dumps(p[k]) for p in parsed if k in p}) > 1]


def setting_label(setting: str, keys: list[str]) -> str:
    """'trl.beta=0.001, trl.learning_rate=1e-06' for the varying keys of one setting ('' when nothing varies)."""
    values = json.loads(setting)
    return ", ".join(f"{k.split('.', 1)[-1]}={values.get(k)}" for k in keys)


def seed_stats(finals: pd.DataFrame, metric: str, by: list[str], ddof: int = 1) -> pd.DataFrame:
    """mean, std (ddof=1: the sample std over seeds; NaN for one seed) and n of ``metric`` per group."""
    g = finals.groupby(by, sort=True, dropna=False)[metric]
    return g.agg(mean="mean", std=lambda s: s.std(ddof=ddof), n="count").reset_index()


def best_settings(finals: pd.DataFrame, metric: str, by: list[str], ddof: int = 1) -> pd.DataFrame:
    """Per group in ``by``: the setting with the best mean ``metric`` over seeds (ties: the first setting
    in sorted order), with its mean/std/n, how many settings competed, and a label of what the grid varied."""
    stats = seed_stats(finals, metric, by + ["setting"], ddof)
    out = []
    for _, grid in stats.groupby(by, sort=True, dropna=False):
        best = grid.sort_values(["mean", "setting"], ascending=[False, True], kind="mergesort").iloc[0].copy()
        keys = varying_keys(list(grid["setting"]))
        best["n_settings"] = len(grid)
        best["setting_label"] = setting_label(best["setting"], keys)
        out.append(best)
    return pd.DataFrame(out).reset_index(drop=True)
