"""Table and learning curves of the QES CPU pilot (results/qes_cpu/, made by scripts/qes_cpu_pilot.sh).

    python scripts/qes_cpu_report.py results/qes_cpu
Writes results/qes_cpu/table.md, table.csv and learning_curves.png: train reward (mean over members) per
generation, final held-out reward, the fraction of codes changed, peak RSS (GNU time, rss/<name>.log).
"""
from __future__ import annotations

import csv
import json
import re
import sys
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
    if es["generations"] == 0:
        return f"base_{cfg['model']['name']}"
    if es["update"] != "qes":
        return "fp_es"
    extra = "_replay_mem" if es["qes"]["residual"] == "replay" else ""
    return f"{'naive' if es['qes']['gamma'] == 0 else 'qes'}_int{es['qes']['bits']}{extra}"


def peak_rss_gib(path: Path) -> float | None:
    if not path.is_file():
        return None
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", path.read_text())
    return int(m.group(1)) / 2**20 if m else None


def main(root: Path) -> None:
    rows, curves = [], {}
    for run in sorted(p for p in root.iterdir() if (p / "run.json").is_file()):
        info = json.loads((run / "run.json").read_text())
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        train = [r for r in records if r["kind"] == "train"]
        evals = [r for r in records if r["kind"] == "eval"]
        cfg, name = info["config"], label(info["config"])
        curves[name] = ([r["generation"] for r in train], [r["reward_mean"] for r in train])
        backend = info.get("backend", {})
        rows.append({
            "method": name, "sigma": cfg["es"]["sigma"], "alpha": cfg["es"]["alpha"], "N": cfg["es"]["population"],
            "generations": len(train), "samples": train[-1]["samples"] if train else 0,
            "train_reward_gen1": round(train[0]["reward_mean"], 2) if train else None,
            "train_reward_last": round(train[-1]["reward_mean"], 2) if train else None,
            "eval_reward_final": evals[-1]["eval_reward"] if evals else None,
            "codes_changed_total_frac": round(sum(r.get("codes_changed_frac", 0) for r in train), 5) if backend else "",
            "peak_rss_GiB": round(v, 2) if (v := peak_rss_gib(root / "rss" / f"{rss_name(cfg)}.log")) else None,
            "sec_per_generation": round(sum(r["time_total"] for r in train) / max(len(train), 1), 1),
            "forward_path": backend.get("forward_path", f"HF model in {cfg['model']['dtype']} (fp32 master)").split(":")[0],
            "status": info.get("status"),
        })
    order = ["base model smollm2-135m ", "full-precision ES", "base model smollm2-135m-int8", "INT8 QES", "INT8 naive",
             "base model smollm2-135m-int4", "INT4 QES", "INT4 naive"]
    rows.sort(key=lambda r: next((i for i, o in enumerate(order) if r["method"].startswith(o)), 9))
    with open(root / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows]
    (root / "table.md").write_text("\n".join(lines) + "\n\n(made by: python scripts/qes_cpu_report.py results/qes_cpu)\n")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, (x, y) in sorted(curves.items()):
        if x and "memory run" not in name:  # base-model rows have no training curve
            ax.plot(x, y, marker="o", label=name)
    ax.set_xlabel("generation")
    ax.set_ylabel("train reward (mean over members)")
    ax.set_title("SmolLM2-135M, Conciseness, N=4, 1 seed (pilot)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(root / "learning_curves.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/qes_cpu"))
