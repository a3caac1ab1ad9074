"""The engine seam: a Backend owns a model's weights AND its generation, and is the only thing the ES loop, the
evaluator, replay/resume, the RL baselines' evaluation and the benchmark talk to.

A new engine is one module with a factory ``build(cfg: RunConfig, task: Task) -> Backend`` plus one entry in
BACKENDS (or, without editing this file, ``generation.backend=package.module:factory``). The HF backend
(es_repro/hf_backend.py) is the reference implementation; low-rank population mode is a variant of it.

What a backend promises:
- ``fitness`` perturbs, generates greedily, scores and restores inside: the weights after the call equal the
  weights before it, bit for bit. ``member_completions`` (optional, for the probe) does the same without scoring.
- ``apply_update(seed_coeffs)`` moves the weights by sum_k coeff_k * eps(seed_k) through the configured update
  rule; given the same seeds and coefficients it always lands on the same weights (replay depends on it).
- ``save_state``/``load_state`` round-trip everything ``apply_update`` depends on (master weights, rule state).
Optional: ``describe()`` -> dict, written to run.json under "backend" (e.g. the forward path), and
``update_stats()`` -> dict, merged into each generation's log line (e.g. the fraction of codes changed).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

if TYPE_CHECKING:  # typing only: this module stays import-light (config validation reads BACKENDS)
    from es_repro.es import Member
    from es_repro.tasks.base import Row, Task
    from es_repro.timing import Timer

# generation.backend value -> "module:factory". Factories are imported only when chosen.
BACKENDS = {"hf": "es_repro.hf_backend:build", "qes": "es_repro.qes.backend:build",
            "vllm": "es_repro.vllm_backend:build"}

Pair = tuple[list[int], list[int]]  # (prompt token ids, completion token ids)


class Backend(Protocol):
    generated_tokens: int  # running count of generated tokens, for throughput reports

    # generation ---------------------------------------------------------------------------------------------
    def prompts(self, rows: Sequence["Row"]) -> list[str]: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Prompt lengths in the engine's tokens (for task.max_prompt_tokens)."""

    def generate(self, rows: Sequence["Row"], *, max_new_tokens: int | None = None) -> list[str]:
        """Greedy completions in row order, cut after the task's first stop string."""

    def sample_ids(self, rows: Sequence["Row"], *, temperature: float, seed: int,
                   max_new_tokens: int | None = None) -> list[Pair]:
        """Sampled (prompt ids, completion ids), seeded and without disturbing any other random stream."""

    def token_logprobs(self, pairs: Sequence[Pair], *, reference: bool = False) -> list[Any]:
        """Per-token log-probabilities of each completion under the current weights, or under the base model
        (reference=True), as float32 tensors (for KL)."""

    # ES -----------------------------------------------------------------------------------------------------
    def fitness(self, members: Sequence["Member"], sigma: float, rows: Sequence["Row"], task: "Task",
                timer: "Timer", progress: str = "") -> list[float]:
        """Mean per-prompt reward of each perturbed member on ``rows``, in member order."""

    def member_completions(self, members: Sequence["Member"], sigma: float, rows: Sequence["Row"], timer: "Timer",
                           progress: str = "") -> list[list[str]]:
        """Optional (the sigma/N probe, es_repro/probe.py, needs it): each perturbed member's greedy completions
        on ``rows``, in member and row order, with the same perturb/restore promise as ``fitness``. sigma=0 gives
        the base model's completions through the same code path."""

    def apply_update(self, seed_coeffs: Sequence[tuple[int, float]]) -> None: ...

    def save_state(self, path: Path) -> None: ...

    def load_state(self, path: Path) -> None: ...

    def export(self, path: Path) -> None:
        """An HF-loadable checkpoint (config, weights, tokenizer) of the current weights."""


def backend_factory(name: str) -> Callable[..., Backend]:
    """The factory for a generation.backend value: a registered name, or "package.module:factory"."""
    spec = BACKENDS.get(name, name)
    module, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"generation.backend={name!r} is unknown; choose one of: {', '.join(BACKENDS)} "
                         f"(or give a factory as package.module:function)")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"generation.backend={name!r}: cannot import {spec} ({err})") from None


def backend_name(cfg) -> str:
    """generation.backend, except that es.update=qes (ES on quantized codes) runs the QES backend, the HF engine
    on a quantized model (es_repro/qes/backend.py)."""
    if cfg.es.update == "qes" and cfg.generation.backend == "hf":
        return "qes"
    return cfg.generation.backend


def build_backend(cfg, task: "Task") -> Backend:
    return backend_factory(backend_name(cfg))(cfg, task)
