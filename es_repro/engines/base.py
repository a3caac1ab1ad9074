"""The engine seam: a Backend owns a model's weights AND its generation, and is the only thing the ES loop, the
evaluator, replay/resume, the RL baselines' evaluation and the benchmark talk to.

A new engine is one module with a Backend subclass and a factory ``build(cfg: RunConfig, task: Task) -> Backend``,
plus one entry in BACKENDS (or, without editing this file, ``generation.backend=package.module:factory``). The HF
backend (es_repro/engines/hf/backend.py) is the reference implementation; low-rank population mode is a variant.

What a backend promises:
- ``fitness`` perturbs, generates greedily, scores and restores inside: the weights after the call equal the
  weights before it, bit for bit. ``member_completions`` (the probe's) does the same without scoring.
- ``apply_update(seed_coeffs)`` moves the weights by sum_k coeff_k * eps(seed_k) through the configured update
  rule; given the same seeds and coefficients it always lands on the same weights (replay depends on it).
- ``save_state``/``load_state`` round-trip everything ``apply_update`` depends on (master weights, rule state).
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # typing only: this module stays import-light (config validation reads BACKENDS)
    from es_repro.es.strategy import Member
    from es_repro.run.timing import Timer
    from es_repro.tasks.base import Row, Task

# generation.backend value -> "module:factory". Factories are imported only when chosen.
BACKENDS = {"hf": "es_repro.engines.hf.backend:build", "qes": "es_repro.qes.backend:build",
            "vllm": "es_repro.engines.vllm.backend:build"}

Pair = tuple[list[int], list[int]]  # (prompt token ids, completion token ids)


class Backend:
    """The contract every engine implements, and the defaults of its optional parts. An engine subclasses it and
    overrides the methods that raise NotImplementedError; the loop, evaluator, probe and benchmark call every method
    here without probing for it."""

    name = "backend"
    keep_reference = True  # eval.keep_base_model: keep the base model (for KL) loaded between evaluations
    generated_tokens: int = 0  # running count of generated tokens, for throughput reports
    tokenizer: Any = None
    prompt_format: str = "raw"  # task.prompt_format

    def __init__(self, reference: Callable[[], Any] | None = None):
        self._reference_loader, self._reference = reference, None

    # run.json and the generation log --------------------------------------------------------------------------
    def describe(self) -> dict:
        """Written to run.json under "backend": what ran (e.g. the forward path, the engine's version)."""
        return {"name": self.name}

    def update_stats(self) -> dict:
        """Merged into each generation's log line (e.g. the fraction of codes an update changed)."""
        return {}

    # generation ---------------------------------------------------------------------------------------------
    def prompts(self, rows: Sequence["Row"]) -> list[str]:
        """The prompt text of each row as the engine renders it (task.prompt_format)."""
        from es_repro.engines.hf.generation import render_prompt

        return [render_prompt(r, self.tokenizer, self.prompt_format) for r in rows]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Prompt lengths in the engine's tokens (for task.max_prompt_tokens)."""
        return [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]

    def generate(self, rows: Sequence["Row"], *, max_new_tokens: int | None = None) -> list[str]:
        """Greedy completions in row order, cut after the task's first stop string."""
        raise NotImplementedError

    def sample_ids(self, rows: Sequence["Row"], *, temperature: float, seed: int,
                   max_new_tokens: int | None = None) -> list[Pair]:
        """Sampled (prompt ids, completion ids), seeded and without disturbing any other random stream."""
        raise NotImplementedError

    # log-probabilities for KL -------------------------------------------------------------------------------
    def token_logprobs(self, pairs: Sequence[Pair], *, reference: bool = False) -> list[Any]:
        """Per-token log-probabilities of each completion under the current weights, or under the base model
        (reference=True), as float32 tensors (for KL). This default scores both with HF models (policy_model,
        reference_model; with keep_reference off they leave memory after the call); an engine that can score
        under both weights itself overrides it (vLLM)."""
        import torch

        from es_repro.engines.hf.generation import batch_token_logprobs

        model = self.reference_model() if reference else self.policy_model()
        try:
            with eval_mode(model):
                return batch_token_logprobs(model, pairs)
        finally:
            if not self.keep_reference:
                self.release_eval_models(reference)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def policy_model(self) -> Any:
        """An HF model holding the current weights."""
        raise NotImplementedError

    def reference_model(self) -> Any:
        """The base model for KL, loaded on first use (an evaluation at generation > 0) and kept, unless
        keep_reference is off (then loaded for each evaluation's KL and freed after it)."""
        if self._reference is None:
            if self._reference_loader is None:
                raise RuntimeError(f"the {self.name} backend has no reference (base) model for KL")
            self._reference = self._reference_loader()
        return self._reference

    def release_eval_models(self, reference: bool) -> None:
        """keep_reference off: drop the models token_logprobs loaded, so their memory is back for generation."""
        if reference:
            self._reference = None

    # ES -----------------------------------------------------------------------------------------------------
    def member_completions(self, members: Sequence["Member"], sigma: float, rows: Sequence["Row"], timer: "Timer",
                           progress: str = "") -> list[list[str]]:
        """Each perturbed member's greedy completions on ``rows``, in member and row order; the weights after the
        call equal the weights before it, bit for bit. sigma=0 gives the base model's completions through the
        same code path (the sigma/N probe, es_repro/probe/)."""
        raise NotImplementedError(f"the {self.name} backend cannot generate per member")

    def fitness(self, members: Sequence["Member"], sigma: float, rows: Sequence["Row"], task: "Task",
                timer: "Timer", progress: str = "") -> list[float]:
        """Mean per-prompt reward of each perturbed member on ``rows``, in member order."""
        from es_repro.tasks.base import score

        out = []
        for completions in self.member_completions(members, sigma, rows, timer, progress):
            with timer("reward"):
                rewards = score(task.reward, completions, rows)
            out.append(self.member_mean(rewards))
        return out

    @staticmethod
    def member_mean(rewards: list[float]) -> float:
        import numpy as np

        return float(np.mean(rewards))

    def apply_update(self, seed_coeffs: Sequence[tuple[int, float]]) -> None:
        """Move the weights by sum_k coeff_k * eps(seed_k) through the configured update rule; the same seeds and
        coefficients always land on the same weights (replay depends on it)."""
        raise NotImplementedError

    def save_state(self, path: Path) -> None:
        """Write everything apply_update depends on (master weights, rule state) beside the export."""
        raise NotImplementedError

    def load_state(self, path: Path) -> None:
        raise NotImplementedError

    def export(self, path: Path) -> None:
        """An HF-loadable checkpoint (config, weights, tokenizer) of the current weights."""
        raise NotImplementedError


@contextmanager
def eval_mode(model: Any):
    """Eval mode for the duration (a model being trained by TRL goes back to train mode after)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# Engine modules before the package was grouped (docs/layout.md "What moved"): a generation.backend string written
# with one still works, with a warning, for one release.
MOVED_MODULES = {"es_repro.hf_backend": "es_repro.engines.hf.backend",
                 "es_repro.vllm_backend": "es_repro.engines.vllm.backend"}


def backend_factory(name: str) -> Callable[..., Backend]:
    """The factory for a generation.backend value: a registered name, or "package.module:factory"."""
    spec = BACKENDS.get(name, name)
    module, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"generation.backend={name!r} is unknown; choose one of: {', '.join(BACKENDS)} "
                         f"(or give a factory as package.module:function)")
    if module in MOVED_MODULES:
        import warnings

        warnings.warn(f"generation.backend={name!r}: {module} is now {MOVED_MODULES[module]}; the old path goes in "
                      f"the next release", FutureWarning, stacklevel=2)
        module = MOVED_MODULES[module]
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"generation.backend={name!r}: cannot import {spec} ({err})") from None


def backend_name(cfg) -> str:
    """generation.backend, except where es.update names its own engine (es_repro/es/update_rules.py UPDATES: qes
    runs the QES backend, the HF engine on a quantized model) and the configured one is the default hf."""
    from es_repro.es.update_rules import UPDATES

    engine = UPDATES[cfg.es.update].backend
    return engine if engine and cfg.generation.backend == "hf" else cfg.generation.backend


def build_backend(cfg, task: "Task") -> Backend:
    return backend_factory(backend_name(cfg))(cfg, task)
