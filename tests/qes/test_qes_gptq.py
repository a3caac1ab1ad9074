"""GPTQ packed format (es_repro/qes/gptq.py): pack/unpack round trips, the v1 zero-point convention, and a
quantized model exported and loaded back bit for bit."""
from __future__ import annotations

import json

import pytest
import torch

from es_repro.models.tiny import build_tiny_model
from es_repro.qes import gptq
from es_repro.qes.model import export_gptq, gptq_directory, load_gptq, quantizable_linears, quantize_model
from es_repro.qes.quant import QuantizedTensor


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dim", [0, 1])
def test_pack_unpack_round_trips(bits, dim):
    gen = torch.Generator().manual_seed(bits)
    values = torch.randint(0, 2**bits, (64, 48), generator=gen)
    packed = gptq.pack(values, bits, dim)
    assert packed.dtype == torch.int32 and packed.shape[dim] == values.shape[dim] * bits // 32
    assert torch.equal(gptq.unpack(packed, bits, dim), values)


def test_bit_layout_is_gptq_s():
    """Code of input row i sits at bits 4*(i % 8) of qweight row i // 8 (INT4): rows 0..7 holding 0..7 pack to
    0x76543210; codes 15 everywhere pack to -1 (all bits set, int32)."""
    col = torch.arange(8).view(8, 1)
    assert gptq.pack(col, 4, 0).item() == 0x76543210
    assert gptq.pack(torch.full((8, 1), 15), 4, 0).item() == -1
    assert gptq.pack(torch.tensor([[1, 2, 3, 255]]), 8, 1).item() == (255 << 24 | 3 << 16 | 2 << 8 | 1) - 2**32
    with pytest.raises(ValueError, match="multiple of 8"):
        gptq.pack(torch.zeros(12, 1, dtype=torch.int64), 4, 0)


def _random_qtensor(bits, out_f=32, in_f=256, group=128):
    gen = torch.Generator().manual_seed(3)
    groups = in_f // group
    return QuantizedTensor(torch.randint(0, 2**bits, (out_f, in_f), generator=gen).to(torch.uint8),
                           (torch.rand(groups, out_f, generator=gen) * 0.01).to(torch.float16),
                           torch.randint(1, 2**bits, (groups, out_f), generator=gen).to(torch.int32),
                           torch.arange(in_f, dtype=torch.int32) // group, bits, group)


@pytest.mark.parametrize("bits", [4, 8])
def test_v1_stores_zero_minus_one_and_v2_the_zero(bits):
    q = _random_qtensor(bits)
    packed = gptq.pack_tensor(q)
    assert torch.equal(gptq.unpack(packed["qzeros"], bits, 1), q.zeros.long() - 1)  # AutoGPTQ's `zeros -= 1`
    for fmt, shift in (("gptq", 0), ("gptq_v2", -1)):
        back = gptq.unpack_tensor(packed, bits, 128, fmt)
        assert torch.equal(back.codes, q.codes) and torch.equal(back.scales, q.scales)
        assert torch.equal(back.zeros, q.zeros + shift) and torch.equal(back.g_idx, q.g_idx)
        assert torch.equal(back.dequantize(), q.dequantize()) == (shift == 0)


@pytest.mark.parametrize("bits", [4, 8])
def test_a_quantized_model_exports_and_loads_bit_for_bit(tmp_path, bits):
    model, tokenizer = build_tiny_model(seed=0)
    quantized = quantize_model(model, bits, 128)
    export_gptq(tmp_path, model, tokenizer, quantized)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"] | {} == gptq.quantization_config(bits, 128)
    assert gptq_directory(str(tmp_path)) == tmp_path
    loaded, _, back, qc = load_gptq(tmp_path, torch.float32, torch.device("cpu"))
    assert qc["bits"] == bits and set(back) == {n for n, _ in quantizable_linears(model)}
    for name, q in quantized.items():
        for field in ("codes", "scales", "zeros", "g_idx"):
            assert torch.equal(getattr(back[name], field), getattr(q, field)), (name, field)
    original = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, original[k]), k
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_a_directory_without_quantization_config_is_not_gptq(tmp_path):
    model, tokenizer = build_tiny_model(seed=0)
    model.save_pretrained(tmp_path)
    assert gptq_directory(str(tmp_path)) is None
    with pytest.raises(ValueError, match="holds no GPTQ checkpoint"):
        gptq.load_tensors(tmp_path)
