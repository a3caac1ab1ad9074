"""The vLLM engine's terms of the memory plan (es_repro/engines/memory.py): the engine's share of the GPU holds the
weights (one tensor-parallel shard per GPU) and the KV cache; every worker keeps a whole master, and the base
weights for KL wait in host memory (the engine scores KL itself, so no evaluation model is on the GPU).
The population engine (es.lowrank > 0, es_repro/engines/vllm/population.py) adds, inside the share, vLLM's LoRA
slots (max_loras x max_lora_rank x the projections' rows + columns, in the model dtype) and the KV cache of a
wave in flight (one sequence per slot, at the run's longest), and in host memory the registered adapters."""
from __future__ import annotations

from es_repro.engines.base import EngineMemory
from es_repro.engines.memory import GIB, ModelShape, cuda_dtype, dtype_bytes
from es_repro.engines.vllm.checks import lora_rank_bound


def memory_terms(cfg, shape: ModelShape, gpu_bytes: int, sharing: int) -> EngineMemory:
    v = cfg.generation.vllm
    b, P, tp = dtype_bytes(cfg), shape.params, v.tensor_parallel_size
    width = cfg.task.max_prompt_tokens + cfg.task.max_new_tokens
    share = int(v.gpu_memory_utilization / sharing * gpu_bytes)
    terms = EngineMemory(master_copies=tp, kl_logits_note=" (vLLM's prompt log-probabilities, beyond its profiled share)")
    terms.weights.append(("vLLM engine's share", share, f"gpu_memory_utilization {v.gpu_memory_utilization:g}"
                          + (f" / {sharing} engines" if sharing > 1 else "")
                          + f"; holds weights {P * b / tp / GIB:.2f} GiB/GPU + KV"))
    sequences = v.max_loras if cfg.es.lowrank else 1  # the population engine: every slot's member in flight
    kv = shape.kv_bytes_per_token(b) // tp * width * sequences
    slots = lora_slot_bytes(cfg, shape) // tp
    if cfg.es.lowrank:
        terms.generation += [
            ("LoRA slots (in the engine's share)", 0, f"{slots / GIB:.2f} GiB: generation.vllm.max_loras {v.max_loras} x "
                                                      f"rank {lora_rank_bound(cfg.es.lowrank, v.max_lora_rank)}"),
            ("KV cache of a wave (in the engine's share)", 0, f"{kv / GIB:.2f} GiB: {sequences} sequences x {width} tokens")]
        terms.host.append(("registered member adapters", lora_slot_bytes(cfg, shape, cfg.es.lowrank) * tp,
                           f"{v.max_loras} adapters of rank {cfg.es.lowrank}, on every worker"))
    needed = P * b // tp + slots + kv
    if needed > share:
        what = (f"its weights, {v.max_loras} LoRA slots and the KV cache of {sequences} {width}-token sequences"
                if cfg.es.lowrank else f"its weights and one {width}-token sequence's KV cache")
        terms.problems.append(f"the engine's share ({share / GIB:.1f} GiB) cannot hold {what} ({needed / GIB:.1f} GiB)")
    terms.evaluation.append(("evaluation copies", 0, "none: the engine scores KL under the base weights written in "
                                                     "from host memory"))
    if cfg.eval.kl_samples:
        terms.host.append(("base weights for KL", P * b * tp, f"{cuda_dtype(cfg)}, on every worker"))
    return terms


def lora_slot_bytes(cfg, shape: ModelShape, rank: int = 0) -> int:
    """vLLM's stacked LoRA weights of max_loras adapters at ``rank`` (default: the engine's max_lora_rank) on the
    projections, in the model dtype; 0 without es.lowrank."""
    v = cfg.generation.vllm
    if not cfg.es.lowrank:
        return 0
    rank = rank or lora_rank_bound(cfg.es.lowrank, v.max_lora_rank)
    return v.max_loras * rank * shape.projection_rows_and_cols * dtype_bytes(cfg)


def memory_levers(cfg) -> list[str]:
    population = ["generation.vllm.max_loras"] if cfg.es.lowrank else []
    return [*population, "generation.vllm.tensor_parallel_size", "generation.vllm.gpu_memory_utilization"]
