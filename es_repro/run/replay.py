"""Resume and replay: how a run gets back to where it was.

Every generation's log line holds its seeds and update coefficients, so base weights + the log = the weights
(replay, through the run's backend and update rule: the same code path as training); resume = newest good
checkpoint (es_repro/run/checkpoint.py) + replay of the generations logged after it. Resume refuses a log that
does not cover every generation up to its newest line (a gap would be silently trained over).

Rebuild a run's weights from the base model and its log:

    python -m es_repro.run.replay RUN_DIR --out DIR [--generations G] [--allow-noise-change] [KEY=VALUE ...]
                                                                                              (or es-repro-replay)

KEY=VALUE settings change the run's config for the replay, e.g. generation.backend=vllm to rebuild an HF run's
weights on the vLLM engine (both engines share the master's arithmetic and its checkpoint files).

Replay draws the noise fingerprint on its own device first and refuses, as a resume does, when it differs from the
one in run.json (another GPU model draws other noise from the same seeds, so it would write other weights).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from es_repro.config.load import config_from_run_dir
from es_repro.engines.base import Backend, build_backend
from es_repro.es import fingerprint
from es_repro.run.checkpoint import CorruptCheckpoint, checkpoints_newest_first, load_checkpoint
from es_repro.run.log import RunLog
from es_repro.run.state import RunState
from es_repro.tasks import task_from_config
from es_repro.util import distributed
from es_repro.util.errors import RunStateError, UserError


def seed_coeffs(record: dict) -> list[tuple[int, float]]:
    return [(int(s), float(c)) for s, c in record["update"]]


def replay(backend: Backend, train_records: list[dict], start: int = 0) -> int:
    """Apply logged updates for generations start+1, start+2, ... in order; returns the last one applied."""
    done = start
    for record in sorted(train_records, key=lambda r: r["generation"]):
        if record["generation"] <= start:
            continue
        if record["generation"] != done + 1:
            raise ValueError(f"log skips from generation {done} to {record['generation']}; cannot replay")
        backend.apply_update(seed_coeffs(record))
        done = record["generation"]
    return done


def check_log_covers(train: list[dict], checkpoint_generation: int, run_dir: Path) -> None:
    """The train lines must be generations 1..last without a hole, and reach the checkpoint's generation."""
    logged = sorted({r["generation"] for r in train})
    last = logged[-1] if logged else 0
    missing = sorted(set(range(1, max(last, checkpoint_generation) + 1)) - set(logged))
    if missing:
        span = f"{missing[0]}-{missing[-1]}" if len(missing) > 1 else str(missing[0])
        raise RunStateError(
            f"{Path(run_dir) / 'metrics.jsonl'} has no train line for generation(s) {span} (logged: "
            f"{f'1-{last}' if logged else 'none'}; newest checkpoint: generation {checkpoint_generation}); resuming "
            f"would leave a gap that replay and the learning curves cannot cross. Restore metrics.jsonl, or delete "
            f"the run directory to start over")


def resume(run_dir: Path, backend: Backend, log: RunLog) -> RunState:
    """Newest good checkpoint + replay of the generations logged after it. Every process reads the same files;
    rank 0 alone trims the log, once all have read it."""
    state, used = RunState(), None
    for ckpt in checkpoints_newest_first(run_dir):
        try:
            state, used = load_checkpoint(ckpt, backend), ckpt
            break
        except CorruptCheckpoint as err:
            if distributed.is_main():
                print(f"[es-repro] checkpoint unusable, falling back to an older one or to the base weights + log: {err}")
    train = log.records("train")
    check_log_covers(train, state.generation, run_dir)
    start = state.generation
    done = replay(backend, train, start=start)
    if done > start:
        state = RunState.from_json(next(r for r in train if r["generation"] == done))
    if distributed.is_main() and (used is not None or done > 0):
        where = f"checkpoint {used.name}" if used is not None else "the base weights"
        print(f"[es-repro] resuming {run_dir} at generation {done}: {where}, {done - start} generations replayed from the log")
    distributed.barrier()
    if distributed.is_main():
        log.truncate_after(state.generation)
    return state


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="settings changed for the replay, e.g. generation.backend=vllm (the other engine)")
    ap.add_argument("--out", type=Path, required=True, help="directory for the rebuilt HF checkpoint")
    ap.add_argument("--generations", type=int, default=None, help="replay only the first G generations")
    ap.add_argument("--allow-noise-change", action="store_true",
                    help="replay even where the same seeds draw other noise than the run's (another device model)")
    args = ap.parse_intermixed_args(argv)  # KEY=VALUE may come after --out DIR
    try:
        cfg = config_from_run_dir(args.run_dir, args.overrides)
        fingerprint.check_resume(RunLog(args.run_dir).info().get("noise"), fingerprint.this_process(cfg),
                                 args.allow_noise_change, action="replay", allow_with="--allow-noise-change")
    except UserError as err:
        print(f"{err.kind} error: {err}", file=sys.stderr)
        return 2
    records = [r for r in RunLog(args.run_dir).records("train") if args.generations is None or r["generation"] <= args.generations]
    task = task_from_config(cfg.task)
    backend = build_backend(cfg, task)
    done = replay(backend, records)
    backend.export(args.out)
    print(f"replayed {done} generations from {args.run_dir} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
