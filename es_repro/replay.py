"""Rebuild fine-tuned weights from base weights + the run log: every generation logged its seeds and
update coefficients, so replaying them reproduces the weights exactly (same code path as training).

    python -m es_repro.replay RUN_DIR --out DIR [--generations G]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from es_repro.weights import ESWeights, build_weights


def seed_coeffs(record: dict) -> list[tuple[int, float]]:
    return [(int(s), float(c)) for s, c in record["update"]]


def replay(weights: ESWeights, train_records: list[dict], decay: float, start: int = 0) -> int:
    """Apply logged updates for generations start+1, start+2, ... in order; returns the last one applied."""
    done = start
    for record in sorted(train_records, key=lambda r: r["generation"]):
        if record["generation"] <= start:
            continue
        if record["generation"] != done + 1:
            raise ValueError(f"log skips from generation {done} to {record['generation']}; cannot replay")
        weights.apply_update(seed_coeffs(record), decay=decay)
        done = record["generation"]
    return done


def main(argv: list[str] | None = None) -> int:
    from es_repro.config import RunConfig
    from es_repro.main import config_from_run_dir
    from es_repro.models import load_model
    from es_repro.runlog import RunLog

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="directory for the rebuilt HF checkpoint")
    ap.add_argument("--generations", type=int, default=None, help="replay only the first G generations")
    args = ap.parse_args(argv)
    cfg: RunConfig = config_from_run_dir(args.run_dir)
    records = [r for r in RunLog(args.run_dir).records("train") if args.generations is None or r["generation"] <= args.generations]
    model, tokenizer = load_model(cfg.model)
    weights = build_weights(model, cfg.es)
    done = replay(weights, records, cfg.es.decay)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"replayed {done} generations from {args.run_dir} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
