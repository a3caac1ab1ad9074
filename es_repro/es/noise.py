"""Gaussian noise for a list of parameter tensors, regenerated on demand from (seed, tensor index).

Three modes (NOISE_MODES, built from the ES config):
- ``table`` (default for new runs): chunks of one shared table of normals at offsets computed from (seed, index)
  (es_repro/es/noise_table.py): the same bits on every device, read at memory speed.
- ``iid``: tensor i draws torch.randn from its own generator seeded with ``seed + i`` (the released script's
  ``--seed_shift``, the convention of the authors' later scripts). Noises of different tensors are independent.
- ``correlated``: one generator re-seeded with the member's seed for EVERY tensor (the released script's default,
  which produced the paper's published numbers). Tensors of the same shape get the same noise.
The generator modes match the release bit for bit (its arithmetic too: ``add_scaled``) and depend on the device
type (CPU and CUDA generators differ), as in the paper. Two draw precisions (``es.noise_dtype``): ``param`` in the
parameter's dtype, as the released script does (bf16 noise for a bf16 model); ``float32`` whatever the model's
dtype. For an fp32 model the two are the same.

Cost on CPU: a CPU generator fills its tensor on one thread, ~5 ns per value (one SmolLM2-135M member: ~0.75 s on
a Zen 4 core), so es.noise_cache keeps each member's noise for the update instead of drawing it twice; the table
reads a member in ~0.17 s (docs/speed.md). (Drawing several tensors at once on Python threads gave the same bits
~1.5x faster, but the OpenMP teams of those threads then slowed every later decode step by 1.5-2x on a 2-core
machine: measured, and left out.)
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

NOISE_DTYPES = ("param", "float32")
NOISE_CACHE = ("auto", "on", "off")  # es.noise_cache


def noise_dtype_for(param: torch.Tensor, noise_dtype: str) -> torch.dtype:
    if noise_dtype == "param":
        return param.dtype
    if noise_dtype == "float32":
        return torch.float32
    raise ValueError(f"noise dtype {noise_dtype!r} is not one of {NOISE_DTYPES}")


class SeededNoise:
    """torch.randn from a generator seeded by a rule of (member seed, tensor index): the released code's noise.
    Its bits depend on the device (CPU and each CUDA GPU model draw other noise: es_repro/es/fingerprint.py)."""

    device_independent = False

    def __init__(self, name: str, seed_rule: Callable[[int, int], int]):
        self.name, self.seed_rule = name, seed_rule

    def draw(self, like: torch.Tensor, index: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
        gen = torch.Generator(device=like.device)
        gen.manual_seed(self.seed_rule(seed, index))
        return torch.randn(like.shape, generator=gen, dtype=dtype, device=like.device)

    def identity(self) -> dict:
        return {"mode": self.name}

    @staticmethod
    def add_scaled(dst: torch.Tensor, eps: torch.Tensor, scale: float, fresh: bool = False) -> None:
        """dst += scale * eps as the released code does it: the product rounded to eps's dtype, then the sum
        (``fresh``: eps is a draw nobody else holds, scaled in place: the same bits without a temporary)."""
        dst.add_(eps.mul_(scale) if fresh else scale * eps)


class TableNoise:
    """Chunks of one shared table of normals at offsets from integers (es_repro/es/noise_table.py): the same bits
    on every device, read at memory speed."""

    device_independent = True

    def __init__(self, values: int, chunk: int):
        self.name, self.values, self.chunk = "table", values, chunk

    def draw(self, like: torch.Tensor, index: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
        from es_repro.es.noise_table import table_noise

        return table_noise(like.shape, index, seed, self.values, self.chunk, dtype, like.device)

    def draw_stack(self, like, index: int, seeds: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """(k, *like.shape): draw() for each seed, in one read."""
        from es_repro.es.noise_table import table_noise_stack

        return table_noise_stack(like.shape, index, seeds, self.values, self.chunk, dtype, like.device)

    @staticmethod
    def add_scaled(dst: torch.Tensor, eps: torch.Tensor, scale: float, fresh: bool = False) -> None:
        """dst += scale * eps rounded once (no release to match): one pass over dst instead of two."""
        dst.add_(eps, alpha=scale)

    def identity(self) -> dict:
        """What run.json records of it: the settings and the table's hash (the same on every machine)."""
        from es_repro.es.noise_table import host_table

        return {"mode": self.name, "values": self.values, "chunk": self.chunk, "table_sha256": host_table(self.values)[1]}


# es.noise -> its builder from the ES config (None: the schema's defaults). The one list of noise modes: every
# engine's noise, the update's, replay's and the fingerprint's come from the entry a run names.
NOISE_MODES: dict[str, Callable[..., SeededNoise | TableNoise]] = {
    "iid": lambda es=None: SeededNoise("iid", lambda seed, index: seed + index),  # the release's --seed_shift
    "correlated": lambda es=None: SeededNoise("correlated", lambda seed, index: seed),  # the release's default
    "table": lambda es=None: TableNoise(*table_settings(es)),
}


def table_settings(es_cfg) -> tuple[int, int]:
    if es_cfg is None:
        from es_repro.config.schema import ESConfig

        es_cfg = ESConfig()
    return es_cfg.noise_table_values, es_cfg.noise_table_chunk


def noise_mode(mode) -> SeededNoise | TableNoise:
    """A noise mode from its name (the schema's default settings), an ES config (its es.noise and settings), or a
    mode object (as it is)."""
    if isinstance(mode, (SeededNoise, TableNoise)):
        return mode
    name, es_cfg = (mode, None) if isinstance(mode, str) else (mode.noise, mode)
    builder = NOISE_MODES.get(name)
    if builder is None:
        raise ValueError(f"noise mode {name!r} is not one of: {', '.join(NOISE_MODES)}")
    return builder(es_cfg)


def tensor_seed(seed: int, index: int, mode: str) -> int:
    """The generator seed of tensor ``index`` of a member with ``seed`` under a seeded es.noise mode."""
    rule = noise_mode(mode)
    if not isinstance(rule, SeededNoise):
        raise ValueError(f"es.noise={rule.name} draws no seeded generator")
    return rule.seed_rule(seed, index)


def tensor_noise(param: torch.Tensor, index: int, seed: int, mode, noise_dtype: str = "param") -> torch.Tensor:
    """The noise eps for tensor ``index`` of a member with ``seed`` (``mode``: a name, an ES config or a mode)."""
    return noise_mode(mode).draw(param, index, seed, noise_dtype_for(param, noise_dtype))


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (0 when unreadable: nothing is assumed to fit)."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def keep_noise_for_update(setting: str, params: Sequence[torch.Tensor], noise_dtype: str, seeds: int,
                          mode=None) -> bool:
    """es.noise_cache: whether every member's noise stays in memory from its perturbation to the update (the update
    then draws nothing: at small shapes on CPU the redraw cost as much as the generation). auto: on for a CPU
    model when the generation's noise (one model-size per seed) takes at most a quarter of the available memory;
    off on CUDA, where the draw is fast and memory is the KV cache's, and off for es.noise=table, whose reads are
    as fast as a kept copy's."""
    if setting not in NOISE_CACHE:
        raise ValueError(f"es.noise_cache={setting!r} is not one of {NOISE_CACHE}")
    if setting != "auto":
        return setting == "on"
    if params[0].device.type != "cpu" or (mode is not None and noise_mode(mode).device_independent):
        return False
    per_seed = sum(p.numel() * noise_dtype_for(p, noise_dtype).itemsize for p in params)
    return per_seed * seeds <= available_memory_bytes() // 4
