"""The HF transformers backend: an HF model's ES weights (es_repro/weights.py) plus its generation
(es_repro/hf_generation.py) behind the Backend seam (es_repro/backend.py).

Variants:
- HFBackend: one member at a time (perturb in place, generate, score, restore from the fp32 master);
- HFLowRankBackend: es.lowrank=r, several low-rank members share one batched generate (es_repro/lowrank.py);
- ``HFBackend(model, tokenizer, generator)`` with weights=None: generation and log-probabilities only, for a
  model trained by something else (the RL baselines' evaluation of the TRL policy).
Checkpoint payload (save_state): master.safetensors (fp32 master, when the model is not fp32: the exported
model.safetensors holds the fp32 weights otherwise) and update_rule.safetensors (when the rule keeps state).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from es_repro.es import Member
from es_repro.hf_generation import HFGenerator, token_logprobs
from es_repro.lowrank import LowRankESWeights
from es_repro.tasks.base import Row, Task, score
from es_repro.timing import Timer
from es_repro.update_rules import build_update_rule
from es_repro.weights import ESWeights

MASTER_FILE, RULE_FILE = "master.safetensors", "update_rule.safetensors"


@contextmanager
def inference_mode(model: torch.nn.Module):
    """Eval mode for the duration (a model being trained by TRL goes back to train mode after)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class HFBackend:
    name = "hf"
    keep_reference = True  # eval.keep_base_model
    reuse_pair_noise = True  # es.reuse_pair_noise: a mirrored pair draws its noise once (ESWeights.perturb)

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, generator: HFGenerator,
                 weights: ESWeights | None = None, reference: Callable[[], PreTrainedModel] | None = None):
        self.model, self.tokenizer, self.generator, self.weights = model, tokenizer, generator, weights
        self._reference_loader, self._reference = reference, None

    def describe(self) -> dict:
        """Generation settings that change greedy outputs, for run.json."""
        g = self.generator
        return {"name": self.name, "repetition_penalty": g.repetition_penalty, "cache": g.cache, "compile": g.compile}

    # generation ---------------------------------------------------------------------------------------------
    @property
    def generated_tokens(self) -> int:
        return self.generator.generated_tokens

    def prompts(self, rows: Sequence[Row]) -> list[str]:
        return self.generator.prompts(rows)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]

    def generate(self, rows: Sequence[Row], *, max_new_tokens: int | None = None) -> list[str]:
        with inference_mode(self.model):
            return self.generator.generate(rows, max_new_tokens=max_new_tokens)

    def sample_ids(self, rows: Sequence[Row], *, temperature: float, seed: int,
                   max_new_tokens: int | None = None) -> list[tuple[list[int], list[int]]]:
        device = self.model.device
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), inference_mode(self.model):  # no other stream is disturbed
            torch.manual_seed(seed)
            return self.generator.generate_ids(rows, temperature=temperature, max_new_tokens=max_new_tokens)

    def token_logprobs(self, pairs, *, reference: bool = False) -> list[torch.Tensor]:
        model = self.reference_model() if reference else self.model
        try:
            with inference_mode(model):
                return [token_logprobs(model, p, c) for p, c in pairs]
        finally:
            if reference and not self.keep_reference:
                self._reference = None  # eval.keep_base_model=false: its memory is back for generation
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def reference_model(self) -> PreTrainedModel:
        """The base model for KL, loaded on first use (an evaluation at generation > 0) and kept, unless
        keep_reference is off (then loaded for each evaluation's KL and freed after it)."""
        if self._reference is None:
            if self._reference_loader is None:
                raise RuntimeError("this backend has no reference (base) model for KL")
            self._reference = self._reference_loader()
        return self._reference

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

    def fitness(self, members: Sequence[Member], sigma: float, rows: Sequence[Row], task: Task,
                timer: Timer, progress: str = "") -> list[float]:
        out = []
        for completions in self.member_completions(members, sigma, rows, timer, progress):
            with timer("reward"):
                rewards = score(task.reward, completions, rows)
            out.append(self._member_mean(rewards))
        return out

    @staticmethod
    def _member_mean(rewards: list[float]) -> float:
        return float(np.mean(rewards))

    def apply_update(self, seed_coeffs) -> None:
        self._es_weights().apply_update(seed_coeffs)

    def save_state(self, path: Path) -> None:
        weights = self._es_weights()
        if any(p.dtype != torch.float32 for p in weights.params):
            save_file({n: m.contiguous() for n, m in weights.master_state().items()}, Path(path) / MASTER_FILE)
        rule_state = weights.rule.state_dict()
        if rule_state:
            save_file({k: v.contiguous() for k, v in rule_state.items()}, Path(path) / RULE_FILE)

    def load_state(self, path: Path) -> None:
        weights, path = self._es_weights(), Path(path)
        if (path / MASTER_FILE).is_file():
            state = load_file(path / MASTER_FILE)
        else:
            saved = load_file(path / "model.safetensors")
            # save_pretrained drops tied duplicates; keep only the names ES tracks.
            state = {n: saved[n].to(torch.float32) for n in weights.names if n in saved}
        weights.load_master(state)
        weights.rule.load_state_dict(load_file(path / RULE_FILE) if (path / RULE_FILE).is_file() else {})

    def export(self, path: Path) -> None:
        self.model.save_pretrained(path)
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

    @staticmethod
    def _member_mean(rewards: list[float]) -> float:
        return sum(rewards) / len(rewards)  # the low-rank path's summation order, kept bit for bit


def make_generator(cfg, task: Task, model, tokenizer) -> HFGenerator:
    return HFGenerator(model, tokenizer, prompt_format=cfg.task.prompt_format, max_new_tokens=cfg.task.max_new_tokens,
                       stop_strings=task.stop_strings, batch_size=cfg.generation.batch_size,
                       sort_by_length=cfg.generation.sort_by_length,
                       repetition_penalty=cfg.generation.repetition_penalty, cache=cfg.generation.cache,
                       compile=cfg.generation.compile)


def make_weights(model, es_cfg) -> ESWeights:
    """The ES view of a model for an ESConfig: full-rank noise (default) or low-rank population mode."""
    rule = build_update_rule(es_cfg)
    if es_cfg.lowrank:
        return LowRankESWeights(model, rank=es_cfg.lowrank, rule=rule)
    return ESWeights(model, es_cfg.noise, es_cfg.noise_dtype, rule, master_device=es_cfg.master_device)


def build(cfg, task: Task) -> HFBackend:
    """The backend of an ES run: the configured model, its ES weights and generator, the base model for KL."""
    from es_repro.models import load_model  # local: models pulls in the model-file machinery

    model, tokenizer = load_model(cfg.model)
    args = (model, tokenizer, make_generator(cfg, task, model, tokenizer), make_weights(model, cfg.es))
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
