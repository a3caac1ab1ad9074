"""generation.fast_decode (es_repro/engines/hf/decode.py): es-repro's greedy decode for Llama-family models on CPU.

It must give HF generate's completions in fp32 (same tokens; its bits may differ), and the same bits run to run:
after another call of the same shape, traced or eager, and around a perturb/restore cycle. The release's arithmetic
(es.seed_stream=released) keeps HF generate.
"""
from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from es_repro.engines.base import build_backend
from es_repro.engines.hf.decode import FastDecoder, resolve_kernel, rms_norm
from es_repro.engines.hf.packed import packing_available
from es_repro.tasks import task_from_config
from es_repro.train import run_es
from es_repro.util.errors import ConfigError
from tests.helpers import make_cfg

SHAPE = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)


def tiny_model(kind: str, dtype=torch.float32):
    """A random Llama (tied head) or Qwen2 (q/k/v biases, untied head) whose greedy completions vary."""
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**SHAPE, tie_word_embeddings=True))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**SHAPE, tie_word_embeddings=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.15)  # biases too: a zero bias would not test their stacking
    model.generation_config.eos_token_id = None
    return model.to(dtype).eval()


def left_padded(pad: int = 0):
    lengths = (7, 3, 5)
    ids = torch.full((3, max(lengths)), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    gen = torch.Generator().manual_seed(1)
    for row, n in enumerate(lengths):
        ids[row, -n:] = torch.randint(1, SHAPE["vocab_size"], (n,), generator=gen)
        mask[row, -n:] = 1
    return ids, mask


def hf_greedy(model, ids, mask, **kwargs):
    return model.generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=0, temperature=None,
                          top_p=None, top_k=None, **kwargs)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("kernel", ["linear", "mm_t"])
@pytest.mark.parametrize("settings", [dict(), dict(repetition_penalty=1.3, min_new_tokens=6)])
def test_fp32_completions_equal_hf_generate(kind, kernel, settings):
    model = tiny_model(kind)
    ids, mask = left_padded()
    hf = hf_greedy(model, ids, mask, max_new_tokens=10, **settings)
    assert len(set(hf[:, ids.shape[1]:].flatten().tolist())) > 5, "degenerate completions test nothing"
    ours = FastDecoder(model, kernel).generate(ids, mask, max_new_tokens=10, pad_token_id=0, **settings)
    assert torch.equal(ours, hf)


def test_eos_and_stop_end_rows_as_generate_does():
    model = tiny_model("llama")
    ids, mask = left_padded()
    free = hf_greedy(model, ids, mask, max_new_tokens=10)
    eos = int(free[0, ids.shape[1] + 3])  # row 0's fourth token ends it (and any other row that emits it)
    model.generation_config.eos_token_id = eos
    hf = hf_greedy(model, ids, mask, max_new_tokens=10)
    ours = FastDecoder(model).generate(ids, mask, max_new_tokens=10, pad_token_id=0)
    assert torch.equal(ours, hf)
    assert (ours[0, ids.shape[1] + 4 :] == 0).all()
    # a stop check ends row 1 once its last token is the one HF generated there as its third
    third = int(free[1, ids.shape[1] + 2])
    model.generation_config.eos_token_id = None
    stopped = FastDecoder(model).generate(ids, mask, max_new_tokens=10, pad_token_id=0,
                                          stopped=lambda tail: tail[-1] == third, stop_window=1)
    first = (free[1, ids.shape[1]:] == third).nonzero()[0].item()
    assert torch.equal(stopped[1, : ids.shape[1] + first + 1], free[1, : ids.shape[1] + first + 1])
    assert (stopped[1, ids.shape[1] + first + 1 :] == 0).all()


KERNELS = [("linear", torch.float32), ("mm_t", torch.float32), ("linear", torch.bfloat16), ("mm_t", torch.bfloat16),
           pytest.param("packed", torch.bfloat16, marks=pytest.mark.skipif(not packing_available(),
                                                                           reason="no oneDNN bf16 kernels"))]


@pytest.mark.parametrize("kernel,dtype", KERNELS)
def test_same_bits_run_to_run_traced_or_not(kernel, dtype):
    model = tiny_model("llama", dtype)
    ids, mask = left_padded()
    other = torch.randint(1, SHAPE["vocab_size"], ids.shape, generator=torch.Generator().manual_seed(5))
    decoder = FastDecoder(model, kernel)
    first = decoder.generate(ids, mask, max_new_tokens=12, pad_token_id=0)
    decoder.generate(other, torch.ones_like(other), max_new_tokens=12, pad_token_id=0)  # same shape: same buffers
    assert torch.equal(decoder.generate(ids, mask, max_new_tokens=12, pad_token_id=0), first)
    eager = FastDecoder(model, kernel)
    eager.trace = False
    assert torch.equal(eager.generate(ids, mask, max_new_tokens=12, pad_token_id=0), first)
    # one step's logits, bit for bit, traced against eager on the same buffers
    state = decoder.states[next(iter(decoder.states))]
    args = (ids[:, -1:], torch.full((3, 1), 9), torch.tensor([9]), state.mask)
    with torch.no_grad():
        assert torch.equal(state.step(*args), decoder.forward(state, *args, 1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rms_norm_is_hf_llama_rms_norm(dtype):
    """The decode's norm (one F.rms_norm in bf16) against HF's module: the same bits in bf16, where HF normalises in
    float32, rounds, then scales; to float rounding in fp32 (F.rms_norm sums in another order)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(576, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2)
    norm = norm.to(dtype)
    x = (torch.randn(4, 5, 576, generator=torch.Generator().manual_seed(2)) * 3).to(dtype)
    ours, theirs = rms_norm(x, norm, 576), norm(x)
    if dtype == torch.bfloat16:
        assert torch.equal(ours, theirs)
    else:
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_backend():
    cfg = make_cfg(["task.max_new_tokens=12"])
    task = task_from_config(cfg.task)
    return build_backend(cfg, task), task


def test_perturb_restore_writes_reach_the_stacked_weights_and_the_trace(tiny_backend):
    backend, task = tiny_backend
    decoder = backend.generator.decoder
    assert decoder is not None and backend.describe()["greedy_decoder"].startswith("fast")
    attn = backend.model.model.layers[0].self_attn
    stacked = decoder.layers[0].qkv.weight
    assert attn.q_proj.weight.data_ptr() == stacked.data_ptr()  # the layer's parameter is a view of the stack
    assert attn.k_proj.weight.data_ptr() == stacked.data_ptr() + attn.q_proj.weight.numel() * stacked.element_size()
    rows = task.train_rows
    before = backend.generator.generate(rows)
    backend.weights.perturb(3, 0.5)
    perturbed = backend.generator.generate(rows)
    backend.weights.restore()
    assert perturbed != before, "a perturbed member decoded with the base weights"
    assert backend.generator.generate(rows) == before


def test_auto_keeps_hf_generate_for_the_release_and_low_rank():
    task = task_from_config(make_cfg().task)
    assert build_backend(make_cfg(["es=released"]), task).generator.decoder is None
    assert build_backend(make_cfg(["es.lowrank=1"]), task).generator.decoder is None
    assert build_backend(make_cfg(["generation.fast_decode=off"]), task).generator.decoder is None
    assert build_backend(make_cfg(["generation.linear_kernel=mm_t"]), task).generator.decoder.kernel == "mm_t"


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match="generation.fast_decode"):
        make_cfg(["generation.fast_decode=always"])
    with pytest.raises(ConfigError, match="generation.linear_kernel"):
        make_cfg(["generation.linear_kernel=blas"])
    with pytest.raises(ConfigError, match="generation.fast_decode=on"):
        make_cfg(["generation.fast_decode=on", "es.lowrank=1"])
    with pytest.raises(ValueError, match="generation.linear_kernel=packed"):
        resolve_kernel("packed", torch.float32)


def test_a_run_records_its_decoder(tmp_path):
    run_es(make_cfg(["es.generations=1", "eval.kl_samples=0"]), tmp_path)
    backend = json.loads((tmp_path / "run.json").read_text())["backend"]
    assert backend["greedy_decoder"] == f"fast ({resolve_kernel('auto', torch.float32)} linears)"


def test_the_export_of_stacked_weights_equals_the_plain_models(tmp_path):
    from safetensors.torch import load_file

    plain, stacked = tiny_model("qwen2"), tiny_model("qwen2")
    FastDecoder(stacked)
    plain.save_pretrained(tmp_path / "plain")
    stacked.save_pretrained(tmp_path / "stacked")
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("plain", "stacked"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
