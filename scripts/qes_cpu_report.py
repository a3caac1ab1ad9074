"""Table and learning curves of the QES CPU comparison (results/qes_cpu/, made by scripts/qes_cpu_pilot.sh, seeds
0-2: SEED=1 / SEED=2 scripts/qes_cpu_pilot.sh).

    python scripts/qes_cpu_report.py results/qes_cpu
Writes results/qes_cpu/table.md, table.csv (one row per run) and learning_curves.png (train reward, mean over
members, per generation: mean over seeds, with each seed faint), and prints the per-method summary over seeds
(final held-out reward mean and std, change against the base model, codes changed, peak RSS from GNU time,
rss/<name>.log).
"""
from __future__ import annotations

import csv
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(cfg: dict) -> str:
    es = cfg["es"]
    if es["generations"] == 0:
        return f"base model {cfg['model']['name']} (no update)"
    if es["update"] != "qes":
        return "full-precision ES"
    kind = "naive quantized ES (gamma=0)" if es["qes"]["gamma"] == 0 else f"QES (gamma={es['qes']['gamma']})"
    extra = f", {es['qes']['residual']} residual, memory run" if es["qes"]["residual"] == "replay" else ""
    return f"INT{es['qes']['bits']} {kind}{extra}"


def rss_name(cfg: dict) -> str:
    es = cfg["es"]
    seed = f"_seed{cfg['seed']}" if cfg.get("seed", 0) else ""
    if es["generations"] == 0:
        return f"base_{cfg['model']['name']}"
    if es["update"] != "qes":
        return "fp_es" + seed
    extra = "_replay_mem" if es["qes"]["residual"] == "replay" else ""
    return f"{'naive' if es['qes']['gamma'] == 0 else 'qes'}_int{es['qes']['bits']}{extra}{seed}"


def base_of(cfg: dict) -> str:
    return f"base model {cfg['model']['name']} (no update)"


def peak_rss_gib(path: Path) -> float | None:
    if not path.is_file():
        return None
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", path.read_text())
    return int(m.group(1)) / 2**20 if m else None


ORDER = ["base model smollm2-135m ", "full-precision ES", "base model smollm2-135m-int8", "INT8 QES", "INT8 naive",
         "base model smollm2-135m-int4", "INT4 QES", "INT4 naive"]


def _order(method: str) -> int:
    return next((i for i, o in enumerate(ORDER) if method.startswith(o)), 9)


def _markdown(rows: list[dict]) -> list[str]:
    cols = list(rows[0])
    return (["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            + ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows])


def summarize(rows: list[dict]) -> list[dict]:
    """One row per trained method: the final held-out reward over seeds (mean, sample std, each seed) and its
    change against the base model of the same weights."""
    base = {r["model"]: r["eval_reward_final"] for r in rows if r["method"].startswith("base model")}
    groups = defaultdict(list)
    for r in rows:
        if (not r["method"].startswith("base model") and "memory run" not in r["method"]
                and r["eval_reward_final"] is not None):  # a run still going has no final evaluation yet
            groups[r["method"]].append(r)
    out = []
    for method, runs in sorted(groups.items(), key=lambda kv: _order(kv[0])):
        runs.sort(key=lambda r: r["seed"])
        finals = [r["eval_reward_final"] for r in runs]
        mean = statistics.mean(finals)
        out.append({
            "method": method, "seeds": len(runs),
            "eval_reward_final_per_seed": " / ".join(f"{v:g}" for v in finals),
            "eval_reward_final_mean": round(mean, 2),
            "eval_reward_final_std": round(statistics.stdev(finals), 2) if len(finals) > 1 else None,
            "base_eval_reward": base.get(runs[0]["model"]),
            "change_vs_base": round(mean - base[runs[0]["model"]], 2) if runs[0]["model"] in base else None,
            "seeds_above_base": sum(v > base.get(runs[0]["model"], float("inf")) for v in finals),
            "train_reward_gen1_mean": round(statistics.mean(r["train_reward_gen1"] for r in runs), 2),
            "train_reward_last_mean": round(statistics.mean(r["train_reward_last"] for r in runs), 2),
            "codes_changed_total_frac_mean": (round(statistics.mean(r["codes_changed_total_frac"] for r in runs), 4)
                                              if runs[0]["codes_changed_total_frac"] != "" else ""),
            "peak_rss_GiB_per_seed": " / ".join(f"{r['peak_rss_GiB']:g}" for r in runs if r["peak_rss_GiB"]),
        })
    return out


def main(root: Path) -> None:
    rows, curves = [], defaultdict(list)
    for run in sorted(p for p in root.iterdir() if (p / "run.json").is_file()):
        info = json.loads((run / "run.json").read_text())
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        train = [r for r in records if r["kind"] == "train"]
        evals = [r for r in records if r["kind"] == "eval"]
        cfg, name = info["config"], label(info["config"])
        if train and "memory run" not in name:  # base-model rows have no training curve
            curves[name].append(([r["generation"] for r in train], [r["reward_mean"] for r in train]))
        backend = info.get("backend", {})
        rows.append({
            "method": name, "seed": cfg.get("seed", 0), "model": cfg["model"]["name"], "sigma": cfg["es"]["sigma"],
            "alpha": cfg["es"]["alpha"], "N": cfg["es"]["population"],
            "generations": len(train), "samples": train[-1]["samples"] if train else 0,
            "train_reward_gen1": round(train[0]["reward_mean"], 2) if train else None,
            "train_reward_last": round(train[-1]["reward_mean"], 2) if train else None,
            "eval_reward_final": evals[-1]["eval_reward"] if evals else None,
            "codes_changed_total_frac": (round(sum(r.get("codes_changed_frac", 0) for r in train), 5)
                                         if cfg["es"]["update"] == "qes" else ""),
            "peak_rss_GiB": round(v, 2) if (v := peak_rss_gib(root / "rss" / f"{rss_name(cfg)}.log")) else None,
            "sec_per_generation": round(sum(r["time_total"] for r in train) / max(len(train), 1), 1),
            "forward_path": backend.get("forward_path", f"HF model in {cfg['model']['dtype']} (fp32 master)").split(":")[0],
            "status": info.get("status"),
        })
    rows.sort(key=lambda r: (_order(r["method"]), r["seed"]))
    with open(root / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = summarize(rows)
    lines = ["## Over seeds", "", *_markdown(summary), "", "## Every run", "", *_markdown(rows)]
    (root / "table.md").write_text("\n".join(lines) + "\n\n(made by: python scripts/qes_cpu_report.py results/qes_cpu)\n")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (name, runs) in enumerate(sorted(curves.items(), key=lambda kv: _order(kv[0]))):
        color = f"C{i}"
        for x, y in runs:
            ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
        x = min((x for x, _ in runs), key=len)  # a run still going has fewer generations
        mean = [statistics.mean(y[j] for _, y in runs) for j in range(len(x))]
        ax.plot(x, mean, color=color, marker="o", label=f"{name} ({len(runs)} seeds)")
    ax.set_xlabel("generation")
    ax.set_ylabel("train reward (mean over members)")
    ax.set_title("SmolLM2-135M, Conciseness, N=4: mean over seeds (faint: each seed)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "learning_curves.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/qes_cpu"))
