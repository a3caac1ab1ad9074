"""The vLLM engine's terms of the memory plan (es_repro/engines/memory.py): the engine's share of the GPU holds the
weights (one tensor-parallel shard per GPU) and the KV cache; every worker keeps a whole master, and the base
weights for KL wait in host memory (the engine scores KL itself, so no evaluation model is on the GPU)."""
from __future__ import annotations

from es_repro.engines.base import EngineMemory
from es_repro.engines.memory import GIB, ModelShape, cuda_dtype, dtype_bytes


def memory_terms(cfg, shape: ModelShape, gpu_bytes: int, sharing: int) -> EngineMemory:
    v = cfg.generation.vllm
    b, P, tp = dtype_bytes(cfg), shape.params, v.tensor_parallel_size
    width = cfg.task.max_prompt_tokens + cfg.task.max_new_tokens
    share = int(v.gpu_memory_utilization / sharing * gpu_bytes)
    terms = EngineMemory(master_copies=tp, kl_logits_note=" (vLLM's prompt log-probabilities, beyond its profiled share)")
    terms.weights.append(("vLLM engine's share", share, f"gpu_memory_utilization {v.gpu_memory_utilization:g}"
                          + (f" / {sharing} engines" if sharing > 1 else "")
                          + f"; holds weights {P * b / tp / GIB:.2f} GiB/GPU + KV"))
    needed = P * b // tp + shape.kv_bytes_per_token(b) // tp * width
    if needed > share:
        terms.problems.append(f"the engine's share ({share / GIB:.1f} GiB) cannot hold its weights and one "
                              f"{width}-token sequence's KV cache ({needed / GIB:.1f} GiB)")
    terms.evaluation.append(("evaluation copies", 0, "none: the engine scores KL under the base weights written in "
                                                     "from host memory"))
    if cfg.eval.kl_samples:
        terms.host.append(("base weights for KL", P * b * tp, f"{cuda_dtype(cfg)}, on every worker"))
    return terms


def memory_levers(cfg) -> list[str]:
    return ["generation.vllm.tensor_parallel_size", "generation.vllm.gpu_memory_utilization"]
