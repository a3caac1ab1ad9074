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
        a, b_t = a.cpu(), b.transpose(1, 2).contiguous().cpu()  # one copy per tensor; members are views of it
        for j, tensors in enumerate(out):
            tensors[f"base_model.model.{module}.lora_A.weight"] = b_t[j]
            tensors[f"base_model.model.{module}.lora_B.weight"] = a[j]
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


def use_slot_groups_on_cpu(lora_manager) -> int:
    """On vLLM-CPU: the LoRA linears' Punica wrapper becomes SlotGroupsCPU (below) instead of gathering each token's
    adapter and multiplying token by token, slice by slice (PunicaWrapperCPU: ~35 small ops per layer, 30 layers
    deep, every decode step). Returns the wrappers switched (0 off CPU: CUDA keeps vLLM's Triton kernels)."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    switched = 0
    for wrapper in lora_manager._adapter_manager.punica_wrapper_mapping.values():
        if type(wrapper) is PunicaWrapperCPU:
            wrapper.__class__ = _slot_groups_class(PunicaWrapperCPU)
            switched += 1
    return switched


def _slot_groups_class(base: type) -> type:
    class SlotGroupsCPU(base):
        """add_lora_linear for a layer of S slices (q, k, v; gate, up; one) over L slots of rank r, in fp32 as
        vLLM's CPU ops compute the LoRA terms. A (L, in, S r) holds every slot's lora_a of all slices, B_s
        (L, r, out_s) slice s's lora_b; both are rebuilt only when vLLM writes a slot (the tensors' versions).
        - The population's decode steps: the tokens come in n equal runs, one slot each (a member's P prompts, as
          the waves submit them; vLLM picks the slots): x viewed as (n, P, in), h = bmm(x, A[order]),
          y_s += bmm(h_s, B_s[order]); the HF engine's hooks compute the same two batched products.
        - Any other layout (prefill, a mix with requests without an adapter): every slot for every token in two
          dense GEMMs, each token keeping its own slot by a mask (slot -1: nothing). A step with no adapter at all
          (an evaluation, KL scoring) adds nothing.
        The layout test runs once per step (the token -> slot map's version)."""

        def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *, buffer=None, **kw):
            if self._es_no_adapter():  # an evaluation's or KL's batch: the base weights alone, no LoRA work
                return
            a, bs = self._es_layer(lora_a_stacked, lora_b_stacked, output_slices)
            slots, slices, rank = a.shape[0], len(output_slices), lora_a_stacked[0].shape[-2]
            x = x.view(-1, x.shape[-1]).to(torch.float32)
            y = y.view(-1, y.shape[-1])
            runs = self._es_runs(slots)
            if runs is not None:  # (order of the n slots, P tokens each)
                order, per = runs
                h = torch.bmm(x.view(len(order), per, -1), a[order])  # (n, P, S r)
                parts = [h[:, :, s * rank:(s + 1) * rank] for s in range(slices)]
                products = [torch.bmm(part, b[order]).view(x.shape[0], -1) for part, b in zip(parts, bs)]
            else:
                keep = self._es_keep(slots)  # (T, L)
                h = (x @ a.transpose(1, 2).reshape(-1, x.shape[-1]).T).view(-1, slots, slices, rank)
                h = h * keep[:, :, None, None]
                products = [h[:, :, s, :].reshape(-1, slots * rank) @ b.reshape(slots * rank, -1)
                            for s, b in enumerate(bs)]
            offset = 0
            for product, size in zip(products, output_slices):
                y[:, offset:offset + size] += (product * scale if scale != 1 else product).to(y.dtype)
                offset += size

        def _es_layer(self, lora_a_stacked, lora_b_stacked, output_slices):
            cache = self.__dict__.setdefault("_es_layers", {})
            key = tuple(id(t) for t in (*lora_a_stacked, *lora_b_stacked))
            versions = tuple(t._version for t in (*lora_a_stacked, *lora_b_stacked))
            hit = cache.get(key)
            if hit is not None and hit[0] == versions:
                return hit[1], hit[2]
            slots, rank = lora_a_stacked[0].shape[0], lora_a_stacked[0].shape[-2]
            # lora_a: (L, 1, r, in) per slice -> (L, in, S r); lora_b: (L, 1, out, r) -> (L, r, out)
            a = torch.cat([t.reshape(slots, rank, -1) for t in lora_a_stacked], dim=1).transpose(1, 2)
            a = a.to(torch.float32).contiguous()
            bs = [t.reshape(slots, size, rank).transpose(1, 2).to(torch.float32).contiguous()
                  for t, size in zip(lora_b_stacked, output_slices)]
            cache[key] = (versions, a, bs)
            return a, bs

        def _es_step(self) -> dict:
            indices = self.token_lora_indices
            step = (indices._version, indices.shape[0], indices.data_ptr())
            cache = self.__dict__.get("_es_step_cache")
            if cache is None or cache[0] != step:
                cache = self._es_step_cache = (step, {})
            return cache[1]

        def _es_no_adapter(self) -> bool:
            """Every token of this step is without an adapter (slot -1; vLLM's no_lora is set by prefill only)."""
            step = self._es_step()
            if "no adapter" not in step:
                step["no adapter"] = bool((self.token_lora_indices < 0).all())
            return step["no adapter"]

        def _es_runs(self, slots: int) -> tuple[torch.Tensor, int] | None:
            """(the slot of each run, tokens per run) when the tokens come in equal runs of distinct slots."""
            step = self._es_step()
            if "runs" not in step:
                indices, step["runs"] = self.token_lora_indices, None
                count = indices.shape[0]
                n = int((indices[1:] != indices[:-1]).sum()) + 1 if count else 0
                if n and count % n == 0:
                    order = indices[::count // n]
                    distinct = int(order.unique().numel()) == n and int(order.min()) >= 0
                    if distinct and torch.equal(indices, order.repeat_interleave(count // n)):
                        step["runs"] = (order.to(torch.long), count // n)
            return step["runs"]

        def _es_keep(self, slots: int) -> torch.Tensor:
            step = self._es_step()
            if ("keep", slots) not in step:
                indices = self.token_lora_indices
                step[("keep", slots)] = (indices[:, None] == torch.arange(slots, device=indices.device)[None, :]
                                         ).to(torch.float32)
            return step[("keep", slots)]

    return SlotGroupsCPU
