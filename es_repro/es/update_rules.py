"""Update rules: how a generation's combined noise step moves the fp32 master weights.

The ES estimate for tensor i is delta_i = sum_k coeff_k * eps_k (built by the weights from logged seeds and
coefficients). A rule turns it into the actual move, and may keep state (checkpointed and rebuilt by replay):
- ``sgd`` (the paper): theta += delta; then, with es.decay > 0, theta -= decay * (theta - theta_base).
- ``momentum``: v = beta * v + delta; theta += v (then the same optional decay). State: v per tensor.
- ``qes``: not a float rule: ES on the integer codes of a quantized model, with error feedback
  (es_repro/qes/weights.py); it runs on the QES backend with mirrored pair coefficients (es_repro/es/strategy.py).
Rules see tensors only, never seeds, so every weights class (full-rank, low-rank, ...) shares them.
UPDATES (end of file) is the one table from an es.update value to its rule, strategy and engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch


class SGD:
    name = "sgd"

    def __init__(self, decay: float = 0.0):
        self.decay = decay
        self.base: dict[str, torch.Tensor] = {}

    def bind(self, named_master: dict[str, torch.Tensor]) -> None:
        """Called once with the starting (base) master weights, before any checkpoint is loaded."""
        if self.decay:
            self.base = {n: m.clone() for n, m in named_master.items()}

    @torch.no_grad()
    def step(self, name: str, master: torch.Tensor, delta: torch.Tensor) -> None:
        master.add_(self._move(name, delta))
        if self.decay:
            master.sub_(master - self.base[name], alpha=self.decay)

    def _move(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        return delta

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"update rule {self.name!r} keeps no state, but the checkpoint has {sorted(state)[:3]}")


class Momentum(SGD):
    name = "momentum"

    def __init__(self, beta: float = 0.9, decay: float = 0.0):
        super().__init__(decay)
        self.beta = beta
        self.velocity: dict[str, torch.Tensor] = {}

    def _move(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        v = self.velocity.get(name)
        self.velocity[name] = v = delta.clone() if v is None else v.mul_(self.beta).add_(delta)
        return v

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"velocity.{n}": v for n, v in self.velocity.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        bad = [k for k in state if not k.startswith("velocity.")]
        if bad:
            raise ValueError(f"update rule 'momentum' does not know state {bad[:3]}")
        self.velocity = {k.removeprefix("velocity."): v.clone() for k, v in state.items()}


@dataclass(frozen=True)
class UpdateMethod:
    """What an es.update value selects."""
    rule: Optional[type[SGD]]  # the float rule's class; None: the engine moves the weights itself (qes)
    settings: Callable[..., dict]  # ESConfig -> the rule's constructor arguments (plain values: they travel to workers)
    strategy: str  # es_repro.es.strategy.STRATEGIES key: how rewards become coefficients
    engine: Optional[str] = None  # the engine it runs on in place of the default one (None: as configured)


UPDATES = {
    "sgd": UpdateMethod(SGD, lambda es: {"decay": float(es.decay)}, strategy="paper"),
    "momentum": UpdateMethod(Momentum, lambda es: {"beta": float(es.momentum), "decay": float(es.decay)},
                             strategy="paper"),
    # ES on quantized codes: mirrored pair coefficients, and the QES engine (es_repro/qes/) applies them
    "qes": UpdateMethod(None, lambda es: {}, strategy="mirrored_pairs", engine="qes"),
}


def update_method(update: str) -> UpdateMethod:
    """The one place an es.update value is resolved: its rule, strategy and engine."""
    method = UPDATES.get(update)
    if method is None:
        raise ValueError(f"es.update={update!r} is not one of: {', '.join(UPDATES)}")
    return method


def rule_spec(es_cfg) -> dict:
    """The float rule an ESConfig names, as plain values (es.update and the rule's constructor arguments): what a
    process that builds its own copy of the rule (a vLLM worker) receives, so every setting of the rule reaches it."""
    return {"update": es_cfg.update, "settings": update_method(es_cfg.update).settings(es_cfg)}


def rule_from_spec(spec: dict) -> SGD:
    """The rule of a rule_spec: the one constructor call of every float update rule."""
    method = update_method(spec["update"])
    if method.rule is None:
        raise ValueError(f"es.update={spec['update']} moves integer codes, not float weights: it runs on the "
                         f"{method.engine} engine, not through a float update rule")
    return method.rule(**spec["settings"])


def build_update_rule(es_cfg) -> SGD:
    """The float rule an ESConfig names (es.update), with its settings."""
    return rule_from_spec(rule_spec(es_cfg))
