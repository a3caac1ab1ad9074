"""Opt-in population-batched ES with low-rank perturbations (in the spirit of EGGROLL).

Member m perturbs every weight matrix W (each nn.Linear and nn.Embedding weight; vectors such as norms are
left alone) by  sign_m * sigma * E_m,  E_m = A_m B_m^T / sqrt(r),  A_m ~ N(0,1)^{out x r}, B_m ~ N(0,1)^{in x r},
drawn from a generator seeded with (member seed + tensor index) (es.noise=iid), or read from the shared noise
table as one (out + in) x r noise of tensor index (es.noise=table: the same factors on every device). Entries of
E_m have unit variance like the full-rank noise. Because the perturbation is low-rank, it never has to be written into W: forward hooks add
sign*sigma/sqrt(r) * (x B_m) A_m^T to each layer's output, so k members share ONE batched forward (rows
grouped member by member) instead of k separate passes. The update W += sum_m coeff_m E_m is one matmul.
Factors are drawn in fp32 and used in the model's dtype inside the forward (a bf16 model's members see factors
rounded to bf16, ~0.4% of the noise), in fp32 in the update.
This is EGGROLL's algorithm (low-rank ES "at the hyperscale"), not the paper's: opt-in (docs/algorithm.md).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Sequence

import torch
from torch import nn

from es_repro.engines.weights import ESWeights
from es_repro.es.noise import TableNoise, noise_mode, tensor_noise, tensor_seed
from es_repro.es.strategy import Member
from es_repro.es.update_rules import SGD


def lowrank_factors(weight: torch.Tensor, index: int, seed: int, rank: int, mode="iid") -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A: (rows, r), B: (cols, r), float32, on the weight's device."""
    rows, cols = weight.shape
    if isinstance(noise_mode(mode), TableNoise):  # A then B, read as one tensor's noise
        flat = tensor_noise(torch.empty((rows + cols) * rank, device=weight.device), index, seed, mode, "float32")
        return flat[:rows * rank].view(rows, rank), flat[rows * rank:].view(cols, rank)
    gen = torch.Generator(device=weight.device)
    gen.manual_seed(tensor_seed(seed, index, "iid"))  # low-rank factors are always i.i.d. per tensor
    a = torch.randn(weight.shape[0], rank, generator=gen, dtype=torch.float32, device=weight.device)
    b = torch.randn(weight.shape[1], rank, generator=gen, dtype=torch.float32, device=weight.device)
    return a, b


class LowRankESWeights(ESWeights):
    """ESWeights whose members are low-rank and evaluated together; updates still accumulate in fp32."""

    def __init__(self, model: nn.Module, rank: int = 1, rule: SGD | None = None, master_device: str = "auto",
                 noise="iid"):
        super().__init__(model, noise_mode=noise, noise_dtype="float32", rule=rule, master_device=master_device)
        self.rank = rank
        index_of = {id(p): i for i, p in enumerate(self.params)}
        # Every module that uses a weight matrix, with that matrix's index (a tied weight has two users).
        self.users = [(mod, index_of[id(mod.weight)]) for mod in model.modules()
                      if isinstance(mod, (nn.Linear, nn.Embedding)) and id(mod.weight) in index_of]
        self.matrix_ids = sorted({i for _, i in self.users})

    @contextmanager
    def population(self, members: Sequence[Member], sigma: float):
        """Inside: the batch is split into k equal blocks of rows, block m computing with member m's perturbation."""
        k = len(members)
        scale = torch.tensor([m.sign * sigma / math.sqrt(self.rank) for m in members])
        factors = {}
        for i in self.matrix_ids:
            p = self.params[i]
            pairs = [lowrank_factors(p, i, m.seed, self.rank, self.noise_mode) for m in members]
            # the hooks run in the model's dtype (no fp32 round trip of bf16 activations), with the member's
            # scale folded into A: two batched matmuls per layer and no other op
            a = (torch.stack([a for a, _ in pairs]) * scale.to(p.device)[:, None, None]).to(p.dtype)
            factors[i] = (a, torch.stack([b for _, b in pairs]).to(p.dtype))
        handles = []
        for module, i in self.users:
            a, b = factors[i]
            if isinstance(module, nn.Embedding):
                hook = _embedding_hook(a, b.transpose(1, 2), k)
            else:
                hook = _linear_hook(a.transpose(1, 2), b, k)
            handles.append(module.register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def apply_update(self, seed_coeffs: Iterable[tuple[int, float]]) -> None:
        """delta = sum_k coeff_k * A_k B_k^T / sqrt(r) for every weight matrix, moved by the update rule;
        vectors do not move."""
        seed_coeffs = list(seed_coeffs)
        for i in self.matrix_ids:
            p, m = self.params[i], self.master[i]
            delta = torch.zeros(m.shape, dtype=torch.float32, device=p.device)  # the factors' device, not the master's
            if seed_coeffs:
                pairs = [lowrank_factors(p, i, seed, self.rank, self.noise_mode) for seed, _ in seed_coeffs]
                a = torch.cat([a * (c / math.sqrt(self.rank)) for (a, _), (_, c) in zip(pairs, seed_coeffs)], dim=1)
                b = torch.cat([b for _, b in pairs], dim=1)
                delta.addmm_(a, b.T)
            self.rule.step(self.names[i], m, delta.to(m.device))
            self.write_working(i)

    def perturb(self, seed: int, scale: float) -> None:
        raise NotImplementedError("low-rank members are evaluated together: use population()")


def _grouped(x: torch.Tensor, k: int) -> torch.Tensor:
    if x.shape[0] % k:
        raise ValueError(f"batch of {x.shape[0]} rows cannot be split among {k} members")
    return x.reshape(k, -1, x.shape[-1])


def _linear_hook(a_t: torch.Tensor, b: torch.Tensor, k: int):
    """output + (x B_m) (scale_m A_m)^T per member block; a_t: (k, r, out), b: (k, in, r)."""
    def hook(module, args, output):
        return torch.baddbmm(_grouped(output, k), torch.bmm(_grouped(args[0], k), b), a_t).reshape(output.shape)
    return hook


def _embedding_hook(a: torch.Tensor, b_t: torch.Tensor, k: int):
    """output + scale_m A_m[ids] B_m^T per member block; a: (k, vocab, r), b_t: (k, r, dim)."""
    def hook(module, args, output):
        ids = args[0].reshape(k, -1)  # (k, rows*T)
        rows = a[torch.arange(k, device=ids.device)[:, None], ids]  # (k, rows*T, r)
        return torch.baddbmm(_grouped(output, k), rows, b_t).reshape(output.shape)
    return hook
