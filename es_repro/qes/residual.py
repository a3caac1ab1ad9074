"""Where QES keeps its error-feedback residual e (one per quantized layer), two modes (es.qes.residual):

- ``full``: an fp16 residual per layer, carried from update to update (2 bytes per code).
- ``replay`` (default): no residual tensor is kept. The last K updates' records (their (seed, pair
  coefficient) lists and sigma) are; at each update a layer's residual is rebuilt by running the recursion
  e <- clamp(u - round(u)) over them in order, against the current codes and the current alpha, then the
  current step is applied. O(K * N) scalars in memory; K times the noise regeneration per update.
While no record has been dropped (t <= K) the rebuilt residual starts from e0 and equals ``full``'s exactly
(away from the code range's boundary, where gating against the current codes may differ); after that it
starts from 0, so it differs from ``full``'s by the dropped tail, at most gamma^K * 1.5 before rounding.
e0 (es.qes.init_residual): ``zero`` (the paper's text), or ``uniform``: U[-0.5, 0.5] seeded from the run seed
and the layer index (the release draws it unseeded; seeded here so every run replays bit for bit).
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch

from es_repro.qes import RESIDUAL_MODES
from es_repro.qes.steps import RESIDUAL_DTYPE

Record = tuple[list[tuple[int, float]], float]  # (seed, pair coefficient) list, sigma


def initial_residual(init: str, run_seed: int, layer: int, shape) -> torch.Tensor | None:
    """e0 of a layer: None (zero) or a seeded U[-0.5, 0.5] in float16."""
    if init == "zero":
        return None
    seed = int(np.random.SeedSequence([run_seed, layer, 0xE0]).generate_state(1, dtype=np.uint64)[0] >> 1)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return (torch.rand(shape, generator=gen, dtype=torch.float32) - 0.5).to(RESIDUAL_DTYPE)


class Residuals:
    """The residual bookkeeping of one run: records of past updates (replay) or residual tensors (full)."""

    def __init__(self, mode: str, window: int, init: str, run_seed: int):
        if mode not in RESIDUAL_MODES:
            raise ValueError(f"es.qes.residual={mode!r} is not one of {RESIDUAL_MODES}")
        self.mode, self.window, self.init, self.run_seed = mode, window, init, run_seed
        self.step = 0  # updates applied so far
        self.records: deque[Record] = deque(maxlen=window if mode == "replay" else 0)
        self.tensors: dict[int, torch.Tensor] = {}  # full: layer index -> fp16 residual

    def start(self, layer: int, shape) -> torch.Tensor | None:
        """The residual a replay starts from (replay), or the stored residual (full)."""
        if self.mode == "full" and layer in self.tensors:
            return self.tensors[layer]
        if self.mode == "full" or len(self.records) == self.step:  # nothing dropped yet: start from e0
            return initial_residual(self.init, self.run_seed, layer, shape)
        return None

    def store(self, layer: int, e: torch.Tensor) -> None:
        if self.mode == "full":
            self.tensors[layer] = e

    def record(self, seed_coeffs: list[tuple[int, float]], sigma: float) -> None:
        if self.mode == "replay":
            self.records.append(([(int(s), float(c)) for s, c in seed_coeffs], float(sigma)))
        self.step += 1

    # checkpoint payload ----------------------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        meta = {"mode": self.mode, "window": self.window, "init": self.init, "step": self.step,
                "records": [[[[s, c] for s, c in sc], sigma] for sc, sigma in self.records]}
        return meta, {f"residual.{i}": e.contiguous() for i, e in self.tensors.items()}

    def load(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        if meta["mode"] != self.mode:
            raise ValueError(f"checkpoint residual mode {meta['mode']!r} differs from es.qes.residual={self.mode!r}")
        self.step = int(meta["step"])
        self.records.clear()
        for sc, sigma in meta["records"]:
            self.records.append(([(int(s), float(c)) for s, c in sc], float(sigma)))
        self.tensors = {int(k.removeprefix("residual.")): v.clone() for k, v in tensors.items()}
