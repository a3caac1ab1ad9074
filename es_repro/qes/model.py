"""A quantized model for QES: which layers are quantized, and how the model is built.

Quantized: every nn.Linear inside a decoder block (names matching ``layers.<i>.``: attention and MLP
projections). Embeddings, norms and the LM head stay in the working dtype and are never perturbed.
Two sources (es_repro/qes/backend.py picks one):
- a GPTQ checkpoint directory (model.source=hf with model.path pointing at it, or an HF id in the local cache):
  codes, scales, zeros and g_idx are read from its packed tensors (es_repro/qes/gptq.py);
- any other model: loaded in float32 and quantized by the built-in RTN group quantizer (es_repro/qes/quant.py).
Either way the model's linear weights are replaced by their de-quantization scale * (code - zero) in the
working dtype; the codes are the trainable state.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from es_repro.qes import gptq
from es_repro.qes.quant import QuantizedTensor, rtn_quantize

BLOCK_LINEAR = re.compile(r"(^|\.)layers\.\d+\.")


def quantizable_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """(module name, module) of every nn.Linear inside a decoder block, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and BLOCK_LINEAR.search(n)]


@torch.no_grad()
def quantize_model(model: torch.nn.Module, bits: int, group_size: int) -> dict[str, QuantizedTensor]:
    """RTN-quantize every block linear of ``model`` (in place: weights become their de-quantization)."""
    out = {}
    for name, module in quantizable_linears(model):
        q = rtn_quantize(module.weight, bits, group_size)
        module.weight.copy_(q.dequantize(module.weight.dtype))
        out[name] = q
    return out


def gptq_directory(path: str) -> Path | None:
    """A local directory (or an HF id resolved in the local cache) holding a GPTQ checkpoint, else None."""
    local = Path(path).expanduser()
    if not local.is_dir():
        try:
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(path, local_files_only=True))
        except Exception:  # not an HF id in the cache: not a GPTQ checkpoint we can read
            return None
    return local if gptq.read_quantization_config(local) is not None else None


@torch.no_grad()
def load_gptq(path: Path, dtype: torch.dtype, device: torch.device):
    """(model, tokenizer, quantized tensors, quantization_config) from a GPTQ checkpoint directory."""
    quantized, others, qc = gptq.load_tensors(path)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the model is built plain; its block linears hold de-quantized weights
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    expected = {n for n, _ in quantizable_linears(model)}
    if set(quantized) != expected:
        missing, extra = sorted(expected - set(quantized)), sorted(set(quantized) - expected)
        raise ValueError(f"{path}: quantized layers do not match the model's block linears "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    modules = dict(model.named_modules())
    for name, q in quantized.items():
        weight = modules[name].weight
        if tuple(weight.shape) != tuple(q.shape):
            raise ValueError(f"{path}: {name} has codes of shape {tuple(q.shape)}, the model expects {tuple(weight.shape)}")
        weight.copy_(q.dequantize(dtype))
    result = model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in others.items()}, strict=False)
    quantized_weights = {f"{n}.weight" for n in quantized}
    missing = [k for k in result.missing_keys if k not in quantized_weights and not _tied(model, k)]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: missing tensors {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.to(device).eval(), tokenizer, quantized, qc


def _tied(model, key: str) -> bool:
    return key == "lm_head.weight" and bool(getattr(model.config, "tie_word_embeddings", False))


def export_gptq(path: Path, model, tokenizer, quantized: dict[str, QuantizedTensor]) -> None:
    """Write a GPTQ v1 checkpoint (config.json with quantization_config, packed codes, tokenizer) of ``model``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    any_q = next(iter(quantized.values()))
    quantized_weights = {f"{n}.weight" for n in quantized}
    others = {k: v for k, v in model.state_dict().items() if k not in quantized_weights and not _tied(model, k)}
    gptq.save_tensors(path, quantized, others)
    config = replace_quantization_config(model.config, gptq.quantization_config(any_q.bits, any_q.group_size))
    config.save_pretrained(path)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def replace_quantization_config(config, qc: dict):
    config = config.__class__.from_dict(config.to_dict())
    config.quantization_config = qc
    return config


def load_for_qes(model_cfg, bits: int, group_size: int):
    """(model, tokenizer, quantized tensors, a description of the source) for a QES run."""
    from es_repro.models.loading import load_model, resolve_device, resolve_dtype

    device = resolve_device(model_cfg.device)
    dtype = resolve_dtype(model_cfg.dtype, device)
    directory = gptq_directory(model_cfg.path) if model_cfg.source == "hf" else None
    if directory is not None:
        model, tokenizer, quantized, qc = load_gptq(directory, dtype, device)
        if int(qc["bits"]) != bits:
            raise ValueError(f"es.qes.bits={bits} but the GPTQ checkpoint {directory} holds {qc['bits']}-bit codes; "
                             f"set es.qes.bits={qc['bits']}")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        tokenizer.padding_side = "left"
        source = {"source": "gptq", "path": str(directory), "checkpoint_format": qc.get("checkpoint_format", "gptq"),
                  "sym": qc.get("sym"), "group_size": qc.get("group_size")}
    else:  # quantize from float32 weights, then work in the configured dtype
        model, tokenizer = load_model(replace(model_cfg, dtype="float32"))
        quantized = quantize_model(model, bits, group_size)
        model.to(dtype)
        source = {"source": "rtn", "group_size": group_size, "scheme": "asymmetric round-to-nearest per group"}
    # the codes live beside the model: on a GPU their noise, steps and de-quantization run there (drawn on the
    # GPU's generator, like float ES noise), not on the CPU for every code of every member
    quantized = {name: q.to(device) for name, q in quantized.items()}
    return model, tokenizer, quantized, {**source, "bits": bits, "dtype": str(dtype).removeprefix("torch.")}
