"""es.noise=table: one shared table of Gaussian noise, the same bytes on every machine, read at offsets derived from
integers only (OpenAI-ES's shared noise table, Salimans et al. 2017, with chunks for LLM-sized tensors).

The table: ``values`` float32 normals drawn by a generator whose output is defined here bit for bit, so no library's
sampler (whose stream may change between versions or devices) is involved:
- uniforms: splitmix64 over the counter 0, 1, 2, ..., the top 53 bits as a float64 in [0, 1);
- normals: Marsaglia's polar method over consecutive pairs (x, y) = (2u - 1, 2v - 1), pairs with s = x^2 + y^2
  outside (0, 1) skipped; its logarithm is computed here from frexp and an atanh series, so every step is an
  IEEE-754 basic operation (+ - * / sqrt, correctly rounded everywhere) and the float32 rounding at the end is too.
Its SHA-256 identifies it (run.json); it is built once per process on the CPU (a few seconds), cached on disk under
the model cache and verified by that hash when read back, then moved to the model's device.

The noise of tensor ``index`` of a member with ``seed``: the concatenation of chunks table[o_k : o_k + chunk],
o_k = h(seed, index, k) mod (values - chunk + 1) with h built from splitmix64, cut to the tensor's size. No generator
state anywhere, so CPU and CUDA read the same bits; a mirrored pair shares its offsets (same seed). What this costs
in independence: the table's values are reused (each about twice per SmolLM2-135M member at 2^26 values), but at
different positions; two noises share a value at the same position only where their chunk offsets are equal
(probability 1 / values per chunk), so their linear correlation is that of independent noise (measured:
scripts/noise_correlation.py, docs/algorithm.md).
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from es_repro.util.files import cache_root

TABLE_VERSION = 1  # bump when the generator or the transform changes: cached tables are keyed by it
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
LN2 = 0.6931471805599453  # float64 nearest to ln 2
ATANH_TERMS = 20  # |z| <= 1/3: the series' remainder is below 1e-19 relative
BLOCK_PAIRS = 1 << 22  # pairs drawn per numpy block (bounded memory while building)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function of each uint64 (wrapping arithmetic, as the reference C code)."""
    with np.errstate(over="ignore"):
        z = x + GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _log(s: np.ndarray) -> np.ndarray:
    """ln(s) for s in (0, 1] from basic operations only: s = m * 2^e (frexp, exact), ln m = 2 atanh((m-1)/(m+1))."""
    m, e = np.frexp(s)
    z = (m - 1.0) / (m + 1.0)
    z2 = z * z
    p = np.full_like(z, 1.0 / (2 * ATANH_TERMS + 1))
    for j in range(ATANH_TERMS - 1, -1, -1):
        p = p * z2 + 1.0 / (2 * j + 1)
    return 2.0 * z * p + e.astype(np.float64) * LN2


def _uniforms(start: int, count: int) -> np.ndarray:
    bits = splitmix64(np.arange(start, start + count, dtype=np.uint64))
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def build_table(values: int) -> np.ndarray:
    """``values`` float32 standard normals, the same bits on every machine."""
    out, filled, counter = np.empty(values, dtype=np.float32), 0, 0
    while filled < values:
        u = _uniforms(counter, 2 * BLOCK_PAIRS)
        counter += 2 * BLOCK_PAIRS
        x, y = 2.0 * u[0::2] - 1.0, 2.0 * u[1::2] - 1.0
        s = x * x + y * y
        keep = (s > 0.0) & (s < 1.0)
        x, y, s = x[keep], y[keep], s[keep]
        factor = np.sqrt(-2.0 * _log(s) / s)
        normals = np.stack([x * factor, y * factor], axis=1).reshape(-1)  # x0, y0, x1, y1, ...
        take = min(len(normals), values - filled)
        out[filled:filled + take] = normals[:take]
        filled += take
    return out


def table_hash(table: np.ndarray) -> str:
    """16 hex digits of the SHA-256 of the table's float32 bytes (little-endian)."""
    return hashlib.sha256(table.astype("<f4", copy=False).tobytes()).hexdigest()[:16]


def _cache_file(values: int) -> Path:
    return cache_root() / "noise-tables" / f"v{TABLE_VERSION}-{values}.npy"


@functools.lru_cache(maxsize=2)
def host_table(values: int) -> tuple[np.ndarray, str]:
    """(the table, its hash): read from the disk cache when its hash matches the recorded one, else built (and
    cached, written beside and renamed, so a killed writer leaves no half file)."""
    path = _cache_file(values)
    recorded = path.with_suffix(".sha")
    if path.is_file() and recorded.is_file():
        table = np.load(path)
        digest = table_hash(table)
        if table.shape == (values,) and digest == recorded.read_text().strip():
            return table, digest
    table = build_table(values)
    digest = table_hash(table)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, table)
        os.replace(tmp, path)
        recorded.write_text(digest)
    except OSError:
        pass  # a read-only cache only costs the rebuild next time
    return table, digest


@functools.lru_cache(maxsize=4)
def device_table(values: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The table on ``device``, rounded to ``dtype`` once (a bf16 model reads half the bytes; rounding is elementwise,
    so a chunk of the rounded table is the rounded chunk)."""
    return torch.from_numpy(host_table(values)[0]).to(device=device, dtype=dtype)


def chunk_offsets(seed: int, index: int, chunks: int, values: int, chunk: int) -> np.ndarray:
    """o_k = h(seed, index, k) mod (values - chunk + 1), k = 0..chunks-1, as int64; integers only."""
    return chunk_offsets_of_seeds([seed], index, chunks, values, chunk)[0]


def chunk_offsets_of_seeds(seeds: Sequence[int], index: int, chunks: int, values: int, chunk: int) -> np.ndarray:
    """chunk_offsets for each seed, as one (k, chunks) array (the same integers, computed together)."""
    key = splitmix64(np.array([s & 0xFFFFFFFFFFFFFFFF for s in seeds], dtype=np.uint64))
    key = splitmix64(key ^ np.uint64(index & 0xFFFFFFFFFFFFFFFF))
    with np.errstate(over="ignore"):
        h = splitmix64(key[:, None] + np.arange(chunks, dtype=np.uint64)[None, :])
    return (h % np.uint64(values - chunk + 1)).astype(np.int64)


def table_noise(shape: torch.Size | tuple, index: int, seed: int, values: int, chunk: int, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """The noise of tensor ``index`` of a member with ``seed``: chunks of the table at integer-derived offsets."""
    return table_noise_stack(shape, index, [seed], values, chunk, dtype, device)[0]


def table_noise_stack(shape: torch.Size | tuple, index: int, seeds: Sequence[int], values: int, chunk: int,
                      dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(k, *shape): table_noise of tensor ``index`` for each of k member seeds, read in one gather (the same bits as
    k separate reads; the population engine builds every member's factors of a tensor at once)."""
    numel = int(np.prod(shape)) if len(shape) else 1
    chunks = -(-numel // chunk)
    table = device_table(values, torch.device(device), dtype)
    offsets = chunk_offsets_of_seeds(seeds, index, chunks, values, chunk).reshape(-1)
    windows = table.unfold(0, chunk, 1)  # a view: row o is table[o : o + chunk]
    flat = windows[torch.from_numpy(offsets).to(table.device)]  # advanced indexing: a plain copy (index_select is ~3x slower here)
    return flat.reshape(len(seeds), -1)[:, :numel].reshape(len(seeds), *shape)
