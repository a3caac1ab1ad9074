"""The fp32 master weights ES updates, shared by every engine that keeps full-rank float weights: the HF model's
ESWeights (es_repro/engines/weights.py) and the vLLM worker's EngineMaster (es_repro/engines/vllm/worker.py).

Tensor i is the i-th unique parameter of the HF model (``named_parameters(remove_duplicate=True)``), so the noise of
every member, and with it the whole trajectory, is the same on every engine. Its checkpoint payload is one set of
files, so a run saved by one engine resumes on another:
    master.safetensors       the fp32 master (omitted for an fp32 model: the export's model.safetensors is it)
    update_rule.safetensors  the update rule's state (omitted when the rule keeps none)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file

from es_repro.es.noise import noise_mode, tensor_noise
from es_repro.es.update_rules import SGD

MASTER_FILE, RULE_FILE, MODEL_FILE = "master.safetensors", "update_rule.safetensors", "model.safetensors"


class Master:
    """names[i], master[i] (fp32) and like[i]: the working tensor of index i, or anything with its shape, dtype
    and device (the noise is drawn for it, as the release draws it for the parameter)."""

    def __init__(self, names: Sequence[str], master: list[torch.Tensor], like: Sequence[Any], mode,
                 noise_dtype: str, rule: SGD | None = None):
        self.names, self.master, self.like = list(names), master, list(like)
        self.noise_mode, self.noise_dtype = noise_mode(mode), noise_dtype  # a name, an ES config or a mode
        self.rule = rule if rule is not None else SGD()
        self.rule.bind(self.master_state())
        # seed -> its noise per tensor, kept from the perturbation for the update (es.noise_cache) or for the
        # mirrored member of an antithetic pair: the same bits, drawn once
        self.kept: dict[int, list[torch.Tensor]] = {}

    def draw(self, i: int, seed: int) -> torch.Tensor:
        """eps_i(seed), freshly drawn."""
        return tensor_noise(self.like[i], i, seed, self.noise_mode, self.noise_dtype)

    def noise(self, i: int, seed: int) -> torch.Tensor:
        """eps_i(seed): the kept copy, else drawn."""
        kept = self.kept.get(seed)
        return kept[i] if kept is not None else self.draw(i, seed)

    def combined_noise(self, i: int, seed_coeffs: Sequence[tuple[int, float]]) -> torch.Tensor:
        """delta_i = sum_k coeff_k * eps_i(seed_k) in fp32 on the noise's device, in the order given (mirrored pairs
        arrive merged by es.strategy.merge_by_seed: one draw each)."""
        like = self.like[i]
        delta = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
        for seed, coeff in seed_coeffs:
            delta.add_(self.noise(i, seed), alpha=coeff)  # a bf16 noise is widened inside the add (exact), no copy
        return delta

    def moving_tensors(self) -> Sequence[int]:
        """The indices an update moves: every tensor (a low-rank master moves only its targeted matrices)."""
        return range(len(self.master))

    @torch.no_grad()
    def step_master(self, seed_coeffs: Iterable[tuple[int, float]]) -> Iterator[int]:
        """The update rule moves each master tensor by its delta; yields i after tensor i moved, so a caller can
        write it out before the next delta exists (one tensor's noise in memory at a time)."""
        seed_coeffs = list(seed_coeffs)
        for i in self.moving_tensors():
            m = self.master[i]
            self.rule.step(self.names[i], m, self.combined_noise(i, seed_coeffs).to(m.device))
            yield i
        self.kept.clear()  # the generation is over: its noise is not needed again

    def master_state(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.master))

    @torch.no_grad()
    def set_master(self, state: dict[str, torch.Tensor]) -> None:
        """Master from saved fp32 tensors; missing or extra names are an error."""
        if set(state) != set(self.names):
            missing, extra = set(self.names) - set(state), set(state) - set(self.names)
            raise ValueError(f"checkpoint does not match the model: missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}")
        for n, m in zip(self.names, self.master):
            m.copy_(state[n])
        self.kept.clear()

    # the checkpoint payload -----------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path = Path(path)
        if any(like.dtype != torch.float32 for like in self.like):
            save_file({n: m.contiguous() for n, m in self.master_state().items()}, path / MASTER_FILE)
        rule_state = self.rule.state_dict()
        if rule_state:
            save_file({k: v.contiguous() for k, v in rule_state.items()}, path / RULE_FILE)

    def load(self, path: Path) -> None:
        """Master and rule state from a checkpoint directory (the caller then writes the working weights)."""
        path = Path(path)
        if (path / MASTER_FILE).is_file():
            state = load_file(path / MASTER_FILE)
        else:
            saved = load_file(path / MODEL_FILE)  # tied duplicates are absent; keep only the names ES tracks
            state = {n: saved[n].to(torch.float32) for n in self.names if n in saved}
        self.set_master(state)
        rule_state = load_file(path / RULE_FILE) if (path / RULE_FILE).is_file() else {}
        # safetensors loads onto the CPU; the rule's state (momentum's velocity) lives where the master does, or the
        # first update after a resume on a GPU would add a CPU velocity to a CUDA delta
        self.rule.load_state_dict({k: v.to(self.master[0].device) for k, v in rule_state.items()})
