"""Opt-in population-batched ES with low-rank perturbations (in the spirit of EGGROLL).

Member m perturbs every targeted weight matrix W by  sign_m * sigma * E_m,  E_m = A_m B_m^T / sqrt(r),
A_m ~ N(0,1)^{out x r}, B_m ~ N(0,1)^{in x r}, drawn from a generator seeded with (member seed + tensor index)
(es.noise=iid), or read from the shared noise table as one (out + in) x r noise of tensor index (es.noise=table: the
same factors on every device). Entries of E_m have unit variance like the full-rank noise. Vectors (norms) never move.
Which matrices (es.lowrank_targets, LOWRANK_TARGETS): ``all`` (every nn.Linear and nn.Embedding weight; a head tied
to the embeddings moves with them) or ``projections`` (the linear layers inside the model: attention and MLP
projections, not the embeddings or the LM head), the set both engines can perturb.
The HF engine never writes the perturbation into W: forward hooks add sign*sigma/sqrt(r) * (x B_m) A_m^T to each
layer's output, so k members share ONE batched forward (rows grouped member by member) instead of k separate passes.
The vLLM population engine serves the same (A_m, B_m) as LoRA adapters (es_repro/engines/vllm/population.py).
The update W += sum_m coeff_m E_m is one matmul per matrix (LowRankUpdate, shared by both engines' masters).
Factors are drawn in fp32, scaled in fp32 and used in the model's dtype inside the forward (a bf16 model's members
see factors rounded to bf16, ~0.4% of the noise), in fp32 in the update.
This is EGGROLL's algorithm (low-rank ES "at the hyperscale"), not the paper's: opt-in (docs/algorithm.md).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Sequence

import torch
from torch import nn

from es_repro.config.schema import LOWRANK_TARGETS
from es_repro.engines.weights import ESWeights, unique_parameters
from es_repro.es.noise import TableNoise, noise_mode, tensor_seed
from es_repro.es.strategy import Member
from es_repro.es.update_rules import SGD


def lowrank_factors(weight: torch.Tensor, index: int, seed: int, rank: int, mode="iid") -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A: (rows, r), B: (cols, r), float32, on the weight's device."""
    a, b = lowrank_factor_stack(weight, index, [seed], rank, mode)
    return a[0], b[0]


def lowrank_factor_stack(weight, index: int, seeds: Sequence[int], rank: int, mode="iid") -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of each seed, stacked: A (k, rows, r), B (k, cols, r), float32, on the weight's device; with
    es.noise=table one read for all k (A then B, read as one tensor's noise of (rows + cols) x r values)."""
    rows, cols = weight.shape
    mode = noise_mode(mode)
    if isinstance(mode, TableNoise):
        flat = mode.draw_stack(torch.empty((rows + cols) * rank, device=weight.device), index, seeds, torch.float32)
        return flat[:, :rows * rank].view(-1, rows, rank), flat[:, rows * rank:].reshape(-1, cols, rank)
    pairs = []
    for seed in seeds:
        gen = torch.Generator(device=weight.device)
        gen.manual_seed(tensor_seed(seed, index, "iid"))  # low-rank factors are always i.i.d. per tensor
        a = torch.randn(rows, rank, generator=gen, dtype=torch.float32, device=weight.device)
        pairs.append((a, torch.randn(cols, rank, generator=gen, dtype=torch.float32, device=weight.device)))
    return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])


def lowrank_users(model: nn.Module, targets: str = "all") -> list[tuple[str, nn.Module, int]]:
    """(module name, module, tensor index) of every module whose weight matrix a member perturbs, in module order;
    the index is the weight's position among the unique parameters (a tied weight has two users, one index).
    targets: ``all`` (nn.Linear and nn.Embedding) | ``projections`` (nn.Linear, less the input and output
    embeddings: attention and MLP projections)."""
    if targets not in LOWRANK_TARGETS:
        raise ValueError(f"es.lowrank_targets={targets!r} is not one of {LOWRANK_TARGETS}")
    index_of = {id(p): i for i, (_, p) in enumerate(unique_parameters(model))}
    embeddings = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    kinds = (nn.Linear, nn.Embedding) if targets == "all" else (nn.Linear,)
    return [(name, mod, index_of[id(mod.weight)]) for name, mod in model.named_modules()
            if isinstance(mod, kinds) and id(getattr(mod, "weight", None)) in index_of
            and (targets == "all" or id(mod.weight) not in embeddings)]


def member_factors(like, index: int, members: Sequence[Member], sigma: float, rank: int, mode,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of tensor ``index`` for each member, stacked: A (k, rows, r) with the member's scale
    sign * sigma / sqrt(r) folded in (in fp32, then cast), B (k, cols, r), both in ``dtype`` on like's device. The
    one construction both engines use, so member m is the same matrix on each."""
    scale = torch.tensor([m.sign * sigma / math.sqrt(rank) for m in members])
    a, b = lowrank_factor_stack(like, index, [m.seed for m in members], rank, mode)
    return (a * scale.to(like.device)[:, None, None]).to(dtype), b.to(dtype)


class LowRankUpdate:
    """Mixed into a Master (es_repro/engines/master.py): only the targeted matrices move, each by
    delta = sum_k coeff_k * A_k B_k^T / sqrt(r) (one matmul). Needs ``rank`` and ``moving`` (their indices)."""

    rank: int
    moving: list[int]

    def moving_tensors(self) -> list[int]:
        return self.moving

    def combined_noise(self, i: int, seed_coeffs: Sequence[tuple[int, float]]) -> torch.Tensor:
        like = self.like[i]
        delta = torch.zeros(like.shape, dtype=torch.float32, device=like.device)  # the factors' device
        if seed_coeffs:
            a, b = lowrank_factor_stack(like, i, [seed for seed, _ in seed_coeffs], self.rank, self.noise_mode)
            a = torch.cat([a_k * (c / math.sqrt(self.rank)) for a_k, (_, c) in zip(a, seed_coeffs)], dim=1)
            delta.addmm_(a, torch.cat(list(b), dim=1).T)
        return delta


class LowRankESWeights(LowRankUpdate, ESWeights):
    """ESWeights whose members are low-rank and evaluated together; updates still accumulate in fp32."""

    def __init__(self, model: nn.Module, rank: int = 1, rule: SGD | None = None, master_device: str = "auto",
                 noise="iid", targets: str = "all"):
        super().__init__(model, noise_mode=noise, noise_dtype="float32", rule=rule, master_device=master_device)
        self.rank, self.targets = rank, targets
        self.users = [(mod, i) for _, mod, i in lowrank_users(model, targets)]
        self.moving = sorted({i for _, i in self.users})

    @contextmanager
    def population(self, members: Sequence[Member], sigma: float):
        """Inside: the batch is split into k equal blocks of rows, block m computing with member m's perturbation."""
        k = len(members)
        # the hooks run in the model's dtype (no fp32 round trip of bf16 activations), with the member's scale
        # folded into A: two batched matmuls per layer and no other op
        factors = {i: member_factors(self.params[i], i, members, sigma, self.rank, self.noise_mode, self.params[i].dtype)
                   for i in self.moving}
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

    def perturb(self, seed: int, scale: float) -> None:
        raise NotImplementedError("low-rank members are evaluated together: use population()")


def lowrank_member_mean(rewards: list[float]) -> float:
    """A low-rank member's mean reward, in the summation order the low-rank path has always used (kept bit for bit,
    on both engines, so their coefficients compare exactly)."""
    return sum(rewards) / len(rewards)


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
