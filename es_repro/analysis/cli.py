"""python -m es_repro.analysis RUNS... --out DIR: every table and figure from a tree of runs, no Jupyter.

An artifact whose runs are absent (no KL logged, no finished run) is skipped with a message naming what is
missing; the others are still written. Each file names the command that regenerates it.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Callable

import pandas as pd

from es_repro.analysis.tables import NoData

ARTIFACTS = ("table1", "stability", "reward_vs_kl", "learning_curves", "learning_curves_accuracy",
             "eval_reward_vs_time")


def regen_command(argv: list[str]) -> str:
    return "python -m es_repro.analysis " + shlex.join(argv)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def make_all(df: pd.DataFrame, out: str | Path, command: str | None = None, finished_only: bool = True,
             log: Callable[[str], None] = print) -> dict[str, list[Path] | str]:
    """Write every artifact under ``out``; returns {artifact: files written, or the reason it was skipped}."""
    import matplotlib.pyplot as plt

    from es_repro.analysis import figures, tables

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "runs.csv", index=False)

    def table1():
        t = tables.table1(df, finished_only=finished_only)
        t.to_csv(out / "table1.csv", index=False)
        return [out / "table1.csv", _write(out / "table1.md", tables.table1_markdown(t, command)),
                _write(out / "table1.tex", tables.table1_latex(t, command))]

    def stability():
        t = tables.stability_table(df, finished_only=finished_only)
        t.to_csv(out / "stability.csv", index=False)
        return [out / "stability.csv", _write(out / "stability.md", tables.stability_markdown(t, command)),
                _write(out / "stability.tex", tables.stability_latex(t, command))]

    def figure(name: str, data: pd.DataFrame, fig) -> list[Path]:
        data.to_csv(out / f"{name}.csv", index=False)
        try:
            return [out / f"{name}.csv", *figures.save_figure(fig, out / name, command)]
        finally:
            plt.close(fig)

    def reward_vs_kl():
        pts = figures.reward_kl_points(df, finished_only=finished_only)
        return figure("reward_vs_kl", pts, figures.plot_reward_vs_kl(pts, command))

    def curve(name: str, metric: str, x: str = "samples"):
        c = figures.curves(df, metric, x, finished_only=finished_only)
        return figure(name, c, figures.plot_learning_curves(c, metric, x, command=command))

    makers = {"table1": table1, "stability": stability, "reward_vs_kl": reward_vs_kl,
              "learning_curves": lambda: curve("learning_curves", "reward_mean"),
              "learning_curves_accuracy": lambda: curve("learning_curves_accuracy", "eval_accuracy"),
              # held-out reward against training wall-clock seconds: methods compared at equal time, not samples
              "eval_reward_vs_time": lambda: curve("eval_reward_vs_time", "eval_reward", "train_s")}
    results: dict[str, list[Path] | str] = {}
    for name in ARTIFACTS:
        try:
            results[name] = makers[name]()
            log(f"[analysis] {name}: " + ", ".join(p.name for p in results[name]))
        except NoData as err:
            results[name] = str(err)
            log(f"[analysis] skipped {name}: {err}")
    return results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m es_repro.analysis", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", help="directories holding run directories (found by their run.json)")
    parser.add_argument("--out", required=True, help="directory for tables (md/tex/csv) and figures (png/pdf)")
    parser.add_argument("--wandb-project", help="also load this wandb project's runs (needs network and login)")
    parser.add_argument("--wandb-entity", help="wandb entity (user or team) of --wandb-project")
    parser.add_argument("--include-unfinished", action="store_true",
                        help="use running/failed runs too (default: finished runs only)")
    args = parser.parse_args(argv)
    if not args.runs and not args.wandb_project:
        parser.error("give at least one runs directory or --wandb-project")

    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from es_repro.analysis.load import load_runs, load_wandb

    try:
        frames = [load_runs(*args.runs)] if args.runs else []
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.wandb_project:
        frames.append(load_wandb(args.wandb_project, args.wandb_entity))
    df = pd.concat([f for f in frames if not f.empty], ignore_index=True) if any(not f.empty for f in frames) else None
    if df is None:
        print(f"error: no run directory (a directory with run.json and metrics) under {args.runs}", file=sys.stderr)
        return 2
    print(f"[analysis] {df['run_dir'].nunique()} runs, {len(df)} rows")
    make_all(df, args.out, regen_command(argv), finished_only=not args.include_unfinished)
    return 0
