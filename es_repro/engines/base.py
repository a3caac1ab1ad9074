"""The engine seam: a Backend owns a model's weights AND its generation, and is the only thing the ES loop, the
evaluator, replay/resume, the RL baselines' evaluation and the benchmark talk to.

A new engine is one module with a Backend subclass and a factory ``build(cfg: RunConfig, task: Task) -> Backend``
marked ``@builds(TheBackend)``, plus one entry in BACKENDS (or, without editing this file,
``generation.backend=package.module:factory``). What the engine is before it loads (its config checks, preflight,
devices per process, memory-plan terms, the update rules it runs) lives on its class, so no caller names an
engine. The HF backend (es_repro/engines/hf/backend.py) is the reference implementation; low-rank population mode
is a variant.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # typing only: this module stays import-light (config validation reads BACKENDS)
    from es_repro.es.strategy import Member
    from es_repro.tasks.base import Row, Task
    from es_repro.util.timing import Timer

# generation.backend value -> "module:factory". Factories are imported only when chosen.
BACKENDS = {"hf": "es_repro.engines.hf.backend:build", "qes": "es_repro.qes.backend:build",
            "vllm": "es_repro.engines.vllm.backend:build"}

Pair = tuple[list[int], list[int]]  # (prompt token ids, completion token ids)
MemoryRow = tuple[str, int, str]  # a term of the memory plan: (term, bytes, note)


@dataclass
class EngineMemory:
    """An engine's own terms of the plan (Backend.memory_terms); plan_memory adds the terms every float engine
    shares around them: the fp32 master and the rule's state, the update buffers, the KL logits, the CUDA context."""
    weights: list[MemoryRow] = field(default_factory=list)  # per GPU, first in the table: the model (or the engine's share)
    generation: list[MemoryRow] = field(default_factory=list)  # per GPU: KV cache, activations, held noise
    evaluation: list[MemoryRow] = field(default_factory=list)  # per GPU: models loaded for evaluation
    host: list[MemoryRow] = field(default_factory=list)  # host memory of one process
    problems: list[str] = field(default_factory=list)  # what cannot work whatever the total
    master: bool = True  # keeps an fp32 master (and the rule's state) that the update moves
    master_copies: int = 1  # whole masters one process keeps (vLLM: one per tensor-parallel worker)
    copies_per_process: bool = False  # processes sharing a GPU each hold every term (members in flight)
    kl_logits_note: str = ""


class Backend:
    """The contract every engine implements, and the defaults of its optional parts. An engine subclasses it and
    overrides the methods that raise NotImplementedError; the loop, evaluator, probe and benchmark call every method
    here without probing for it."""

    name = "backend"
    update_rules: tuple[str, ...] = ("sgd", "momentum")  # the es.update values it runs (es_repro/es/update_rules.py)
    memory_plan: Any = None  # a module with memory_terms(cfg, shape, gpu_bytes, sharing) and memory_levers(cfg)
    keep_reference = True  # eval.keep_base_model: keep the base model (for KL) loaded between evaluations
    generated_tokens: int = 0  # running count of generated tokens, for throughput reports
    tokenizer: Any = None
    prompt_format: str = "raw"  # task.prompt_format

    def __init__(self, reference: Callable[[], Any] | None = None):
        self._reference_loader, self._reference = reference, None

    # what the engine is, before anything loads: asked of the class by the config checks, the launch and the
    # memory plan, so that no caller names an engine ---------------------------------------------------------
    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ConfigError for settings this engine cannot run (beyond the generation.* checks every engine
        shares, es_repro/engines/checks.py)."""

    @classmethod
    def preflight(cls, cfg) -> None:
        """Facts of this machine the engine needs (an installed library), checked before anything loads; raise
        ConfigError naming the fix."""

    @classmethod
    def devices_per_process(cls, cfg) -> int:
        """Accelerators one process of a run binds (a tensor-parallel engine: its group)."""
        return 1

    @classmethod
    def memory_terms(cls, cfg, shape, gpu_bytes: int, sharing: int) -> EngineMemory:
        """The engine's own terms of the per-GPU memory plan of a model of ``shape`` (es_repro/engines/memory.py
        ModelShape) on GPUs of ``gpu_bytes``, ``sharing`` processes to a GPU."""
        if cls.memory_plan is not None:
            return cls.memory_plan.memory_terms(cfg, shape, gpu_bytes, sharing)
        return EngineMemory(weights=[("engine terms", 0, f"not stated by the {cls.name} engine")])

    @classmethod
    def memory_levers(cls, cfg) -> list[str]:
        """Settings of this engine that shrink its terms, most effective first."""
        return cls.memory_plan.memory_levers(cfg) if cls.memory_plan is not None else []

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

    def member_rewards(self, members: Sequence["Member"], sigma: float, rows: Sequence["Row"], task: "Task",
                       timer: "Timer", progress: str = "") -> list[list[float]]:
        """Each perturbed member's reward on each of ``rows``, in member and row order."""
        from es_repro.tasks.base import score

        out = []
        for completions in self.member_completions(members, sigma, rows, timer, progress):
            with timer("reward"):
                out.append(score(task.reward, completions, rows))
        return out

    def fitness(self, members: Sequence["Member"], sigma: float, rows: Sequence["Row"], task: "Task",
                timer: "Timer", progress: str = "") -> list[float]:
        """Mean per-prompt reward of each perturbed member on ``rows``, in member order."""
        return [self.member_mean(r) for r in self.member_rewards(members, sigma, rows, task, timer, progress)]

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


def builds(engine: type[Backend]) -> Callable:
    """Marks an engine factory with the class it builds, so the engine's class-level facts (config checks,
    preflight, devices, memory terms) are known before it builds anything: ``@builds(MyBackend)`` above ``build``."""
    def mark(factory: Callable) -> Callable:
        factory.engine = engine
        return factory
    return mark


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


def engine_class(name: str) -> type[Backend]:
    """The Backend class an engine name builds (its factory's @builds mark, or the factory itself when it is a
    Backend subclass); Backend's defaults for a factory that states nothing."""
    factory = backend_factory(name)
    if isinstance(factory, type) and issubclass(factory, Backend):
        return factory
    return getattr(factory, "engine", Backend)


def engine_name(cfg) -> str:
    """The engine a run uses: generation.backend, except where es.update names its own engine (es.update=qes runs
    the QES engine) and generation.backend is left at its default."""
    from es_repro.config.schema import GenerationConfig
    from es_repro.es.update_rules import update_method

    configured, implied = cfg.generation.backend, update_method(cfg.es.update).engine
    return implied if implied and configured == GenerationConfig.backend else configured


def build_backend(cfg, task: "Task") -> Backend:
    return backend_factory(engine_name(cfg))(cfg, task)
