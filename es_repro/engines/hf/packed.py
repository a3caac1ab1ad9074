"""bf16 linear layers on CPU with their weights prepacked for oneDNN (generation.packed_weights).

Why: a decode step multiplies a few rows by every weight matrix, so it is bound by reading the weights. Measured
on a 2-core AMD EPYC (Zen 4, AVX512-BF16; 120 distinct 1536x576 bf16 matrices, 2 rows, so nothing stays in
cache): ``F.linear`` streams them at ~6 GB/s, the same matmul on weights reordered once into oneDNN's blocked
layout at ~13-15 GB/s. Its results are bit-identical to ``F.linear`` (both are oneDNN's bf16 kernel; checked for
every shape in tests/engines/test_packed.py), so member rewards do not change.

The pack is redone whenever the weight changed: each parameter's version counter moves with every in-place write
(perturb, restore, update, load), so a stale pack is never used. Packing a 135M model takes ~70 ms, paid once per
member against 30+ decode steps. Gradient mode, other dtypes and other devices fall through to ``F.linear``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PACKED_WEIGHTS = ("auto", "on", "off")  # generation.packed_weights


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def use_packed_weights(setting: str, model: nn.Module) -> bool:
    """auto: for a bf16 model on CPU where oneDNN has bf16 kernels; on: the same, and an error where it cannot."""
    if setting not in PACKED_WEIGHTS:
        raise ValueError(f"generation.packed_weights={setting!r} is not one of {PACKED_WEIGHTS}")
    param = next(model.parameters())
    possible = param.device.type == "cpu" and param.dtype == torch.bfloat16 and packing_available()
    if setting == "on" and not possible:
        raise ValueError(f"generation.packed_weights=on needs a bf16 model on CPU with oneDNN bf16 kernels; the model "
                         f"is {param.dtype} on {param.device} (use generation.packed_weights=auto or off)")
    return setting != "off" and possible


class PackedWeight:
    """A oneDNN-packed copy of one bf16 weight, remade whenever the weight changed: its (identity, storage, version)
    moves with every in-place write (perturb, restore, update, load), so a stale pack is never used."""

    def __init__(self):
        self.packed: torch.Tensor | None = None
        self.key: tuple | None = None  # (tensor identity, storage, version) of the weight the pack was made from

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """F.linear(x, weight, bias)'s bits, from the pack (the bias is read as it is)."""
        key = (id(weight), weight.data_ptr(), weight._version)
        if key != self.key:
            self.packed, self.key = torch.ops.mkldnn._reorder_linear_weight(weight.detach()), key
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, "none", [], "")


class PackedLinear:
    """Installed as ``module.forward`` of one nn.Linear: the same result as its own forward, from a packed copy."""

    def __init__(self, module: nn.Linear):
        self.module, self.pack = module, PackedWeight()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w, bias = self.module.weight, self.module.bias
        if torch.is_grad_enabled() or x.dtype != torch.bfloat16 or w.dtype != torch.bfloat16 or x.device.type != "cpu":
            return F.linear(x, w, bias)
        return self.pack.linear(x, w, bias)


def install_packed_linears(model: nn.Module) -> int:
    """Every nn.Linear of ``model`` computes from a packed copy of its weight (one more model-size of memory);
    returns how many. Forward hooks (the low-rank members') still run: they wrap ``forward``."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and not isinstance(module.forward, PackedLinear):
            module.forward = PackedLinear(module)
            count += 1
    return count
