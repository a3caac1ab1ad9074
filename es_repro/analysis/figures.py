"""The paper's figures from the tidy frame: reward vs KL with a Pareto front per method, and learning curves
against sample evaluations (mean +- std band over seeds). Each figure carries the command that remakes it."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from es_repro.analysis.paper import method_name
from es_repro.analysis.render import regenerate_line
from es_repro.analysis.select import FACET, evals, require, setting_label, varying_keys
from es_repro.analysis.tables import NoData, reward_metric


def pareto_front(kl, reward) -> np.ndarray:
    """Mask of the points no other point dominates; q dominates p when q.kl <= p.kl and q.reward >= p.reward
    with one of them strict (lower KL and higher reward are both better). NaN points are never on the front."""
    kl, reward = np.asarray(kl, float), np.asarray(reward, float)
    ok = ~(np.isnan(kl) | np.isnan(reward))
    k, r = kl[ok], reward[ok]
    q_kl, p_kl, q_r, p_r = k[:, None], k[None, :], r[:, None], r[None, :]  # dominates[q, p]
    dominates = (q_kl <= p_kl) & (q_r >= p_r) & ((q_kl < p_kl) | (q_r > p_r))
    mask = np.zeros(len(kl), bool)
    mask[ok] = ~dominates.any(axis=0)
    return mask


def reward_kl_points(df: pd.DataFrame, points: str = "all", include_base: bool = False,
                     finished_only: bool = True) -> pd.DataFrame:
    """One point per evaluation with KL logged ("all": every checkpoint, as the paper plotted; "final": each
    run's last), with x = eval_kl, y = the paper's reward, and ``on_front`` per task x model x method."""
    if points not in ("all", "final"):
        raise ValueError(f"points={points!r} is not allowed; choose one of: all, final")
    require(df, FACET + ["method", "step"], "reward_kl_points")
    rows = evals(df, "eval_kl")
    if finished_only:
        rows = rows[rows["status"] == "finished"]
    if not include_base:
        rows = rows[rows["step"] > 0]
    if rows.empty:
        raise NoData("reward vs KL: no run logged eval_kl (set eval.kl_samples > 0)")
    if points == "final":
        rows = rows.sort_values("step").groupby("run_dir").tail(1)
    parts = []
    for _, part in rows.groupby("task.name", sort=True):
        metric = reward_metric(part)
        part = part.assign(kl=part["eval_kl"].astype(float), reward=part[metric].astype(float), reward_metric=metric)
        part["on_front"] = False
        for _, g in part.groupby(FACET + ["method"], sort=True):
            part.loc[g.index, "on_front"] = pareto_front(g["kl"], g["reward"])
        parts.append(part)
    return pd.concat(parts).reset_index(drop=True)


METHOD_COLORS = {"es": "C0", "grpo": "C1", "ppo": "C2"}


def method_color(method: str) -> str:
    """The same colour for a method in every panel and figure."""
    return METHOD_COLORS.get(method, f"C{3 + sum(map(ord, method)) % 7}")


def stamp(fig: plt.Figure, command: str | None) -> None:
    """A footer line on the figure naming the command that regenerates it."""
    fig.text(0.01, 0.005, regenerate_line(command), fontsize=6, color="0.4", ha="left", va="bottom")


def save_figure(fig: plt.Figure, stem: str | Path, command: str | None) -> list[Path]:
    """<stem>.png and <stem>.pdf, with the regenerate command in their metadata as well as on the figure."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    text = regenerate_line(command)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight", metadata={"Software": "es_repro.analysis", "Description": text})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Creator": "es_repro.analysis", "Subject": text})
    return paths


def _facets(df: pd.DataFrame, title: str) -> tuple[plt.Figure, list, list]:
    keys = sorted(df.groupby(FACET, sort=True).groups)
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    fig.suptitle(title)
    return fig, list(axes[0]), keys


def plot_reward_vs_kl(points: pd.DataFrame, command: str | None = None) -> plt.Figure:
    """Scatter of reward against KL per method, each method's Pareto front drawn as a step line."""
    fig, axes, keys = _facets(points, "Reward vs KL to the base model (Pareto front per method)")
    for ax, key in zip(axes, keys):
        part = points[(points["task.name"] == key[0]) & (points["model.name"] == key[1])]
        for method, g in part.groupby("method", sort=True):
            color = method_color(method)
            ax.scatter(g["kl"], g["reward"], s=14, alpha=0.5, color=color, label=method_name(method))
            front = g[g["on_front"]].sort_values("kl")
            ax.step(front["kl"], front["reward"], where="post", color=color, lw=1.5)
        ax.set(title=f"{key[0]} / {key[1]}", xlabel="KL to base (k3, per token)", ylabel=part["reward_metric"].iloc[0])
        ax.legend(fontsize=8)
    stamp(fig, command)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def curves(df: pd.DataFrame, metric: str = "reward_mean", x: str = "samples", ddof: int = 1,
           finished_only: bool = True) -> pd.DataFrame:
    """Mean, std (across seeds at each x, ddof=1 as in the tables; NaN for one seed) and n of ``metric`` per
    task x model x method x setting.
    Runs logged at different x are linearly interpolated onto the union of their x values, restricted to
    the range every run covers, so a band never mixes a different number of seeds."""
    require(df, FACET + ["method", "setting", x], "curves")
    rows = df[df[metric].notna() & df[x].notna()] if metric in df.columns else df.iloc[0:0]
    if finished_only:
        rows = rows[rows["status"] == "finished"]  # a failed run would cut every band short
    if rows.empty:
        raise NoData(f"learning curves: no run logged {metric}")
    out = []
    for key, g in rows.groupby(FACET + ["method", "setting"], sort=True):
        series = [(r[x].to_numpy(float), r[metric].to_numpy(float)) for _, r in g.sort_values(x).groupby("run_dir")]
        lo, hi = max(s[0][0] for s in series), min(s[0][-1] for s in series)
        grid = np.unique(np.concatenate([s[0] for s in series]))
        grid = grid[(grid >= lo) & (grid <= hi)]
        if grid.size == 0:
            continue  # the runs share no range of x
        ys = np.stack([np.interp(grid, sx, sy) for sx, sy in series])
        std = ys.std(0, ddof=ddof) if len(series) > ddof else np.full(grid.size, np.nan)
        out.append(pd.DataFrame({"task.name": key[0], "model.name": key[1], "method": key[2], "setting": key[3],
                                 x: grid, "mean": ys.mean(0), "std": std, "n": len(series)}))
    if not out:
        raise NoData(f"learning curves: the runs logging {metric} share no range of {x}")
    result = pd.concat(out, ignore_index=True)
    labels = {}
    for _, g in result.groupby(FACET + ["method"], sort=True):
        keys = varying_keys(sorted(set(g["setting"])))
        labels.update({s: setting_label(s, keys) for s in set(g["setting"])})
    result["label"] = [method_name(m) + (f" ({labels[s]})" if labels[s] else "")
                       for m, s in zip(result["method"], result["setting"])]
    return result


X_LABELS = {"samples": "sample evaluations", "train_s": "training seconds (wall clock, evaluations excluded)"}


def plot_learning_curves(curve: pd.DataFrame, metric: str = "reward_mean", x: str = "samples",
                         command: str | None = None) -> plt.Figure:
    """Mean line and mean +- std band over seeds per method (and setting), one panel per task x model."""
    fig, axes, keys = _facets(curve, f"{metric} against {x} (mean ± std over seeds)")
    for ax, key in zip(axes, keys):
        part = curve[(curve["task.name"] == key[0]) & (curve["model.name"] == key[1])]
        for i, (label, g) in enumerate(part.groupby("label", sort=True)):
            n = int(g["n"].iloc[0])
            ax.plot(g[x], g["mean"], color=f"C{i}", label=f"{label} (n={n})")
            ax.fill_between(g[x], g["mean"] - g["std"], g["mean"] + g["std"], color=f"C{i}", alpha=0.2)
        ax.set(title=f"{key[0]} / {key[1]}", xlabel=X_LABELS.get(x, x), ylabel=metric)
        ax.legend(fontsize=8)
    stamp(fig, command)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig
