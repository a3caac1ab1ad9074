"""Checkpoints, resume and replay: the run's weights on disk, and how a run gets back to where it was.

Layout in a run directory:
    checkpoints/gen-000040/   the backend's HF export (config.json, model.safetensors, tokenizer files), its
                              state payload (e.g. master.safetensors, update_rule.safetensors), state.json
    checkpoints/LATEST        the name of the newest complete checkpoint
A checkpoint is written to a temporary directory and renamed into place; LATEST is replaced atomically after
that. A kill at any moment leaves either the old or the new checkpoint, never half of one.

Every generation's log line holds its seeds and update coefficients, so base weights + the log = the weights
(replay); resume = newest checkpoint + replay of the generations logged after it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from es_repro import distributed
from es_repro.backend import Backend
from es_repro.runlog import RunLog

CKPT_DIR, LATEST = "checkpoints", "LATEST"


def save_checkpoint(run_dir: Path, backend: Backend, state: dict, keep: int = 1) -> Path:
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"gen-{state['generation']:06d}"
    final, tmp = root / name, root / f".{name}.tmp-{os.getpid()}"
    for stale in root.glob(".gen-*.tmp-*"):  # left by a writer killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    backend.export(tmp)
    backend.save_state(tmp)
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    latest_tmp = root / f".{LATEST}.tmp-{os.getpid()}"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, root / LATEST)
    for old in sorted(root.glob("gen-*"))[:-keep]:  # zero-padded names sort by generation
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / CKPT_DIR / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path, backend: Backend) -> dict:
    """Load a checkpoint's state into ``backend``; returns its ES state (generation, samples, ...)."""
    backend.load_state(path)
    return json.loads((Path(path) / "state.json").read_text())


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


def resume(run_dir: Path, backend: Backend, log: RunLog) -> dict:
    """Newest checkpoint + replay of the generations logged after it. Returns {generation, samples}.
    Every process reads the same files; rank 0 alone trims the log, once all have read it."""
    state = {"generation": 0, "samples": 0}
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        state = load_checkpoint(ckpt, backend)
    train = log.records("train")
    done = replay(backend, train, start=state["generation"])
    if done > state["generation"]:
        state = {"generation": done, "samples": next(r["samples"] for r in train if r["generation"] == done)}
    distributed.barrier()
    if distributed.is_main():
        log.truncate_after(state["generation"])
    return state
