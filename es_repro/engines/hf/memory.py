"""The HF engine's terms of the memory plan (es_repro/engines/memory.py): the model on the GPU, one generate call's
KV cache and activations, an antithetic pair's held noise, and the base model for KL."""
from __future__ import annotations

from es_repro.engines.base import EngineMemory
from es_repro.engines.memory import ModelShape, cuda_dtype, dtype_bytes


def memory_terms(cfg, shape: ModelShape, gpu_bytes: int, sharing: int) -> EngineMemory:
    b = dtype_bytes(cfg)
    P = shape.params
    width = cfg.task.max_prompt_tokens + cfg.task.max_new_tokens
    batch, batch_note = generate_rows(cfg)
    terms = EngineMemory(weights=[("weights", P * b, cuda_dtype(cfg))], copies_per_process=True)
    if cfg.es.antithetic and cfg.es.reuse_pair_noise:
        noise_b = b if cfg.es.noise_dtype == "param" else 4
        terms.generation.append(("pair noise", P * noise_b, "es.reuse_pair_noise: one member's noise held for its mirror"))
    act = batch * cfg.task.max_prompt_tokens * (2 * shape.intermediate + 4 * shape.hidden) * b + batch * shape.vocab * 4
    terms.generation += [
        ("KV cache", batch * width * shape.kv_bytes_per_token(b),
         f"{batch_note} x {width} tokens (task.max_prompt_tokens + max_new_tokens)"),
        ("activations", act, f"prefill of {batch} x {cfg.task.max_prompt_tokens} tokens")]
    terms.evaluation.append(("evaluation copies", P * b if cfg.eval.kl_samples else 0, "base model" + (
        ", kept" if cfg.eval.keep_base_model else ", loaded per evaluation (eval.keep_base_model=false)")))
    return terms


def memory_levers(cfg) -> list[str]:
    out = ["eval.keep_base_model=false"] if cfg.eval.keep_base_model and cfg.eval.kl_samples else []
    return out + (["es.members_per_forward", "es.prompts_per_generation"] if cfg.es.lowrank else ["generation.batch_size"])


def generate_rows(cfg) -> tuple[int, str]:
    """(rows of one HF generate call, how they arise): generation.batch_size prompts, or with es.lowrank every
    prompt of the generation once per member sharing the forward."""
    if not cfg.es.lowrank:
        return cfg.generation.batch_size, f"batch {cfg.generation.batch_size}"
    prompts = cfg.es.prompts_per_generation or cfg.task.train_size
    rows = cfg.es.members_per_forward * prompts
    return rows, f"es.lowrank: {cfg.es.members_per_forward} members x {prompts} prompts"
