"""Checkpoints, resume and replay: the run's weights on disk, and how a run gets back to where it was.

Layout in a run directory:
    checkpoints/gen-000040/   the backend's HF export (config.json, model.safetensors, tokenizer files), its
                              state payload (e.g. master.safetensors, update_rule.safetensors), state.json
    checkpoints/LATEST        the name of the newest complete checkpoint
A checkpoint is written to a temporary directory and renamed into place; LATEST is replaced atomically after
that. A kill at any moment leaves either the old or the new checkpoint, never half of one.

Integrity: every file's SHA-256 goes into checksums.json at save time, and every tensor must be finite. A save
refuses non-finite weights (the run fails instead of writing poison), re-verifies the new checkpoint after the
rename, and only then deletes older ones, so keep_checkpoints=1 still has a fallback during the write. A load
verifies checksums, tensors and state.json first; a bad checkpoint is reported by file and the next older one
(or the base weights + the log) is used instead.

Every generation's log line holds its seeds and update coefficients, so base weights + the log = the weights
(replay); resume = newest good checkpoint + replay of the generations logged after it. Resume refuses a log that
does not cover every generation up to its newest line (a gap would be silently trained over).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from safetensors import safe_open

from es_repro import distributed
from es_repro.backend import Backend
from es_repro.errors import RunStateError
from es_repro.runlog import RunLog

CKPT_DIR, LATEST, CHECKSUMS = "checkpoints", "LATEST", "checksums.json"


class CorruptCheckpoint(RuntimeError):
    """A checkpoint failed verification; the message names the file."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _nonfinite_tensor(path: Path) -> str | None:
    """The name of the first tensor with a NaN/inf in a safetensors file, or None (one tensor in memory at a time)."""
    import torch

    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return name
    return None


def _check_finite(ckpt: Path) -> None:
    for file in sorted(ckpt.glob("*.safetensors")):
        try:
            bad = _nonfinite_tensor(file)
        except Exception as err:  # a broken header or truncated file
            raise CorruptCheckpoint(f"{file}: unreadable safetensors file ({err})") from None
        if bad is not None:
            raise CorruptCheckpoint(f"{file}: tensor {bad!r} holds NaN or inf")


def verify_checkpoint(ckpt: Path) -> dict:
    """Checksums, finite tensors and a readable state.json; returns the state. Raises CorruptCheckpoint."""
    ckpt = Path(ckpt)
    sums_file = ckpt / CHECKSUMS
    if sums_file.is_file():  # checkpoints written before checksums existed have none: tensors are still checked
        try:
            sums = json.loads(sums_file.read_text())
        except ValueError as err:
            raise CorruptCheckpoint(f"{sums_file}: not valid JSON ({err})") from None
        for name, digest in sums.items():
            if not (ckpt / name).is_file():
                raise CorruptCheckpoint(f"{ckpt / name}: missing (listed in {CHECKSUMS})")
            if _sha256(ckpt / name) != digest:
                raise CorruptCheckpoint(f"{ckpt / name}: checksum mismatch (the file changed after it was saved)")
    _check_finite(ckpt)
    try:
        state = json.loads((ckpt / "state.json").read_text())
        int(state["generation"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptCheckpoint(f"{ckpt / 'state.json'}: unreadable ES state ({type(err).__name__}: {err})") from None
    return state


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
    try:
        _check_finite(tmp)
    except CorruptCheckpoint as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"refusing to write checkpoint {name}: {err}; the last good checkpoint is kept") from None
    sums = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    verify_checkpoint(final)  # read back from disk before anything older is deleted
    latest_tmp = root / f".{LATEST}.tmp-{os.getpid()}"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, root / LATEST)
    for old in sorted(root.glob("gen-*"))[:-keep]:  # zero-padded names sort by generation
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints_newest_first(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories, the one LATEST names first, then the others by generation."""
    root = Path(run_dir) / CKPT_DIR
    found = sorted((p for p in root.glob("gen-*") if (p / "state.json").is_file()), reverse=True)
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if named in found:
            found.remove(named)
            found.insert(0, named)
    return found


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints_newest_first(run_dir)
    return found[0] if found else None


def load_checkpoint(path: Path, backend: Backend) -> dict:
    """Verify a checkpoint, load its state into ``backend``; returns its ES state (generation, samples, ...)."""
    state = verify_checkpoint(path)
    backend.load_state(path)
    return state


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


def resume(run_dir: Path, backend: Backend, log: RunLog) -> dict:
    """Newest good checkpoint + replay of the generations logged after it. Returns {generation, samples}.
    Every process reads the same files; rank 0 alone trims the log, once all have read it."""
    state, used = {"generation": 0, "samples": 0}, None
    for ckpt in checkpoints_newest_first(run_dir):
        try:
            state, used = load_checkpoint(ckpt, backend), ckpt
            break
        except CorruptCheckpoint as err:
            if distributed.is_main():
                print(f"[es-repro] checkpoint unusable, falling back to an older one or to the base weights + log: {err}")
    train = log.records("train")
    check_log_covers(train, state["generation"], run_dir)
    start = state["generation"]
    done = replay(backend, train, start=start)
    if done > start:
        state = {"generation": done, "samples": next(r["samples"] for r in train if r["generation"] == done)}
    if distributed.is_main() and (used is not None or done > 0):
        where = f"checkpoint {used.name}" if used is not None else "the base weights"
        print(f"[es-repro] resuming {run_dir} at generation {done}: {where}, {done - start} generations replayed from the log")
    distributed.barrier()
    if distributed.is_main():
        log.truncate_after(state["generation"])
    return state
