"""A test-only engine behind the Backend seam, with no neural network: proof that a new backend plugs in through
one file and one config value (generation.backend=tests.fakes.fake_backend:build), without editing the loop, the evaluator,
checkpoints/resume or replay.

Its "weights" are one fp32 vector theta (8 values), perturbed with the project's own noise and moved by the
configured update rule. The completion for row j is a canned string: three copies of the letter
chr(ord("a") + round(20 * theta[j % 8])), clipped to printable letters, so the synthetic task's reward (closeness
to "a") grows as theta shrinks toward 0. Log-probabilities come from a categorical softmax(theta) over 8 symbols.

Its class-level facts are its own, as any engine's: its preflight refuses while FAKE_ENGINE_MISSING is set (a
stand-in for a library missing on this machine), and its memory plan has one row of its own ("fake engine
scratch", 3 bytes a parameter), which python -m es_repro.plan prints.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from es_repro.engines.base import Backend, EngineMemory, builds
from es_repro.es.noise import tensor_noise
from es_repro.es.update_rules import build_update_rule
from es_repro.tasks.base import score
from es_repro.util.errors import ConfigError

THETA0 = torch.tensor([0.5, -0.3, 0.25, 0.4, -0.45, 0.1, -0.2, 0.35])


class FakeBackend(Backend):
    name = "fake"
    fail_after_fitness_calls: int | None = None  # tests set this to simulate a crash mid-run

    @classmethod
    def preflight(cls, cfg) -> None:
        if os.environ.get("FAKE_ENGINE_MISSING"):
            raise ConfigError("generation.backend=fake needs the fake engine's library; unset FAKE_ENGINE_MISSING")

    @classmethod
    def memory_terms(cls, cfg, shape, gpu_bytes: int, sharing: int) -> EngineMemory:
        return EngineMemory(weights=[("fake engine scratch", 3 * shape.params, "the fake engine's own term")],
                            master=False)

    @classmethod
    def memory_levers(cls, cfg) -> list[str]:
        return ["fake.scratch"]

    def __init__(self, cfg, task):
        super().__init__()
        self.cfg, self.task = cfg, task
        self.theta = THETA0.clone()
        self.base = THETA0.clone()
        self.rule = build_update_rule(cfg.es)
        self.rule.bind({"theta": self.theta})
        self.generated_tokens = 0
        self.fitness_calls = 0

    def _complete(self, theta: torch.Tensor, rows) -> list[str]:
        self.generated_tokens += 3 * len(rows)
        out = []
        for j, _ in enumerate(rows):
            shift = max(-25, min(25, round(20 * float(theta[j % 8]))))
            out.append(chr(ord("a") + shift) * 3)
        return out

    def prompts(self, rows):
        return [r["prompt"] for r in rows]

    def count_tokens(self, texts):
        return [len(t) for t in texts]

    def generate(self, rows, *, max_new_tokens=None):
        return self._complete(self.theta, rows)

    def sample_ids(self, rows, *, temperature, seed, max_new_tokens=None):
        gen = torch.Generator().manual_seed(seed)
        return [([ord(c) for c in r["prompt"]], torch.randint(0, 8, (3,), generator=gen).tolist()) for r in rows]

    def token_logprobs(self, pairs, *, reference=False):
        logp = torch.log_softmax(self.base if reference else self.theta, dim=0)
        return [logp[torch.tensor(c, dtype=torch.long)] for _, c in pairs]

    def member_rewards(self, members, sigma, rows, task, timer, progress=""):
        self.fitness_calls += 1
        if self.fail_after_fitness_calls is not None and self.fitness_calls > self.fail_after_fitness_calls:
            raise RuntimeError("simulated crash")
        out = []
        for m in members:
            with timer("generate"):
                perturbed = self.theta + m.sign * sigma * tensor_noise(self.theta, 0, m.seed, "iid")
                completions = self._complete(perturbed, rows)
            out.append(score(task.reward, completions, rows))
        return out

    @staticmethod
    def member_mean(rewards):
        return sum(rewards) / len(rewards)

    def member_completions(self, members, sigma, rows, timer, progress=""):
        with timer("generate"):
            return [self._complete(self.theta + m.sign * sigma * tensor_noise(self.theta, 0, m.seed, "iid"), rows)
                    for m in members]

    def apply_update(self, seed_coeffs):
        delta = torch.zeros_like(self.theta)
        for seed, c in seed_coeffs:
            delta.add_(tensor_noise(self.theta, 0, seed, "iid"), alpha=c)
        self.rule.step("theta", self.theta, delta)

    def save_state(self, path: Path):
        save_file({"theta": self.theta.contiguous(), **self.rule.state_dict()}, Path(path) / "fake_state.safetensors")

    def load_state(self, path: Path):
        state = load_file(Path(path) / "fake_state.safetensors")
        self.theta.copy_(state.pop("theta"))
        self.rule.load_state_dict(state)

    def export(self, path: Path):
        Path(path).mkdir(parents=True, exist_ok=True)
        save_file({"theta": self.theta.contiguous()}, Path(path) / "fake_weights.safetensors")


@builds(FakeBackend)
def build(cfg, task) -> FakeBackend:
    return FakeBackend(cfg, task)
