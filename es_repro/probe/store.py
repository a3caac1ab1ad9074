"""The probe's results on disk: one .npz per sigma plus one for the base model, each rewritten atomically after
every candidate, so a killed probe loses at most the candidate in flight and a relaunch scores only the rest.

    base.npz              binary[P], shaped[P] float32; hashes[P] uint64; pool (hash of the prompt pool); seconds
    sigma_<s>.npz         sigma; seeds[M] int64; done[M] bool; binary[M, P], shaped[M, P] float32 (per-prompt
                          accuracy and training reward); hashes[M, P] uint64 (per-prompt completion hashes, to tell
                          output-identical candidates); seconds[M] float32; pool

Both rewards are stored, so the report can switch between them (probe.reward) without generating again.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from es_repro.util.files import atomic_file

BASE_FILE = "base.npz"
REWARDS = ("binary", "shaped")


def text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def hashes(texts: Sequence[str]) -> np.ndarray:
    return np.array([text_hash(t) for t in texts], dtype=np.uint64)


def pool_hash(prompts: Sequence[str]) -> int:
    """Identifies the prompt pool, so results scored on other prompts are never mixed in."""
    return text_hash("\x00".join(prompts))


def sigma_file(run_dir: Path, sigma: float) -> Path:
    return Path(run_dir) / f"sigma_{sigma:.6g}.npz"


def save_npz(path: Path, arrays: dict) -> None:
    """Write then rename: a reader (or a relaunch after a kill) sees the old file or the new one, never half."""
    with atomic_file(path, "wb") as f:
        np.savez(f, **arrays)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def check_pool(path: Path, stored: dict, pool: int) -> None:
    if int(stored["pool"]) != pool:
        raise ValueError(f"{path} was scored on another prompt pool (task or probe.prompts/split changed); "
                         "use a fresh run directory")


def new_sigma(sigma: float, seeds: Sequence[int], prompts: int, pool: int) -> dict[str, np.ndarray]:
    m = len(seeds)
    return {"sigma": np.float64(sigma), "seeds": np.asarray(seeds, np.int64), "done": np.zeros(m, bool),
            "binary": np.full((m, prompts), np.nan, np.float32), "shaped": np.full((m, prompts), np.nan, np.float32),
            "hashes": np.zeros((m, prompts), np.uint64), "seconds": np.zeros(m, np.float32), "pool": np.uint64(pool)}


def open_sigma(run_dir: Path, sigma: float, seeds: Sequence[int], prompts: int, pool: int) -> dict[str, np.ndarray]:
    """The stored results of one sigma, or empty ones; stored candidates must be the same seeds on the same pool."""
    path = sigma_file(run_dir, sigma)
    if not path.is_file():
        return new_sigma(sigma, seeds, prompts, pool)
    stored = load_npz(path)
    check_pool(path, stored, pool)
    if not np.array_equal(stored["seeds"], np.asarray(seeds, np.int64)):
        raise ValueError(f"{path} holds {len(stored['seeds'])} other candidates (probe.candidates or seed changed); "
                         "use a fresh run directory")
    return stored


def load_results(run_dir: Path) -> tuple[dict, dict[float, dict]]:
    """(base arrays, {sigma: arrays of the finished candidates only}) of a probe run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / BASE_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} holds no {BASE_FILE}: not a probe run directory, or nothing scored yet")
    base = load_npz(run_dir / BASE_FILE)
    out = {}
    for path in sorted(run_dir.glob("sigma_*.npz")):
        data = load_npz(path)
        check_pool(path, data, int(base["pool"]))
        done = data["done"]
        if done.any():
            out[float(data["sigma"])] = {k: (v[done] if v.ndim and len(v) == len(done) else v) for k, v in data.items()}
    return base, out
