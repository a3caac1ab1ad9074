"""Randomly initialised models with the shapes of the paper's models, built from a config in code (no download):
for speed and memory measurements (the GPU benchmark), where the weights' values do not matter but their sizes
do. model.source=random_shape, model.path=<a key of SHAPES>. The tokenizer is the tiny byte-level one
(es_repro/models/tiny.py): one token per byte of the prompt.
"""
from __future__ import annotations

import torch

# Architecture numbers from the models' published config.json files.
SHAPES = {
    "qwen2.5-0.5b": dict(arch="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         rope_theta=1e6, max_position_embeddings=32768),
    "qwen2.5-1.5b": dict(arch="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         rope_theta=1e6, max_position_embeddings=32768),
    "qwen2.5-3b": dict(arch="qwen2", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                       rope_theta=1e6, max_position_embeddings=32768),
    "qwen2.5-7b": dict(arch="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                       rope_theta=1e6, max_position_embeddings=32768),
    "llama-3.2-1b": dict(arch="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
                         rope_theta=5e5, max_position_embeddings=131072),
    "llama-3.2-3b": dict(arch="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
                         rope_theta=5e5, max_position_embeddings=131072),
    "llama-3.1-8b": dict(arch="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
                         rope_theta=5e5, max_position_embeddings=131072),
}


def build_random_shape(name: str, *, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """(model, tokenizer): the named shape with random weights (seeded), allocated directly on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from es_repro.models.tiny import build_tiny_tokenizer

    if name not in SHAPES:
        raise ValueError(f"model.path={name!r} is not a known shape for model.source=random_shape; choose one of: "
                         f"{', '.join(SHAPES)}")
    spec = dict(SHAPES[name])
    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[spec.pop("arch")]
    tokenizer = build_tiny_tokenizer()
    config = config_cls(**spec, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_cls(config).to(dtype)
    return model, tokenizer
