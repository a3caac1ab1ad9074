"""Checkpoints: HF-loadable safetensors directories written atomically, plus the ES state beside them.

Layout in a run directory:
    checkpoints/gen-000040/   config.json, model.safetensors (working dtype), tokenizer files,
                              master.safetensors (fp32 master, only when the model is not fp32), state.json
    checkpoints/LATEST        the name of the newest complete checkpoint
A checkpoint is written to a temporary directory and renamed into place; LATEST is replaced atomically after
that. A kill at any moment leaves either the old or the new checkpoint, never half of one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from es_repro.weights import ESWeights

CKPT_DIR, LATEST = "checkpoints", "LATEST"


def save_checkpoint(run_dir: Path, weights: ESWeights, tokenizer, state: dict, keep: int = 1) -> Path:
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"gen-{state['generation']:06d}"
    final, tmp = root / name, root / f".{name}.tmp-{os.getpid()}"
    for stale in root.glob(".gen-*.tmp-*"):  # left by a writer killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    weights.model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if any(p.dtype != torch.float32 for p in weights.params):
        save_file({n: m.contiguous() for n, m in weights.master_state().items()}, tmp / "master.safetensors")
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


def load_checkpoint(path: Path, weights: ESWeights) -> dict:
    """Load a checkpoint's fp32 master into ``weights``; returns its ES state (generation, samples, ...)."""
    master_file = path / "master.safetensors"
    if master_file.is_file():
        state = load_file(master_file)
    else:
        saved = load_file(path / "model.safetensors")
        # save_pretrained drops tied duplicates; keep only the names ES tracks.
        state = {n: saved[n].to(torch.float32) for n in weights.names if n in saved}
    weights.load_master(state)
    return json.loads((path / "state.json").read_text())
