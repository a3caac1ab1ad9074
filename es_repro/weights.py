"""The model's parameters as ES sees them: perturb in place, restore exactly, apply an update in fp32.

A float32 master copy of every parameter is the source of truth. The model's own tensors (the working copy,
possibly bf16/fp16) always equal cast(master) between evaluations, which makes two things cheap and exact:
- restore after an evaluation is a copy from the master (bit-identical; no noise is regenerated),
- updates accumulate in fp32, so steps far below bf16's resolution are not truncated away.
"""
from __future__ import annotations

from typing import Iterable

import torch

from es_repro.noise import tensor_noise


def unique_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Named parameters with tied weights listed once (e.g. embeddings tied to the LM head)."""
    return list(model.named_parameters(remove_duplicate=True))


class ESWeights:
    def __init__(self, model: torch.nn.Module, noise_mode: str, keep_base: bool = False):
        self.model = model
        self.noise_mode = noise_mode
        named = unique_parameters(model)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        for p in self.params:
            p.requires_grad_(False)
        self.master = [p.detach().to(torch.float32, copy=True) for p in self.params]
        self.base = [m.clone() for m in self.master] if keep_base else None

    @torch.no_grad()
    def perturb(self, seed: int, scale: float) -> None:
        """theta_working += scale * eps(seed), in the working dtype (as the paper does)."""
        for i, p in enumerate(self.params):
            p.add_(tensor_noise(p, i, seed, self.noise_mode).to(p.dtype), alpha=scale)

    @torch.no_grad()
    def restore(self) -> None:
        """Working weights back to cast(master): bit-identical to before the perturbation."""
        for p, m in zip(self.params, self.master):
            p.copy_(m)

    @torch.no_grad()
    def apply_update(self, seed_coeffs: Iterable[tuple[int, float]], decay: float = 0.0) -> None:
        """master += sum_k coeff_k * eps(seed_k), tensor by tensor in fp32; then decay toward the base weights."""
        seed_coeffs = list(seed_coeffs)
        for i, (p, m) in enumerate(zip(self.params, self.master)):
            delta = torch.zeros_like(m)
            for seed, coeff in seed_coeffs:
                delta.add_(tensor_noise(p, i, seed, self.noise_mode).to(torch.float32), alpha=coeff)
            m.add_(delta)
            if decay:
                m.sub_(m - self.base[i], alpha=decay)
            p.copy_(m)

    def master_state(self) -> dict[str, torch.Tensor]:
        return {n: m for n, m in zip(self.names, self.master)}

    @torch.no_grad()
    def load_master(self, state: dict[str, torch.Tensor]) -> None:
        """Set master (and working copy) from saved fp32 tensors; missing or extra names are an error."""
        if set(state) != set(self.names):
            missing, extra = set(self.names) - set(state), set(state) - set(self.names)
            raise ValueError(f"checkpoint does not match the model: missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}")
        for n, p, m in zip(self.names, self.params, self.master):
            m.copy_(state[n])
            p.copy_(m)


def build_weights(model: torch.nn.Module, es_cfg) -> "ESWeights":
    """The ES view of a model for an ESConfig: full-rank noise (default) or low-rank population mode."""
    if es_cfg.lowrank:
        from es_repro.lowrank import LowRankESWeights  # local: lowrank builds on this module

        return LowRankESWeights(model, rank=es_cfg.lowrank, keep_base=es_cfg.decay > 0)
    return ESWeights(model, es_cfg.noise, keep_base=es_cfg.decay > 0)
