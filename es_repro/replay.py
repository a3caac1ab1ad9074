"""Rebuild fine-tuned weights from base weights + the run log: every generation logged its seeds and
update coefficients, so replaying them through the run's backend and update rule reproduces the weights exactly
(the same code path as training; es_repro/checkpoint.py).

    python -m es_repro.replay RUN_DIR --out DIR [--generations G]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from es_repro.backend import build_backend
from es_repro.checkpoint import replay
from es_repro.config import config_from_run_dir
from es_repro.runlog import RunLog
from es_repro.tasks import build_task


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="directory for the rebuilt HF checkpoint")
    ap.add_argument("--generations", type=int, default=None, help="replay only the first G generations")
    args = ap.parse_args(argv)
    cfg = config_from_run_dir(args.run_dir)
    records = [r for r in RunLog(args.run_dir).records("train") if args.generations is None or r["generation"] <= args.generations]
    task = build_task(cfg.task.name, cfg.task.train_size, cfg.task.eval_size, cfg.task.data_seed, cfg.task.options)
    backend = build_backend(cfg, task)
    done = replay(backend, records)
    backend.export(args.out)
    print(f"replayed {done} generations from {args.run_dir} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
