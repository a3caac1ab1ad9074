"""The model's parameters as ES sees them: perturb in place, restore exactly, apply an update in fp32.

A float32 master copy of every parameter is the source of truth. The model's own tensors (the working copy,
possibly bf16/fp16) always equal cast(master) between evaluations, which makes two things cheap and exact:
- restore after an evaluation is a copy from the master (bit-identical; no noise is regenerated),
- updates accumulate in fp32, so steps far below bf16's resolution are not truncated away.
The perturbation itself uses the released code's arithmetic: ``param.add_(scale * eps)``, eps drawn in the
noise dtype, so a perturbed model is bit-identical to the release's (tests/test_release_fidelity.py).
"""
from __future__ import annotations

import logging
import math
import mmap
import weakref
from typing import Iterable, Sequence

import torch

from es_repro.engines.master import Master
from es_repro.es.update_rules import SGD

logger = logging.getLogger(__name__)
PAGE = mmap.PAGESIZE


def master_copy(p: torch.Tensor, master_device: str) -> torch.Tensor:
    """The fp32 master of one parameter: beside it (auto), or in pinned CPU memory (cpu: a 7B/8B model's 28-32 GB
    master does not fit beside the model, the base model and the KV cache on an 80 GB GPU)."""
    if master_device == "auto" or p.device.type == master_device:
        return p.detach().to(torch.float32, copy=True)
    if master_device != "cpu":
        raise ValueError(f"es.master_device={master_device!r} is not allowed for a model on {p.device}; use auto or cpu")
    master = pinned_empty(p.shape, torch.float32) if torch.cuda.is_available() else torch.empty(p.shape)
    return master.copy_(p.detach())


def pinned_empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """Page-locked host memory of exactly this size: ordinary memory registered with CUDA (cudaHostRegister, as
    torch's checkpoint stager pins), not torch's pinned allocator, which rounds every allocation up to a power of two
    (a 7B model's fp32 master would take 54 GiB of host memory instead of 28). The registered pages lie wholly inside
    the tensor's own allocation, so two tensors never register the same page (CUDA refuses overlapping ranges).
    Unregistered when the tensor is freed; torch's pinned allocator after all if registering fails."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    raw = torch.empty(nbytes + 2 * PAGE, dtype=torch.uint8)
    start = -raw.data_ptr() % PAGE  # the first page boundary inside the allocation
    t = raw[start : start + nbytes].view(dtype).view(shape)
    ptr, span = t.data_ptr(), -(-nbytes // PAGE) * PAGE  # whole pages, all inside raw
    cudart = torch.cuda.cudart()
    if int(cudart.cudaHostRegister(ptr, span, 1)) != 0:  # 1: cudaHostRegisterPortable
        logger.warning("cudaHostRegister failed: the pinned master takes torch's power-of-two pinned blocks instead")
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    weakref.finalize(t, cudart.cudaHostUnregister, ptr).atexit = False  # never after CUDA has shut down
    return t


def cast_to(m: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A new tensor cast(m) on ``device``. From a pinned host master the fp32 values cross first and are cast on the
    GPU: one host-to-device copy that also changes dtype is converted by torch on the CPU, into pageable memory (a
    CPU pass and an unpinned transfer per tensor, several seconds per member at 8B)."""
    return m.to(device).to(dtype, copy=True)


def unique_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Named parameters with tied weights listed once (e.g. embeddings tied to the LM head), in the order of
    ``model.named_parameters()``: the tensor index i that seeds iid noise is the position in this list."""
    return list(model.named_parameters(remove_duplicate=True))


class ESWeights(Master):
    """A model's unique parameters (the working copy) and their fp32 master."""

    def __init__(self, model: torch.nn.Module, noise_mode: str = "iid", noise_dtype: str = "param",
                 rule: SGD | None = None, master_device: str = "auto", keep_for_update: bool = False):
        self.model = model
        named = unique_parameters(model)
        self.params = [p for _, p in named]
        for p in self.params:
            p.requires_grad_(False)
        # es.noise_cache: every member's noise stays in memory until the update, which then draws nothing
        self.keep_for_update = keep_for_update
        super().__init__([n for n, _ in named], [master_copy(p, master_device) for p in self.params], self.params,
                         noise_mode, noise_dtype, rule)

    @torch.no_grad()
    def perturb(self, seed: int, scale: float, keep_noise: bool = False) -> None:
        """theta_working += scale * eps(seed) in the noise mode's arithmetic (iid/correlated: the product rounded to
        the noise dtype first, as released; table: rounded once).
        keep_noise: hold eps(seed) for the next call with the same seed (the mirrored member of an antithetic
        pair), so a pair draws its noise once (same bits; one model-size copy of noise held in between)."""
        kept = self.kept.get(seed)
        if not self.keep_for_update:
            self.kept.clear()  # a pair's held noise lives until its mirrored member, never longer
        keep = kept is None and (keep_noise or self.keep_for_update)
        noises = []
        add_scaled = self.noise_mode.add_scaled  # the mode's arithmetic (the release's for iid/correlated)
        for i, p in enumerate(self.params):
            if kept is None and not keep:  # a fresh draw nobody else holds
                add_scaled(p, self.draw(i, seed), scale, fresh=True)
                continue
            eps = kept[i] if kept is not None else self.draw(i, seed)
            add_scaled(p, eps, scale)
            if keep:
                noises.append(eps)
        if keep:
            self.kept[seed] = noises

    def write_working(self, i: int) -> None:
        """Working tensor i = cast(master i). A pinned host master crosses in fp32 and is cast on the GPU (cast_to)."""
        self.params[i].copy_(self.master[i].to(self.params[i].device))

    @torch.no_grad()
    def restore(self) -> None:
        """Working weights back to cast(master): bit-identical to before the perturbation."""
        for i in range(len(self.params)):
            self.write_working(i)

    @torch.no_grad()
    def apply_update(self, seed_coeffs: Iterable[tuple[int, float]]) -> None:
        """The update rule moves the master by delta = sum_k coeff_k * eps(seed_k) in fp32; each working tensor is
        rewritten as soon as its master moved (es.master_device=cpu: streamed one tensor at a time)."""
        for i in self.step_master(seed_coeffs):
            self.write_working(i)

    def load(self, path) -> None:
        super().load(path)
        self.restore()
