"""The population engine on vLLM (generation.backend=vllm with es.lowrank=r): low-rank members served as LoRA
adapters of one engine, so a wave of up to generation.vllm.max_loras members runs as ONE generate call, each request
naming its member's adapter (vLLM's multi-LoRA batching), instead of one weight write and one generate per member.

- Member m's adapter on module W is (A_m, B_m) of es_repro/engines/lowrank.py member_factors, the HF low-rank
  engine's own construction (same seeds, tensor indices, noise mode, scale and dtype): PEFT's lora_A = B_m^T
  (r x in), lora_B = sign*sigma/sqrt(r) * A_m (out x r), lora_alpha = r (scaling 1), so the adapter adds exactly
  the HF hook's (x B_m)(scale A_m)^T.
- The adapters are built INSIDE the workers from the seeds (nothing but ints and floats crosses collective_rpc)
  and registered in memory with the worker's LoRA manager (no file is written): each wave removes the previous
  wave's adapters (ids 1..k are reused) and adds its own, so nothing grows over a run. A request's adapter is
  then already registered, and vLLM only moves it into a slot. Its lora_path (ADAPTER_PATH) names no file: a
  request whose adapter was not registered fails loudly instead of loading something else.
- The base weights never change during a generation: the update moves the fp32 master's targeted matrices by
  sum_m coeff_m A_m B_m^T / sqrt(r) (LowRankUpdate, as the HF engine) and writes the working weights as the
  full-rank path does (reload or direct), so every wave's adapters start from the updated base.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch

from es_repro.engines.lowrank import member_factors
from es_repro.engines.vllm.checks import lora_rank_bound
from es_repro.es.strategy import Member

ADAPTER_PATH = "es-repro:in-memory-adapter"  # not a path: adapters are registered by the worker, never loaded


def lora_engine_args(cfg) -> dict:
    """vllm.LLM's LoRA keywords for a population run: max_cpu_loras = max_loras, the one wave registered at a time."""
    v = cfg.generation.vllm
    return dict(enable_lora=True, max_loras=v.max_loras, max_cpu_loras=v.max_loras,
                max_lora_rank=lora_rank_bound(cfg.es.lowrank, v.max_lora_rank))


def waves(members: Sequence[Member], size: int) -> list[Sequence[Member]]:
    return [members[i:i + size] for i in range(0, len(members), size)]


def adapter_tensors(master, members: Sequence[Member], sigma: float) -> list[dict[str, torch.Tensor]]:
    """Each member's adapter in PEFT names, on the CPU (where vLLM keeps registered adapters), in the engine's dtype.
    ``master`` is the worker's LowRankEngineMaster (es_repro/engines/vllm/worker.py): its targets, rank, noise."""
    out: list[dict[str, torch.Tensor]] = [{} for _ in members]
    factors = {i: member_factors(master.like[i], i, members, sigma, master.rank, master.noise_mode, master.dtype)
               for i in master.moving}
    for module, i in master.targets:
        a, b = factors[i]  # (k, out, r) scaled, (k, in, r)
        for j, tensors in enumerate(out):
            tensors[f"base_model.model.{module}.lora_A.weight"] = b[j].T.contiguous().cpu()
            tensors[f"base_model.model.{module}.lora_B.weight"] = a[j].contiguous().cpu()
    return out


def register_adapters(lora_manager, master, members: Sequence[Member], sigma: float) -> float:
    """Adapters 1..k for this wave's members, in place of the previous wave's; returns the seconds it took."""
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper

    t0 = time.perf_counter()
    manager = lora_manager._adapter_manager
    config = lora_manager.lora_config
    modules = sorted({name.rsplit(".", 1)[-1] for name, _ in master.targets})
    helper = PEFTHelper(r=master.rank, lora_alpha=master.rank, target_modules=modules)
    helper.validate_legal(config)
    mapper = getattr(manager.model, "hf_to_vllm_mapper", None)
    for adapter_id in list(manager.list_adapters()):
        manager.remove_adapter(adapter_id)  # deactivated and dropped: its id is reused below
    for j, tensors in enumerate(adapter_tensors(master, members, sigma)):
        lora = LoRAModel.from_lora_tensors(j + 1, tensors, helper, device="cpu", dtype=config.lora_dtype,
                                           weights_mapper=mapper.get_rename_mapper() if mapper else None)
        if not manager.add_adapter(lora):
            raise RuntimeError(f"vLLM did not register member adapter {j + 1}")
    return time.perf_counter() - t0
