"""The quantized-tensor format and the built-in round-to-nearest (RTN) group quantizer.

A quantized linear weight W [out, in] is stored as
    codes  [out, in]      uint8, in [0, 2^B - 1] (asymmetric, unsigned; GPTQ's convention)
    scales [groups, out]  float16
    zeros  [groups, out]  int32 (the true zero point: W = scale * (code - zero))
    g_idx  [in]           int32, the group of each input column (i // group_size for RTN and desc_act=False GPTQ)
De-quantization is elementwise in float32, then cast to the working dtype, so recomputing any subset of the
elements gives bit-for-bit what recomputing the whole layer gives.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from es_repro.qes import BITS

FP16_TINY = 2.0**-24  # the smallest positive fp16: a stored scale is never 0


@dataclass
class QuantizedTensor:
    codes: torch.Tensor  # [out, in] uint8
    scales: torch.Tensor  # [groups, out] float16
    zeros: torch.Tensor  # [groups, out] int32
    g_idx: torch.Tensor  # [in] int32
    bits: int
    group_size: int

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def to(self, device: torch.device | str) -> "QuantizedTensor":
        """The same tensor with its codes, scales, zeros and g_idx on ``device``."""
        move = {f: getattr(self, f).to(device) for f in ("codes", "scales", "zeros", "g_idx")}
        return QuantizedTensor(**move, bits=self.bits, group_size=self.group_size)

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """scale * (code - zero) for every element, as [out, in] in ``dtype``. Contiguous groups (g_idx =
        i // group_size, no act-order) go group by group; any other g_idx gathers per column (same values)."""
        if self._contiguous_groups():
            out = torch.empty(self.codes.shape, dtype=dtype, device=self.codes.device)
            for gi in range(self.scales.shape[0]):
                cols = slice(gi * self.group_size, (gi + 1) * self.group_size)
                out[:, cols] = dequant_values(self.codes[:, cols], self.zeros[gi][:, None], self.scales[gi][:, None])
            return out
        g = self.g_idx.long()
        return dequant_values(self.codes, self.zeros[g].T, self.scales[g].T).to(dtype)

    def _contiguous_groups(self) -> bool:
        if not hasattr(self, "_contiguous"):
            n_in = self.codes.shape[1]
            expected = torch.arange(n_in, dtype=torch.int32) // self.group_size
            self._contiguous = self.group_size > 0 and self.scales.shape[0] == -(-n_in // self.group_size) and \
                torch.equal(self.g_idx.to(torch.int32).cpu(), expected)
        return self._contiguous


def dequant_values(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The one de-quantization formula: (float(code) - float(zero)) * float(scale), in float32."""
    return (codes.to(torch.float32) - zeros.to(torch.float32)) * scales.to(torch.float32)


def _fp16_at_least(scale: torch.Tensor) -> torch.Tensor:
    """The smallest fp16 value >= scale (and > 0), as float32: the stored scale never shrinks the range, so no
    weight is clipped and every weight is within half a step of its de-quantization."""
    s16 = scale.clamp(min=FP16_TINY).to(torch.float16)
    s16 = torch.where(s16.to(torch.float32) < scale, torch.nextafter(s16, torch.tensor(float("inf"), dtype=torch.float16)), s16)
    return s16.to(torch.float32)


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int = 128) -> QuantizedTensor:
    """Asymmetric round-to-nearest quantization per (group of ``group_size`` input columns, output row).

    As GPTQ's Quantizer: the range [min(w_min, 0), max(w_max, 0)] maps to codes [0, 2^B - 1]; an all-zero
    group gets range [-1, 1]. The scale is stored in fp16 (rounded up, so nothing clips) and codes are computed with the stored scale. GPTQ's
    v1 file format stores zero - 1 and so cannot encode zero = 0 (a group without negative weights): such a
    group gets zero 1 and scale w_max / (2^B - 2) instead, so every quantized tensor here exports losslessly.
    The last group may be shorter when in_features is not a multiple of group_size (g_idx = i // group_size).
    """
    if bits not in BITS:
        raise ValueError(f"bits={bits} is not supported; choose one of {BITS}")
    w = weight.detach().to(torch.float32)
    out_f, in_f = w.shape
    maxq = 2**bits - 1
    n_groups = -(-in_f // group_size)
    g_idx = torch.arange(in_f, dtype=torch.int32) // group_size
    scales = torch.empty(n_groups, out_f, dtype=torch.float16)
    zeros = torch.empty(n_groups, out_f, dtype=torch.int32)
    codes = torch.empty(out_f, in_f, dtype=torch.uint8)
    for gi in range(n_groups):
        cols = slice(gi * group_size, min((gi + 1) * group_size, in_f))
        block = w[:, cols]
        lo = block.min(dim=1).values.clamp(max=0)
        hi = block.max(dim=1).values.clamp(min=0)
        flat = (lo == 0) & (hi == 0)
        lo, hi = torch.where(flat, -1.0, lo), torch.where(flat, 1.0, hi)
        scale = _fp16_at_least((hi - lo) / maxq)
        zero = torch.round(-lo / scale)
        no_negative = zero <= 0  # v1 cannot store zero 0: use zero 1 and the range [0, hi] over codes 1..maxq
        scale = torch.where(no_negative, _fp16_at_least(hi / (maxq - 1)), scale)
        zero = torch.where(no_negative, 1.0, zero).clamp(1, maxq)
        q = torch.clamp(torch.round(block / scale[:, None]) + zero[:, None], 0, maxq)
        codes[:, cols] = q.to(torch.uint8)
        scales[gi] = scale.to(torch.float16)
        zeros[gi] = zero.to(torch.int32)
    return QuantizedTensor(codes, scales, zeros, g_idx, bits, group_size)
