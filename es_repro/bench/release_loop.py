"""The paper's released ES loop, kept as the reference for speed and fidelity comparisons (not for training).

Its arithmetic, step for step, in the model's dtype (bf16 by default in the release):
- perturb:  param += SIGMA * eps   (eps = randn in the param dtype; the product is rounded, then the sum)
- restore:  param += -SIGMA * eps  (eps regenerated; not exact in bf16)
- tell:     rewards as float32, z = (r - mean) / (std + 1e-8) in float32 (numpy)
- update:   per tensor, update = sum_n round(eps_n * z_n) accumulated in the param dtype, update /= N,
            param += ALPHA * update
Here the "coefficients" handed to ``apply_update`` are the z values of ``release_tell`` (not alpha/N * z as in
es_repro.es.strategy.tell). Noise: ``correlated`` (one seed for every tensor) or ``iid`` (the release's --seed_shift).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from es_repro.engines.weights import unique_parameters
from es_repro.es.noise import tensor_noise


def release_tell(rewards: Sequence[float]) -> list[float]:
    """The release's fitness shaping: rewards through a float32 tensor, z-scored in float32."""
    r = np.array(torch.tensor(list(rewards), dtype=torch.float32).tolist(), dtype=np.float32)
    z = (r - r.mean()) / (r.std() + 1e-8)
    return [float(v) for v in z]


class PaperLoopWeights:
    def __init__(self, model: torch.nn.Module, noise_mode: str = "correlated", alpha: float = 5e-4,
                 population: int = 30):
        self.model = model
        self.noise_mode, self.alpha, self.population = noise_mode, alpha, population
        named = unique_parameters(model)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self._last: tuple[int, float] | None = None
        for p in self.params:
            p.requires_grad_(False)

    def noise(self, i: int, seed: int) -> torch.Tensor:
        return tensor_noise(self.params[i], i, seed, self.noise_mode, "param")

    @torch.no_grad()
    def perturb(self, seed: int, scale: float) -> None:
        for i, p in enumerate(self.params):
            p.add_(scale * self.noise(i, seed))
        self._last = (seed, scale)

    @torch.no_grad()
    def restore(self) -> None:
        """Add the negated noise again (regenerated): exact in fp32 only up to rounding."""
        seed, scale = self._last
        for i, p in enumerate(self.params):
            p.add_(-scale * self.noise(i, seed))

    @torch.no_grad()
    def apply_update(self, seed_zs: Iterable[tuple[int, float]]) -> None:
        """``seed_zs``: (member seed, z) for every member, in member order (from ``release_tell``)."""
        seed_zs = list(seed_zs)
        if len(seed_zs) != self.population:
            raise ValueError(f"the release's update divides by N={self.population}; got {len(seed_zs)} members")
        for i, p in enumerate(self.params):
            update = torch.zeros_like(p)
            for seed, z in seed_zs:
                update.add_(self.noise(i, seed).mul_(float(z)))
            update.div_(self.population)
            p.add_(self.alpha * update)
