"""The hardware limit of a generation: the fewest seconds a decoder-only transformer can spend generating the
tokens it actually generated, on a device with a given memory bandwidth and peak FLOP/s (the benchmark's
"limit" column, es_repro/bench/throughput.py).

Per forward pass the bound is max(bytes moved / bandwidth, FLOPs / peak FLOP/s), summed over passes:
- prefill of a batch of B prompts of width L: weights read once; FLOPs = 2 * W * B * L + attention 2 * 2 * H * d *
  B * L * (L + 1) / 2 per layer (causal QK^T and AV);
- decode step t (t = 1..T; the new token attends to c = L + t positions): bytes = the matmul weights W * bytes per
  weight + the K/V cache read, 2 * layers * kv_heads * d * c * B * bytes per value; FLOPs = 2 * W * B + attention
  2 * 2 * layers * H * d * c * B.
W counts the weights used in matmuls per token: every parameter except the input embedding table, whose B rows
are gathered, not multiplied, unless it is tied to the LM head (then it is the head's matrix). Norms and biases
are in W too (a rounding error). Nothing else is counted (activations, logits, softmax): a lower bound.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

# HBM bandwidth and dense bf16 tensor-core peak from the vendors' data sheets. A key matches every device whose
# name contains it, so each row holds the highest numbers of the parts it matches (the bound must stay a lower
# bound) and more specific keys come first: H100 NVL reads 3.9 TB/s against the SXM part's 3.35.
GPUS = {
    "GH200": (4.9e12, 989e12),
    "H200": (4.8e12, 989e12),
    "H100 NVL": (3.9e12, 835e12),
    "H100": (3.35e12, 989e12),
    "A100": (2.039e12, 312e12),
    "L40S": (0.864e12, 362e12),
}


@dataclass(frozen=True)
class Shape:
    matmul_weights: int  # W
    layers: int
    heads: int
    kv_heads: int
    head_dim: int


def shape_of(model) -> Shape:
    """The Shape of an HF causal LM (tied embeddings counted once, as the head)."""
    c = model.config
    total = sum(p.numel() for p in model.parameters())  # parameters() lists a tied tensor once
    embed = model.get_input_embeddings().weight
    tied = embed is model.get_output_embeddings().weight
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return Shape(total - (0 if tied else embed.numel()), c.num_hidden_layers, c.num_attention_heads,
                 getattr(c, "num_key_value_heads", None) or c.num_attention_heads, head_dim)


def generation_limit_s(shape: Shape, *, batch: int, width: int, steps: int, bytes_per_value: float,
                       bandwidth: float, peak_flops: float) -> float:
    """Lower bound in seconds for one generate call: prefill of ``batch`` prompts of ``width`` tokens, then ``steps``
    decode steps (each producing one token per sequence)."""
    s, B, L = shape, batch, width
    weight_bytes = s.matmul_weights * bytes_per_value
    attn_per_pos = 2 * 2 * s.layers * s.heads * s.head_dim  # FLOPs per (query, key) position pair
    prefill_flops = 2 * s.matmul_weights * B * L + attn_per_pos * B * L * (L + 1) / 2
    total = max(weight_bytes / bandwidth, prefill_flops / peak_flops)
    kv_per_pos = 2 * s.layers * s.kv_heads * s.head_dim * bytes_per_value
    for t in range(1, steps):  # the prefill pass already produced the first token
        c = L + t
        step_bytes = weight_bytes + kv_per_pos * c * B
        step_flops = 2 * s.matmul_weights * B + attn_per_pos * c * B
        total += max(step_bytes / bandwidth, step_flops / peak_flops)
    return total


def device_limits(name: str | None, bandwidth_gbs: float | None, peak_tflops: float | None) -> tuple[float, float] | None:
    """(bytes/s, FLOP/s): the flags when both are given, else the first GPUS key found in the device name."""
    if bandwidth_gbs and peak_tflops:
        return bandwidth_gbs * 1e9, peak_tflops * 1e12
    for key, limits in GPUS.items():
        if name and key in name.upper():
            return limits
    return None


READ_PROBE_BYTES = 1 << 30  # more than the largest CPU last-level cache seen here (480 MiB), so the sum reads memory


def measured_read_bandwidth(repeats: int = 10) -> float:
    """The CPU's read bandwidth in bytes/s, as the weights of a decode step are read: a sum over a 1 GiB float32
    buffer at the current thread count, the best of ``repeats`` (the machine's capability: the limit built from it
    stays a lower bound). Measured just before a benchmark row, since on a shared host it moves by a few percent
    over minutes."""
    buffer = torch.ones(READ_PROBE_BYTES // 4)
    buffer.sum()  # first touch
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return READ_PROBE_BYTES / best
