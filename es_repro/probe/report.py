"""The probe's report, from a run directory alone: a Markdown table, two figures, summary JSON and the one-line
recommendation (statistics: es_repro/probe/stats.py).

    python -m es_repro.probe --report RUN_DIR [--reward binary|shaped]

Files (per reward kind, so both can sit side by side): report_<reward>.md, summary_<reward>.json,
best_of_n_<reward>.png/.pdf (best-of-N gain vs N per sigma, 95% intervals over batches, exact curve as a line),
landscape_<reward>.png/.pdf (p(dR > 0), p(dR = 0) and the output-identical share vs sigma; the reward spread vs sigma).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from es_repro.probe.stats import recommend, sigma_summary
from es_repro.probe.store import load_results
from es_repro.util.files import write_json_atomic


def report_command(run_dir: Path, reward: str) -> str:
    return f"python -m es_repro.probe --report {run_dir} --reward {reward}"


def summarise(run_dir: Path, probe) -> dict:
    base, results = load_results(run_dir)
    sigmas = {}
    for sigma, data in sorted(results.items()):
        s = sigma_summary(data[probe.reward], base[probe.reward], data["hashes"], base["hashes"], reward=probe.reward,
                          reward_max=probe.reward_max, n_values=probe.n_values, subsets=probe.subsets,
                          batches=probe.batches, n_ref=probe.n_ref)
        s["seconds_per_candidate"] = float(data["seconds"].mean())
        sigmas[sigma] = s
    return {"reward": probe.reward, "r0": float(base[probe.reward].mean()), "prompts": int(base["hashes"].shape[0]),
            "base_seconds": float(base["seconds"]), "sigmas": sigmas,
            "recommendation": recommend(sigmas, probe.n_ref, probe.identical_max) if sigmas else "nothing scored yet",
            "settings": asdict(probe)}


def _f(x: float, spec: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(summary: dict, title: str, command: str) -> str:
    sig = summary["sigmas"]
    ns = [g["n"] for g in next(iter(sig.values()))["gain"]] if sig else []
    unit = next(iter(sig.values()))["unit"] if sig else "headroom"
    head = ["sigma", "M", "identical", "changed prompts", "spread", "E[dR]", "p(dR>0)", "p(dR=0)", "q0.95(dR)",
            *[f"G({n})" for n in ns], "N90", "s/cand."]
    lines = [f"# {title}", "",
             f"Reward: {summary['reward']}; base model R0 = {summary['r0']:.4f} on P = {summary['prompts']} prompts. "
             "G(N): best-of-N gain E[max of N dR] "
             f"{'/ headroom (1 - R0 binary, reward_max - R0 shaped)' if unit == 'headroom' else 'in reward units'} "
             "[95% interval over batches]; identical: share of candidates with the base model's exact outputs; "
             "changed prompts: mean share of prompts whose output changed; spread: std of R_i over candidates.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sigma, s in sig.items():
        gains = [f"{_f(g['gain'])} [{_f(g['lo'])}, {_f(g['hi'])}]" for g in s["gain"]]
        lines.append("| " + " | ".join([f"{sigma:g}", str(s["candidates"]), _f(s["identical"], ".2f"), _f(s["changed"], ".2f"),
                                        _f(s["spread"], ".4f"), _f(s["e_dr"], "+.4f"), _f(s["p_up"], ".2f"),
                                        _f(s["p_zero"], ".2f"), _f(s["q95"], "+.4f"), *gains,
                                        _f(s["n90"], ".0f"), _f(s["seconds_per_candidate"], ".3g")]) + " |")
    lines += ["", f"**Recommendation:** {summary['recommendation']}", "", f"Regenerate: {command}", ""]
    return "\n".join(lines)


def figures(summary: dict, run_dir: Path, command: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from es_repro.analysis.figures import save_figure, stamp

    reward, sig = summary["reward"], summary["sigmas"]
    paths = []
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k, (sigma, s) in enumerate(sig.items()):
        n = np.array([g["n"] for g in s["gain"]])
        gain = np.array([g["gain"] for g in s["gain"]])
        lo, hi = np.array([g["lo"] for g in s["gain"]]), np.array([g["hi"] for g in s["gain"]])
        err = np.where(np.isnan(lo), 0, [gain - lo, hi - gain])
        ax.errorbar(n, gain, yerr=err, fmt="o", color=f"C{k}", capsize=3, label=f"sigma={sigma:g}")
        if s["curve"]:
            ax.plot(np.arange(1, len(s["curve"]) + 1), s["curve"], color=f"C{k}", lw=1)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("population N")
    ax.set_ylabel(f"best-of-N gain ({next(iter(sig.values()))['unit'] if sig else 'headroom'})")
    ax.set_title(f"Best-of-N gain vs N ({reward} reward)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))  # room for the regenerate line
    stamp(fig, command)
    paths += save_figure(fig, Path(run_dir) / f"best_of_n_{reward}", command)
    plt.close(fig)

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    xs = list(sig)
    a.plot(xs, [sig[x]["p_up"] for x in xs], "o-", label="p(dR > 0)")
    a.plot(xs, [sig[x]["p_zero"] for x in xs], "s--", label="p(dR = 0)")
    a.plot(xs, [sig[x]["identical"] for x in xs], "^:", label="output-identical share")
    a.set_ylim(-0.02, 1.02)
    a.set_ylabel("share of candidates")
    a.legend(fontsize=7)
    b.plot(xs, [sig[x]["spread"] for x in xs], "o-", color="C3")
    b.set_ylabel("reward spread (std over candidates)")
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_xlabel("sigma")
    fig.suptitle(f"Probe landscape ({reward} reward)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    stamp(fig, command)
    paths += save_figure(fig, Path(run_dir) / f"landscape_{reward}", command)
    plt.close(fig)
    return paths


def write_report(run_dir: Path, probe, title: str | None = None) -> dict:
    """Every report file for ``probe.reward`` into ``run_dir``; returns the summary."""
    run_dir = Path(run_dir)
    command = report_command(run_dir, probe.reward)
    summary = summarise(run_dir, probe)
    (run_dir / f"report_{probe.reward}.md").write_text(markdown(summary, title or f"Sigma/N probe: {run_dir}", command))
    figures(summary, run_dir, command)
    write_json_atomic(run_dir / f"summary_{probe.reward}.json",
                      {**summary, "sigmas": {f"{k:g}": v for k, v in summary["sigmas"].items()}})
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m es_repro.probe.report",
                                     description="Rewrite a probe run directory's report (no model is loaded).")
    parser.add_argument("--report", required=True, metavar="RUN_DIR", help="a probe run directory")
    parser.add_argument("--reward", choices=["binary", "shaped"], help="default: the run's probe.reward")
    parser.add_argument("--subsets", type=int, help="default: the run's probe.subsets (0 = exact)")
    args = parser.parse_args(argv)
    from es_repro.config.load import config_from_run_dir

    run_dir = Path(args.report)
    probe = config_from_run_dir(run_dir).probe
    if probe is None:
        parser.error(f"{run_dir}/run.json has no probe section: not a probe run")
    probe = replace(probe, **{k: v for k, v in (("reward", args.reward), ("subsets", args.subsets)) if v is not None})
    summary = write_report(run_dir, probe)
    print((run_dir / f"report_{probe.reward}.md").read_text())
    return 0 if summary["sigmas"] else 1


if __name__ == "__main__":
    sys.exit(main())
