"""Seeded Gaussian noise for a list of parameter tensors, regenerated on demand from (seed, tensor index).

Two modes:
- ``iid`` (default): tensor i draws from its own generator seeded with ``seed + i`` (in float32), the convention
  of the authors' later i.i.d. scripts. Noises of different tensors are independent.
- ``correlated``: exactly the paper's released code: one generator re-seeded with the member's seed for EVERY
  tensor, ``torch.randn(shape, generator=g, dtype=param.dtype, device=param.device)``. Tensors of the same shape
  get the same noise; the paper's published numbers came from this mode.
Noise depends on the device type (CPU and CUDA generators differ), as in the paper.
"""
from __future__ import annotations

import torch

NOISE_MODES = ("iid", "correlated")


def tensor_noise(param: torch.Tensor, index: int, seed: int, mode: str) -> torch.Tensor:
    """The noise eps for tensor ``index`` of a member with ``seed``."""
    gen = torch.Generator(device=param.device)
    if mode == "iid":
        gen.manual_seed(seed + index)
        return torch.randn(param.shape, generator=gen, dtype=torch.float32, device=param.device)
    if mode == "correlated":
        gen.manual_seed(seed)
        return torch.randn(param.shape, generator=gen, dtype=param.dtype, device=param.device)
    raise ValueError(f"noise mode {mode!r} is not one of {NOISE_MODES}")
