"""Where a run stands: the one typed state the generation loop advances, a checkpoint stores (state.json), and
resume and replay rebuild."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RunState:
    generation: int = 0  # generations whose update is applied
    samples: int = 0  # sample evaluations so far: members x prompts, summed over generations

    def advanced(self, samples: int) -> RunState:
        """The state after one more generation of ``samples`` sample evaluations."""
        return RunState(self.generation + 1, self.samples + samples)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RunState:
        """From state.json (or a log line): generation and samples as integers; ValueError/KeyError/TypeError on a
        missing or non-integer value."""
        return cls(generation=int(data["generation"]), samples=int(data.get("samples", 0)))
