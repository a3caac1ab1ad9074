"""Seeded Gaussian noise for a list of parameter tensors, regenerated on demand from (seed, tensor index).

Two modes, both as the authors' released Countdown script draws them:
- ``iid`` (default): tensor i draws from its own generator seeded with ``seed + i`` (the script's
  ``--seed_shift``, the convention of the authors' later scripts). Noises of different tensors are independent.
- ``correlated``: one generator re-seeded with the member's seed for EVERY tensor (the script's default, which
  produced the paper's published numbers). Tensors of the same shape get the same noise.
Two draw precisions (``es.noise_dtype``): ``param`` draws ``torch.randn`` in the parameter's dtype, as the
released script does (bf16 noise for a bf16 model; the default, so bf16 runs reproduce the release); ``float32``
draws in fp32 whatever the model's dtype. For an fp32 model the two are the same.
Noise depends on the device type (CPU and CUDA generators differ), as in the paper.
"""
from __future__ import annotations

import torch

NOISE_MODES = ("iid", "correlated")
NOISE_DTYPES = ("param", "float32")


def noise_dtype_for(param: torch.Tensor, noise_dtype: str) -> torch.dtype:
    if noise_dtype == "param":
        return param.dtype
    if noise_dtype == "float32":
        return torch.float32
    raise ValueError(f"noise dtype {noise_dtype!r} is not one of {NOISE_DTYPES}")


def tensor_noise(param: torch.Tensor, index: int, seed: int, mode: str, noise_dtype: str = "param") -> torch.Tensor:
    """The noise eps for tensor ``index`` of a member with ``seed``."""
    if mode not in NOISE_MODES:
        raise ValueError(f"noise mode {mode!r} is not one of {NOISE_MODES}")
    gen = torch.Generator(device=param.device)
    gen.manual_seed(seed + index if mode == "iid" else seed)
    return torch.randn(param.shape, generator=gen, dtype=noise_dtype_for(param, noise_dtype), device=param.device)
