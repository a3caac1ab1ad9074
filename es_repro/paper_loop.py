"""The paper's released ES loop, kept as a reference for speed and correctness comparisons (not for training).

What it does, per member: re-seed a generator and regenerate the noise to perturb (param += sigma * eps, in the
model dtype), again to restore (param -= sigma * eps), and once more per member in the update
(param += alpha / N * z_n * eps, in the model dtype). Our default path (es_repro.weights.ESWeights) draws each
member's noise once to perturb, restores by copying from an fp32 master and draws it once more for the update.
Same interface as ESWeights, so the benchmark and the tests can swap one for the other.
"""
from __future__ import annotations

from typing import Iterable

import torch

from es_repro.noise import tensor_noise
from es_repro.weights import unique_parameters


class PaperLoopWeights:
    def __init__(self, model: torch.nn.Module, noise_mode: str = "correlated"):
        self.model = model
        self.noise_mode = noise_mode
        named = unique_parameters(model)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self._last: tuple[int, float] | None = None
        for p in self.params:
            p.requires_grad_(False)

    @torch.no_grad()
    def perturb(self, seed: int, scale: float) -> None:
        for i, p in enumerate(self.params):
            p.add_(tensor_noise(p, i, seed, self.noise_mode).to(p.dtype), alpha=scale)
        self._last = (seed, scale)

    @torch.no_grad()
    def restore(self) -> None:
        """Subtract the same noise again (regenerated): exact in fp32 only up to rounding."""
        seed, scale = self._last
        for i, p in enumerate(self.params):
            p.sub_(tensor_noise(p, i, seed, self.noise_mode).to(p.dtype), alpha=scale)

    @torch.no_grad()
    def apply_update(self, seed_coeffs: Iterable[tuple[int, float]], decay: float = 0.0) -> None:
        if decay:
            raise ValueError("the paper's loop has no decay toward the base weights")
        for seed, coeff in seed_coeffs:  # member by member, in the model dtype, as released
            for i, p in enumerate(self.params):
                p.add_(tensor_noise(p, i, seed, self.noise_mode).to(p.dtype), alpha=coeff)
