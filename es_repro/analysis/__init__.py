"""Paper tables and figures from logged runs (local run directories or wandb).

    df = load_runs("results/")            # one row per run x step, config as dotted columns
    table1(df); stability_table(df)       # DataFrames; *_markdown / *_latex render them
    reward_kl_points(df); curves(df)      # figure data; plot_* draw them; save_figure stamps the command

Command line: python -m es_repro.analysis RUNS --out DIR (every artifact, no Jupyter).
"""
from es_repro.analysis.cli import main, make_all, regen_command
from es_repro.analysis.figures import (curves, pareto_front, plot_learning_curves, plot_reward_vs_kl, reward_kl_points,
                                       save_figure)
from es_repro.analysis.load import RunFormatError, find_runs, flatten, load_run, load_runs, load_wandb
from es_repro.analysis.paper import paper_table1, paper_table2
from es_repro.analysis.select import base_evals, best_settings, final_evals
from es_repro.analysis.tables import (NoData, stability_latex, stability_markdown, stability_table, table1,
                                      table1_latex, table1_markdown)

__all__ = ["curves", "pareto_front", "plot_learning_curves", "plot_reward_vs_kl", "reward_kl_points", "save_figure",
           "RunFormatError", "find_runs", "flatten", "load_run", "load_runs", "load_wandb", "paper_table1",
           "paper_table2", "base_evals", "best_settings", "final_evals", "NoData", "stability_latex",
           "stability_markdown", "stability_table", "table1", "table1_latex", "table1_markdown", "main", "make_all",
           "regen_command"]
