"""CUDA checks (marker `gpu`; deselected by default, run by scripts/gpu_check.sh on a GPU machine): what the CPU
suite cannot see. Exact restore and the update in bf16 on CUDA, the compiled decode (CUDA graphs) equal to eager
under in-place weight changes, a pinned CPU master equal to a GPU master, and the roofline model on a real
generation (the achieved time is never below the hardware limit)."""
from __future__ import annotations

import pytest
import torch

from es_repro.engines.hf.generation import HFGenerator
from es_repro.engines.weights import ESWeights
from es_repro.es.noise import tensor_noise
from es_repro.models.tiny import build_tiny_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (scripts/gpu_check.sh)")]
CUDA = torch.device("cuda")
ROWS = [{"prompt": "abcabc", "target": ""}, {"prompt": "hello world, hello", "target": ""}]


def _model(dtype=torch.bfloat16):
    model, tok = build_tiny_model(seed=1, hidden=64)
    tok.padding_side = "left"
    return model.to(CUDA, dtype), tok


def test_perturb_restore_is_bit_exact_and_the_update_follows_its_definition_on_cuda():
    model, _ = _model()
    w = ESWeights(model, "iid")
    before = [p.clone() for p in w.params]
    w.perturb(5, 0.01)
    assert any(not torch.equal(a, b) for a, b in zip(before, w.params))
    w.restore()
    assert all(torch.equal(a, b) for a, b in zip(before, w.params))
    master0 = [m.clone() for m in w.master]
    w.apply_update([(5, 0.3), (9, -0.2)])
    for i, (m0, m, p) in enumerate(zip(master0, w.master, w.params)):
        delta = torch.zeros_like(m0)
        for seed, c in [(5, 0.3), (9, -0.2)]:
            delta.add_(tensor_noise(p, i, seed, "iid").float(), alpha=c)  # CUDA generator, bf16 draw
        assert torch.equal(m, m0 + delta) and torch.equal(p, m.to(p.dtype))


def test_pinned_cpu_master_equals_the_gpu_master():
    gpu, cpu = ESWeights(_model()[0], "iid"), ESWeights(_model()[0], "iid", master_device="cpu")
    assert cpu.master[0].device.type == "cpu" and cpu.master[0].is_pinned()
    for w in (gpu, cpu):
        w.apply_update([(1, 0.01), (2, -0.03)])
        w.perturb(3, 0.02)
        w.restore()
    assert all(torch.equal(a, b.to(CUDA)) for a, b in zip(gpu.master, cpu.master))
    assert all(torch.equal(a, b) for a, b in zip(gpu.params, cpu.params))


def test_compiled_decode_equals_eager_under_in_place_weight_changes():
    torch._dynamo.reset()
    model, tok = _model()
    eager = HFGenerator(model, tok, prompt_format="raw", max_new_tokens=16, batch_size=2, repetition_penalty=1.0)
    fast = HFGenerator(model, tok, prompt_format="raw", max_new_tokens=16, batch_size=2, repetition_penalty=1.0,
                       cache="static", compile="auto")
    w = ESWeights(model, "iid")
    outs = []
    for seed in (None, 7, None, 8):
        if seed is not None:
            w.perturb(seed, 0.05)
        outs.append(fast.generate(ROWS))
        assert outs[-1] == eager.generate(ROWS)
        w.restore()
    assert outs[0] == outs[2] and outs[1] != outs[0]
    assert hasattr(model, "_compiled_call")  # transformers compiled the decode step on CUDA


def test_a_real_generation_never_beats_the_roofline():
    import time

    from es_repro.bench.roofline import device_limits, generation_limit_s, shape_of

    limits = device_limits(torch.cuda.get_device_name(), None, None)
    if limits is None:
        pytest.skip(f"no data-sheet numbers for {torch.cuda.get_device_name()} in roofline.GPUS")
    model, tok = _model()
    gen = HFGenerator(model, tok, prompt_format="raw", max_new_tokens=64, batch_size=2, repetition_penalty=1.0)
    gen.min_new_tokens = 64
    gen.generate(ROWS)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    gen.generate(ROWS)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    b, w, t = gen.calls[-1]
    assert t == 64
    assert elapsed >= generation_limit_s(shape_of(model), batch=b, width=w, steps=t, bytes_per_value=2,
                                         bandwidth=limits[0], peak_flops=limits[1])
