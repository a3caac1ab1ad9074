"""The paper's tables from the tidy frame: Table 1 (final accuracy, best of each grid) and the stability
table (Table 2: mean and std over seeds of final reward and KL), each beside the paper's numbers."""
from __future__ import annotations

import numpy as np
import pandas as pd

from es_repro.analysis.paper import method_name, paper_table1, paper_table2
from es_repro.analysis.render import DASH, fmt, latex_table, markdown_table, mean_std
from es_repro.analysis.select import (FACET, base_evals, best_settings, final_evals, method_key, require, seed_stats,
                                      setting_label, varying_keys)

METHOD_ORDER = ["base", "es", "ppo", "grpo_g8", "grpo_g30", "grpo", "grpo_verl", "drgrpo_verl"]
TABLE1_TASK = "countdown"  # the paper's Table 1 numbers are Countdown accuracies; Table 2 rows name their task


class NoData(ValueError):
    """The runs hold nothing this artifact can be made from; the message says what is missing."""


def table1(df: pd.DataFrame, metric: str = "eval_accuracy", scale: float = 100.0, finished_only: bool = True,
           ddof: int = 1) -> pd.DataFrame:
    """Final ``metric`` x ``scale`` per task x model x method: mean, std (over seeds), n of the best setting
    of the method's grid (best mean), and the paper's Table 1 number (Countdown only). Base = step-0 evals."""
    require(df, FACET + ["method", "setting", "step"], "table1")
    finals = final_evals(df, metric, finished_only)
    if finals.empty:
        raise NoData(f"table1: no {'finished ' if finished_only else ''}run logged {metric} after training")
    finals = finals.assign(method_key=method_key(finals))
    best = best_settings(finals, metric, FACET + ["method_key"], ddof)
    base = seed_stats(base_evals(df, metric), metric, FACET, ddof)
    base = base.assign(method_key="base", setting="", setting_label="", n_settings=1)
    out = pd.concat([base, best], ignore_index=True)
    out[["mean", "std"]] = out[["mean", "std"]] * scale
    out = out.rename(columns={"task.name": "task", "model.name": "model", "method_key": "method"})
    paper = paper_table1().set_index(["model_key", "method"])["accuracy"]
    out["paper"] = [paper.get((str(m).lower(), k), np.nan) if t == TABLE1_TASK else np.nan
                    for t, m, k in zip(out["task"], out["model"], out["method"])]
    order = {k: i for i, k in enumerate(METHOD_ORDER)}
    out = out.sort_values(["task", "model", "method"],
                          key=lambda s: s.map(order).fillna(99) if s.name == "method" else s)
    return out[["task", "model", "method", "mean", "std", "n", "n_settings", "setting_label", "setting", "paper"]
               ].reset_index(drop=True)


def _table1_rows(t1: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str]]:
    methods = [m for m in METHOD_ORDER if m in set(t1["method"])] + sorted(set(t1["method"]) - set(METHOD_ORDER))
    header = ["Task", "Model"] + [h for m in methods for h in (method_name(m), f"{method_name(m)} (paper)")]
    rows, notes = [], []
    for (task, model), g in t1.groupby(["task", "model"], sort=True):
        cells = g.set_index("method")
        row = [task, model]
        for m in methods:
            r = cells.loc[m] if m in cells.index else None
            row += [mean_std(r["mean"], r["std"], r["n"], ".1f") if r is not None else DASH,
                    fmt(r["paper"], ".1f") if r is not None else DASH]
        rows.append(row)
        for m, r in cells.iterrows():
            if m != "base" and r["n_settings"] > 1:
                notes.append(f"{task} / {model} / {method_name(m)}: best of {int(r['n_settings'])} settings: "
                             f"{r['setting_label']}")
    return header, rows, notes


TABLE1_CAPTION = ("Table 1: final held-out accuracy (%), mean ± std over seeds (n runs), best setting of each "
                  "method's grid per model; Base = the model before training; paper = Qiu et al. Table 1 (Countdown).")


def table1_markdown(t1: pd.DataFrame, command: str | None = None) -> str:
    header, rows, notes = _table1_rows(t1)
    return markdown_table(header, rows, TABLE1_CAPTION, command, notes)


def table1_latex(t1: pd.DataFrame, command: str | None = None) -> str:
    header, rows, notes = _table1_rows(t1)
    return latex_table(header, rows, TABLE1_CAPTION, command, "tab:table1", notes)


def reward_metric(df: pd.DataFrame) -> str:
    """The reward the paper reports: Conciseness's normalised reward when logged, else eval_reward."""
    col = "eval_display_reward"
    return col if col in df.columns and df[col].notna().any() else "eval_reward"


def _hyper(row: pd.Series) -> tuple:
    """(beta, alpha, sigma) as the paper's Table 2 lists them: ES alpha/sigma; RL KL coefficient and lr."""
    if row["method"] == "es":
        return np.nan, row.get("es.alpha", np.nan), row.get("es.sigma", np.nan)
    return row.get("beta", np.nan), row.get("lr", np.nan), np.nan


def _close(a, b) -> bool:
    a, b = (np.nan if v is None else float(v) for v in (a, b))
    return (np.isnan(a) and np.isnan(b)) or bool(np.isclose(a, b, rtol=1e-6, atol=0.0))


def stability_table(df: pd.DataFrame, finished_only: bool = True, ddof: int = 1,
                    min_reward: float | None = None) -> pd.DataFrame:
    """Table 2's format: per task x model x method x setting, the mean and std over seeds of the final reward
    (normalised for Conciseness) and the final KL to the base model, with the paper's row when one matches
    (same method, beta, alpha, sigma). ``min_reward`` keeps rows above it (the paper showed reward > 0.85)."""
    require(df, FACET + ["method", "setting", "step"], "stability_table")
    out = []
    for _, part in df.groupby("task.name", sort=True):  # the reward column is chosen per task
        metric = reward_metric(part)
        finals = final_evals(part, metric, finished_only)
        if finals.empty:
            continue
        if "eval_kl" not in finals.columns:
            finals = finals.assign(eval_kl=np.nan)
        for key, runs in finals.groupby(FACET + ["method", "setting"], sort=True, dropna=False):
            beta, alpha, sigma = _hyper(runs.iloc[0])
            reward, kl = runs[metric], runs["eval_kl"]
            out.append({"task": key[0], "model": key[1], "method": key[2], "beta": beta, "alpha": alpha,
                        "sigma": sigma, "n": int(reward.count()), "reward_mean": reward.mean(),
                        "reward_std": reward.std(ddof=ddof), "kl_mean": kl.mean(), "kl_std": kl.std(ddof=ddof),
                        "reward_metric": metric, "setting": key[3]})
    if not out:
        raise NoData("stability_table: no finished run logged an evaluation after training")
    table = pd.DataFrame(out)
    table["other"] = _other_differences(table)
    if min_reward is not None:
        table = table[table["reward_mean"] > min_reward]
    return _join_paper2(table).reset_index(drop=True)


_SHOWN = ("alpha", "sigma", "kl_coef", "learning_rate", "beta")  # hyperparameters that have their own columns


def _other_differences(table: pd.DataFrame) -> list[str]:
    """Per row, the config values (other than beta/alpha/sigma) that tell it apart from the same method's other
    rows, e.g. 'lowrank=4' or 'generations=60'; '' where nothing else differs."""
    labels = {}
    for _, g in table.groupby(["task", "model", "method"], sort=False):
        keys = [k for k in varying_keys(sorted(set(g["setting"]))) if k.rsplit(".", 1)[-1] not in _SHOWN]
        labels.update({s: setting_label(s, keys) for s in g["setting"]})
    return [labels[s] for s in table["setting"]]


def _join_paper2(table: pd.DataFrame) -> pd.DataFrame:
    paper = paper_table2()
    cols = ["reward_mean", "reward_std", "kl_mean", "kl_std", "note"]
    found = {f"paper_{c}": [] for c in cols}
    for _, r in table.iterrows():
        hit = paper[(paper["task"] == r["task"]) & (paper["model_key"] == str(r["model"]).lower())
                    & (paper["method"] == r["method"])]
        hit = hit[[all(_close(h[k], r[k]) for k in ("beta", "alpha", "sigma")) for _, h in hit.iterrows()]]
        for c in cols:
            found[f"paper_{c}"].append(hit.iloc[0][c] if len(hit) else (np.nan if c != "note" else ""))
    return table.assign(**found)


STABILITY_CAPTION = ("Stability (the paper's Table 2 format): final reward and KL to the base model, mean ± std "
                     "over seeds (n runs) per setting; alpha = ES step size or RL learning rate, beta = RL KL "
                     "coefficient; paper = Qiu et al. Table 2 (Conciseness, Qwen2.5-7B-Instruct).")


def _stability_rows(st: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    other = "other" in st.columns and st["other"].astype(bool).any()  # a column only when some row needs it
    header = ["Task", "Model", "Method", *(["other"] if other else []), "beta", "alpha", "sigma", "reward", "KL",
              "reward (paper)", "KL (paper)"]
    rows = [[r["task"], r["model"], method_name(r["method"]), *([r["other"] or DASH] if other else []),
             fmt(r["beta"], "g"), fmt(r["alpha"], "g"), fmt(r["sigma"], "g"),
             mean_std(r["reward_mean"], r["reward_std"], r["n"]),
             mean_std(r["kl_mean"], r["kl_std"], r["n"]),
             mean_std(r["paper_reward_mean"], r["paper_reward_std"])
             + (f" ({r['paper_note']})" if r["paper_note"] else ""),
             mean_std(r["paper_kl_mean"], r["paper_kl_std"])] for _, r in st.iterrows()]
    return header, rows


def stability_markdown(st: pd.DataFrame, command: str | None = None) -> str:
    header, rows = _stability_rows(st)
    notes = [f"reward column: {', '.join(sorted(set(st['reward_metric'])))}"]
    return markdown_table(header, rows, STABILITY_CAPTION, command, notes)


def stability_latex(st: pd.DataFrame, command: str | None = None) -> str:
    header, rows = _stability_rows(st)
    return latex_table(header, rows, STABILITY_CAPTION, command, "tab:stability")
