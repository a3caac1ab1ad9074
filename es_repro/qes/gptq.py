"""GPTQ's packed checkpoint format, hand-written (the maintained packers, gptqmodel and AutoGPTQ, ship no
CPU wheel on PyPI; compressed-tensors packs its own layout, not GPTQ's).

Per quantized linear ``<prefix>`` (weight [out, in], B bits, P = 32 // B codes per int32):
    <prefix>.qweight  int32 [in / P, out]        code of input column i, output j at bits B*(i % P) of row i // P
    <prefix>.qzeros   int32 [groups, out / P]    zero point of (group, output j) at bits B*(j % P) of column j // P
    <prefix>.scales   float16 [groups, out]
    <prefix>.g_idx    int32 [in]                  group of each input column
    <prefix>.bias     (optional, unquantized)
Zero-point convention: checkpoint_format "gptq" (v1, what AutoGPTQ wrote and what the Hub's
Qwen2.5-*-GPTQ-Int4/Int8 hold) stores zero - 1 (AutoGPTQ's pack does ``zeros -= 1``, its kernels add 1 back);
"gptq_v2" (gptqmodel's internal format) stores the zero itself. Both load; export writes v1.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from es_repro.qes.quant import QuantizedTensor

FORMATS = ("gptq", "gptq_v2")  # checkpoint_format -> stored zero = zero - 1 | zero
SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    """uint32 values held in int64 -> the int32 with the same bits."""
    x = x & 0xFFFFFFFF
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def pack(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Pack unsigned ``bits``-bit values along ``dim`` (its size a multiple of 32 // bits) into int32."""
    per = 32 // bits
    v = values.to(torch.int64).movedim(dim, 0)
    if v.shape[0] % per:
        raise ValueError(f"cannot pack {v.shape[0]} values along dim {dim}: not a multiple of {per} ({bits}-bit)")
    if v.min() < 0 or v.max() >= 2**bits:
        raise ValueError(f"values outside [0, {2**bits - 1}] cannot be packed as {bits}-bit")
    v = v.reshape(v.shape[0] // per, per, *v.shape[1:])
    shifts = (torch.arange(per, dtype=torch.int64) * bits).view(1, per, *([1] * (v.dim() - 2)))
    return _to_int32((v << shifts).sum(dim=1)).movedim(0, dim).contiguous()


def unpack(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of ``pack``: int32 -> int64 values, ``32 // bits`` per word along ``dim``."""
    per = 32 // bits
    p = packed.to(torch.int64).movedim(dim, 0) & 0xFFFFFFFF
    shifts = (torch.arange(per, dtype=torch.int64) * bits).view(1, per, *([1] * (p.dim() - 1)))
    v = (p.unsqueeze(1) >> shifts) & (2**bits - 1)
    return v.reshape(p.shape[0] * per, *p.shape[1:]).movedim(0, dim).contiguous()


def pack_tensor(q: QuantizedTensor) -> dict[str, torch.Tensor]:
    """The four GPTQ v1 tensors of one quantized weight."""
    return {"qweight": pack(q.codes.T, q.bits, 0), "qzeros": pack(q.zeros - 1, q.bits, 1),
            "scales": q.scales.to(torch.float16).contiguous(), "g_idx": q.g_idx.to(torch.int32).contiguous()}


def unpack_tensor(tensors: dict[str, torch.Tensor], bits: int, group_size: int, fmt: str = "gptq") -> QuantizedTensor:
    if fmt not in FORMATS:
        raise ValueError(f"checkpoint_format={fmt!r} is not supported; choose one of {FORMATS}")
    codes = unpack(tensors["qweight"], bits, 0).T.contiguous()
    zeros = unpack(tensors["qzeros"], bits, 1).to(torch.int32) + (1 if fmt == "gptq" else 0)
    in_f = codes.shape[1]
    g_idx = tensors.get("g_idx")
    if g_idx is None:
        g_idx = torch.arange(in_f, dtype=torch.int32) // group_size
    return QuantizedTensor(codes.to(torch.uint8), tensors["scales"].to(torch.float16), zeros,
                           g_idx.to(torch.int32), bits, group_size)


def quantization_config(bits: int, group_size: int, sym: bool = False) -> dict:
    """config.json's quantization_config for a GPTQ v1 checkpoint (no act-order: g_idx = i // group_size)."""
    return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": False, "sym": sym,
            "checkpoint_format": "gptq", "true_sequential": True, "damp_percent": 0.01, "static_groups": False}


def read_quantization_config(path: Path) -> dict | None:
    """A directory's GPTQ quantization_config, or None when it holds no GPTQ checkpoint."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    qc = json.loads(config.read_text()).get("quantization_config")
    return qc if qc and qc.get("quant_method") == "gptq" else None


def save_tensors(path: Path, quantized: dict[str, QuantizedTensor], others: dict[str, torch.Tensor]) -> None:
    """model.safetensors of a GPTQ checkpoint: packed quantized linears (by module prefix) plus other tensors."""
    state = {k: v.detach().contiguous().clone() for k, v in others.items()}
    for prefix, q in quantized.items():
        state.update({f"{prefix}.{k}": v for k, v in pack_tensor(q.to("cpu")).items()})
    save_file(state, Path(path) / "model.safetensors", metadata={"format": "pt"})


def load_tensors(path: Path) -> tuple[dict[str, QuantizedTensor], dict[str, torch.Tensor], dict]:
    """(quantized tensors by module prefix, every other tensor, quantization_config) of a GPTQ directory."""
    path = Path(path)
    qc = read_quantization_config(path)
    if qc is None:
        raise ValueError(f"{path} holds no GPTQ checkpoint (config.json has no quantization_config with quant_method gptq)")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path} has no .safetensors files")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    bits, group = int(qc["bits"]), int(qc.get("group_size", 128))
    if group <= 0:  # GPTQ's group_size=-1: one group over the whole input dimension
        group = 1 << 30
    fmt = qc.get("checkpoint_format", "gptq")
    prefixes = sorted(k.removesuffix(".qweight") for k in state if k.endswith(".qweight"))
    quantized = {}
    for prefix in prefixes:
        parts = {s: state.pop(f"{prefix}.{s}") for s in SUFFIXES if f"{prefix}.{s}" in state}
        quantized[prefix] = unpack_tensor(parts, bits, group, fmt)
    return quantized, state, qc
