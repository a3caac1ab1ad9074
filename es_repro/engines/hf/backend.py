"""The HF transformers backend: an HF model's ES weights (es_repro/engines/weights.py) plus its generation
(es_repro/engines/hf/generation.py) behind the Backend seam (es_repro/engines/base.py).

Variants:
- HFBackend: one member at a time (perturb in place, generate, score, restore from the fp32 master);
- HFLowRankBackend: es.lowrank=r, several low-rank members share one batched generate (es_repro/engines/lowrank.py);
- ``HFBackend(model, tokenizer, generator)`` with weights=None: generation and log-probabilities only, for a
  model trained by something else (the RL baselines' evaluation of the TRL policy).
Checkpoint payload (save_state): the master's files (es_repro/engines/master.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from es_repro.engines.base import Backend, builds, eval_mode
from es_repro.engines.hf import memory
from es_repro.engines.hf.decode import FastDecoder, ruled_out_by_settings, unsupported
from es_repro.engines.hf.generation import HFGenerator
from es_repro.engines.hf.packed import install_packed_linears, use_packed_weights
from es_repro.engines.lowrank import LowRankESWeights, lowrank_member_mean
from es_repro.engines.weights import ESWeights, unique_parameters
from es_repro.es.noise import keep_noise_for_update, noise_mode
from es_repro.es.strategy import Member
from es_repro.es.update_rules import build_update_rule
from es_repro.tasks.base import Row, Task
from es_repro.util.timing import Timer


class HFBackend(Backend):
    name = "hf"
    memory_plan = memory  # es_repro/engines/hf/memory.py
    reuse_pair_noise = True  # es.reuse_pair_noise: a mirrored pair draws its noise once (ESWeights.perturb)

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, generator: HFGenerator,
                 weights: ESWeights | None = None, reference: Callable[[], PreTrainedModel] | None = None):
        super().__init__(reference)
        self.model, self.tokenizer, self.generator, self.weights = model, tokenizer, generator, weights

    def describe(self) -> dict:
        """Generation settings that change greedy outputs, for run.json."""
        g = self.generator
        decoder = f"fast ({g.decoder.kernel} linears)" if g.decoder is not None else "hf generate"
        return {"name": self.name, "repetition_penalty": g.repetition_penalty, "cache": g.cache, "compile": g.compile,
                "greedy_decoder": decoder}

    # generation ---------------------------------------------------------------------------------------------
    @property
    def generated_tokens(self) -> int:
        return self.generator.generated_tokens

    @property
    def calls(self) -> list[tuple[int, int, int]]:
        """(batch, prompt width, steps) of each generate call, for the benchmark's hardware-limit column."""
        return self.generator.calls

    @property
    def prompt_format(self) -> str:
        return self.generator.prompt_format

    def generate(self, rows: Sequence[Row], *, max_new_tokens: int | None = None) -> list[str]:
        with eval_mode(self.model):
            return self.generator.generate(rows, max_new_tokens=max_new_tokens)

    def sample_ids(self, rows: Sequence[Row], *, temperature: float, seed: int,
                   max_new_tokens: int | None = None) -> list[tuple[list[int], list[int]]]:
        device = self.model.device
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), eval_mode(self.model):  # no other stream is disturbed
            torch.manual_seed(seed)
            return self.generator.generate_ids(rows, temperature=temperature, max_new_tokens=max_new_tokens)

    def policy_model(self) -> PreTrainedModel:
        return self.model

    # ES -----------------------------------------------------------------------------------------------------
    def _es_weights(self) -> ESWeights:
        if self.weights is None:
            raise RuntimeError("this HF backend serves generation only (no ES weights)")
        return self.weights

    def member_completions(self, members: Sequence[Member], sigma: float, rows: Sequence[Row], timer: Timer,
                           progress: str = "") -> list[list[str]]:
        weights = self._es_weights()
        out = []
        for k, member in enumerate(tqdm(members, desc=progress, leave=False, disable=not progress)):
            mirrored_next = self.reuse_pair_noise and k + 1 < len(members) and members[k + 1].seed == member.seed
            with timer("perturb"):
                if mirrored_next:
                    weights.perturb(member.seed, member.sign * sigma, keep_noise=True)
                else:
                    weights.perturb(member.seed, member.sign * sigma)
            try:
                with timer("generate"):
                    out.append(self.generator.generate(rows))
            finally:
                with timer("restore"):
                    weights.restore()
        return out

    def apply_update(self, seed_coeffs) -> None:
        self._es_weights().apply_update(seed_coeffs)

    def save_state(self, path: Path) -> None:
        self._es_weights().save(path)

    def load_state(self, path: Path) -> None:
        self._es_weights().load(path)

    def export(self, path: Path) -> None:
        self.model.save_pretrained(path)  # the fast decode's stacked views save as separate tensors (tested)
        self.tokenizer.save_pretrained(path)


class HFLowRankBackend(HFBackend):
    """es.lowrank=r: ``members_per_forward`` low-rank members evaluated together in one batched generate."""

    name = "hf-lowrank"

    def __init__(self, *args, members_per_forward: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        self.members_per_forward = members_per_forward

    def member_completions(self, members, sigma, rows, timer, progress="") -> list[list[str]]:
        weights: LowRankESWeights = self._es_weights()
        out: list[list[str]] = []
        for start in range(0, len(members), self.members_per_forward):
            chunk = members[start : start + self.members_per_forward]
            batch = [row for _ in chunk for row in rows]  # member-major: member j owns rows [j*P, (j+1)*P)
            with weights.population(chunk, sigma):
                with timer("generate"):
                    completions = self.generator.generate(batch, one_batch=True)
            out.extend(completions[j * len(rows) : (j + 1) * len(rows)] for j in range(len(chunk)))
        return out

    member_mean = staticmethod(lowrank_member_mean)


def make_generator(cfg, task: Task, model, tokenizer) -> HFGenerator:
    return HFGenerator(model, tokenizer, prompt_format=cfg.task.prompt_format, max_new_tokens=cfg.task.max_new_tokens,
                       stop_strings=task.stop_strings, batch_size=cfg.generation.batch_size,
                       sort_by_length=cfg.generation.sort_by_length,
                       repetition_penalty=cfg.generation.repetition_penalty, cache=cfg.generation.cache,
                       compile=cfg.generation.compile)


def pack_weights(cfg, model) -> bool:
    """generation.packed_weights (es_repro/engines/hf/packed.py); never under a compiled decode."""
    if cfg.generation.compile == "on" or not use_packed_weights(cfg.generation.packed_weights, model):
        return False
    return install_packed_linears(model) > 0


def fast_decoder(cfg, model) -> FastDecoder | None:
    """generation.fast_decode (es_repro/engines/hf/decode.py) for a full-rank HF run; the checks refuse =on where a
    setting rules it out, and the model's own limits are FastDecoder's error."""
    g = cfg.generation
    if g.fast_decode == "off":
        return None
    if g.fast_decode == "auto" and (unsupported(model) or cfg.es.seed_stream == "released"
                                    or ruled_out_by_settings(cfg)):
        return None
    return FastDecoder(model, g.linear_kernel)


def make_weights(model, es_cfg) -> ESWeights:
    """The ES view of a model for an ESConfig: full-rank noise (default) or low-rank population mode."""
    rule = build_update_rule(es_cfg)
    if es_cfg.lowrank:
        return LowRankESWeights(model, rank=es_cfg.lowrank, rule=rule, master_device=es_cfg.master_device,
                                noise=noise_mode(es_cfg), targets=es_cfg.lowrank_targets)
    seeds = es_cfg.population // 2 if es_cfg.antithetic else es_cfg.population
    keep = keep_noise_for_update(es_cfg.noise_cache, [p for _, p in unique_parameters(model)], es_cfg.noise_dtype, seeds,
                                 es_cfg)
    return ESWeights(model, noise_mode(es_cfg), es_cfg.noise_dtype, rule, master_device=es_cfg.master_device,
                     keep_for_update=keep)


@builds(HFBackend)
def build(cfg, task: Task) -> HFBackend:
    """The backend of an ES run: the configured model, its ES weights and generator, the base model for KL."""
    from es_repro.models.loading import load_model  # local: models pulls in the model-file machinery

    model, tokenizer = load_model(cfg.model)
    pack_weights(cfg, model)
    generator = make_generator(cfg, task, model, tokenizer)
    generator.decoder = fast_decoder(cfg, model)  # first: it stacks layers' weights in place (before the ES view)
    args = (model, tokenizer, generator, make_weights(model, cfg.es))
    reference = lambda: load_model(cfg.model)[0]  # noqa: E731
    if cfg.es.lowrank:
        backend = HFLowRankBackend(*args, reference=reference, members_per_forward=cfg.es.members_per_forward)
    else:
        backend = HFBackend(*args, reference=reference)
        backend.reuse_pair_noise = cfg.es.reuse_pair_noise
    backend.keep_reference = cfg.eval.keep_base_model
    return backend


def for_model(cfg, task: Task, model, tokenizer, reference: Callable[[], PreTrainedModel]) -> HFBackend:
    """Generation and log-probabilities over a model trained elsewhere (the RL baselines' policy)."""
    return HFBackend(model, tokenizer, make_generator(cfg, task, model, tokenizer), reference=reference)
