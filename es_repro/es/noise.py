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

Cost on CPU: a CPU generator fills its tensor on one thread, ~5 ns per value (one SmolLM2-135M member: ~0.75 s on
a Zen 4 core), so es.noise_cache keeps each member's noise for the update instead of drawing it twice. (Drawing
several tensors at once on Python threads gave the same bits ~1.5x faster, but the OpenMP teams of those threads
then slowed every later decode step by 1.5-2x on a 2-core machine: measured, and left out.)
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

# es.noise -> the seed tensor ``index`` of a member with ``seed`` draws from: the one rule every engine's noise
# follows (full rank, low rank, QES codes). A new noise mode is one entry here.
NOISE_MODES: dict[str, Callable[[int, int], int]] = {
    "iid": lambda seed, index: seed + index,  # each tensor its own stream (the release's --seed_shift)
    "correlated": lambda seed, index: seed,  # one stream re-seeded per tensor (the release's default)
}
NOISE_DTYPES = ("param", "float32")
NOISE_CACHE = ("auto", "on", "off")  # es.noise_cache


def noise_dtype_for(param: torch.Tensor, noise_dtype: str) -> torch.dtype:
    if noise_dtype == "param":
        return param.dtype
    if noise_dtype == "float32":
        return torch.float32
    raise ValueError(f"noise dtype {noise_dtype!r} is not one of {NOISE_DTYPES}")


def tensor_seed(seed: int, index: int, mode: str) -> int:
    """The generator seed of tensor ``index`` of a member with ``seed`` under es.noise=``mode``."""
    rule = NOISE_MODES.get(mode)
    if rule is None:
        raise ValueError(f"noise mode {mode!r} is not one of: {', '.join(NOISE_MODES)}")
    return rule(seed, index)


def tensor_noise(param: torch.Tensor, index: int, seed: int, mode: str, noise_dtype: str = "param") -> torch.Tensor:
    """The noise eps for tensor ``index`` of a member with ``seed``."""
    gen = torch.Generator(device=param.device)
    gen.manual_seed(tensor_seed(seed, index, mode))
    return torch.randn(param.shape, generator=gen, dtype=noise_dtype_for(param, noise_dtype), device=param.device)


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (0 when unreadable: nothing is assumed to fit)."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def keep_noise_for_update(setting: str, params: Sequence[torch.Tensor], noise_dtype: str, seeds: int) -> bool:
    """es.noise_cache: whether every member's noise stays in memory from its perturbation to the update (the update
    then draws nothing: at small shapes on CPU the redraw cost as much as the generation). auto: on for a CPU
    model when the generation's noise (one model-size per seed) takes at most a quarter of the available memory;
    off on CUDA, where the draw is fast and memory is the KV cache's."""
    if setting not in NOISE_CACHE:
        raise ValueError(f"es.noise_cache={setting!r} is not one of {NOISE_CACHE}")
    if setting != "auto":
        return setting == "on"
    if params[0].device.type != "cpu":
        return False
    per_seed = sum(p.numel() * noise_dtype_for(p, noise_dtype).itemsize for p in params)
    return per_seed * seeds <= available_memory_bytes() // 4
