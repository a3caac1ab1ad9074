"""Checkpoints: the run's weights on disk (written, verified, listed, loaded); resume and replay, which start from
them, are in es_repro/run/replay.py.

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
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors import safe_open

from es_repro.engines.base import Backend
from es_repro.run.state import RunState
from es_repro.util.files import file_sha256, temp_path, write_text_atomic

CKPT_DIR, LATEST, CHECKSUMS = "checkpoints", "LATEST", "checksums.json"


class CorruptCheckpoint(RuntimeError):
    """A checkpoint failed verification; the message names the file."""


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


def verify_checkpoint(ckpt: Path) -> RunState:
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
            if file_sha256(ckpt / name) != digest:
                raise CorruptCheckpoint(f"{ckpt / name}: checksum mismatch (the file changed after it was saved)")
    _check_finite(ckpt)
    try:
        state = RunState.from_json(json.loads((ckpt / "state.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptCheckpoint(f"{ckpt / 'state.json'}: unreadable ES state ({type(err).__name__}: {err})") from None
    return state


def save_checkpoint(run_dir: Path, backend: Backend, state: RunState, keep: int = 1) -> Path:
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"gen-{state.generation:06d}"
    final = root / name
    tmp = temp_path(final)
    for stale in root.glob(".gen-*.tmp-*"):  # left by a writer killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    backend.export(tmp)
    backend.save_state(tmp)
    (tmp / "state.json").write_text(json.dumps(state.to_json(), indent=2))
    try:
        _check_finite(tmp)
    except CorruptCheckpoint as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"refusing to write checkpoint {name}: {err}; the last good checkpoint is kept") from None
    sums = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    verify_checkpoint(final)  # read back from disk before anything older is deleted
    write_text_atomic(root / LATEST, name)
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


def load_checkpoint(path: Path, backend: Backend) -> RunState:
    """Verify a checkpoint, load its state into ``backend``; returns where the run stood."""
    state = verify_checkpoint(path)
    backend.load_state(path)
    return state
