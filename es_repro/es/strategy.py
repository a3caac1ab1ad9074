"""The evolution strategy as ask/tell over integer seeds (numpy only; no weights here).

ask:  the member seeds of a generation, derived from (run seed, generation) alone, so any process can
      recompute them and a resumed run draws the same ones. Two streams (es.seed_stream):
      ``rng``: numpy's default_rng([seed, generation]), independent per generation;
      ``released``: the authors' released script, np.random.seed(seed) once, then
      randint(0, 2**30, size=N, dtype=int64) every iteration (a resumed run redraws the stream up to g).
tell: rewards -> one update coefficient per member. The weights then move by
      theta <- theta + sum_n coeff_n * eps_n, with coeff_n = alpha / N * sign_n * shaped_n.
Fitness is MAXIMISED: a member with a higher reward pulls the weights toward its noise.
A Strategy bundles ask, tell and the merge into the update the backend applies (and the log records): the
default is the functions here; es.update=qes uses MirroredPairs (pair-difference z-scores, QES).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEED_LIMIT = 2**31 - 1  # member seeds stay far below int64 after adding tensor indices
RELEASED_SEED_LIMIT = 2**30  # the release's randint bound
SEED_STREAMS = ("rng", "released")


@dataclass(frozen=True)
class Member:
    seed: int  # noise seed
    sign: int  # +1, or -1 for the mirrored half of an antithetic pair


def ask(run_seed: int, generation: int, population: int, antithetic: bool = False, stream: str = "rng") -> list[Member]:
    """The members of one generation; antithetic pairs are adjacent (+eps, -eps) with one shared seed."""
    n = population // 2 if antithetic else population
    if stream == "released":
        seeds = released_seeds(run_seed, generation, n)
    elif stream == "rng":
        seeds = np.random.default_rng([run_seed, generation]).integers(0, SEED_LIMIT, size=n)
    else:
        raise ValueError(f"seed stream {stream!r} is not one of {SEED_STREAMS}")
    if antithetic:
        return [Member(int(s), sign) for s in seeds for sign in (1, -1)]
    return [Member(int(s), 1) for s in seeds]


_released_draws: dict[tuple[int, int], tuple[np.random.RandomState, list[list[int]]]] = {}


def released_seeds(run_seed: int, generation: int, n: int) -> list[int]:
    """Iteration ``generation``'s seeds of the release's global stream (np.random.seed(run_seed) once, then one
    randint(0, 2**30, n) per iteration). Draws are cached, so a run costs one draw per generation."""
    state, drawn = _released_draws.setdefault((run_seed, n), (np.random.RandomState(run_seed), []))
    while len(drawn) <= generation:
        drawn.append(state.randint(0, RELEASED_SEED_LIMIT, size=n, dtype=np.int64).tolist())
    return drawn[generation]


def zscore(rewards: np.ndarray) -> np.ndarray:
    """The paper's shaping: (r - mean) / (population std, ddof=0, + 1e-8). A flat population gives zeros."""
    return (rewards - rewards.mean()) / (rewards.std() + 1e-8)


def centered_rank(rewards: np.ndarray) -> np.ndarray:
    """Ranks mapped to [-0.5, 0.5] (OpenAI-ES); ties share their mean rank, so a flat population gives zeros."""
    n = len(rewards)
    order = rewards.argsort(kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(n, dtype=np.float64)
    for value in np.unique(rewards):  # average the ranks of tied rewards
        tied = rewards == value
        ranks[tied] = ranks[tied].mean()
    return ranks / (n - 1) - 0.5


FITNESS_SHAPING = {"zscore": zscore, "centered_rank": centered_rank}


def prompt_normalised(per_prompt: np.ndarray) -> np.ndarray:
    """es.fitness_baseline=prompt: each prompt's rewards z-scored over the population (ddof=0, + 1e-8; a prompt
    every member scores alike contributes 0), then averaged over the prompts: (N, P) -> (N,). Centring alone would
    be no change at all: it moves every member's mean by the same constant, which any shaping removes; the scale
    makes each prompt count equally (EGGROLL's per-question fitness, GRPO's group normalisation)."""
    r = np.asarray(per_prompt, dtype=np.float64)
    return ((r - r.mean(axis=0)) / (r.std(axis=0) + 1e-8)).mean(axis=1)


FITNESS_BASELINES = ("none", "prompt")  # es.fitness_baseline


def member_fitness(baseline: str, per_prompt: list[list[float]], member_means: list[float]) -> list[float]:
    """What the shaping ranks: the members' mean rewards (none), or their prompt-normalised rewards (prompt)."""
    if baseline == "none":
        return list(member_means)
    if baseline == "prompt":
        return [float(v) for v in prompt_normalised(np.asarray(per_prompt))]
    raise ValueError(f"es.fitness_baseline={baseline!r} is not one of {FITNESS_BASELINES}")


def tell(members: list[Member], rewards: list[float], alpha: float, shaping: str = "zscore") -> list[float]:
    """Update coefficient per member: alpha / N * sign * shaped reward."""
    if len(members) != len(rewards):
        raise ValueError(f"{len(rewards)} rewards for {len(members)} members")
    shaped = FITNESS_SHAPING[shaping](np.asarray(rewards, dtype=np.float64))
    n = len(members)
    return [float(alpha / n * m.sign * s) for m, s in zip(members, shaped)]


def merge_by_seed(members: list[Member], coeffs: list[float]) -> list[tuple[int, float]]:
    """Sum the coefficients of members sharing a seed (antithetic pairs), so each noise is drawn once."""
    merged: dict[int, float] = {}
    for m, c in zip(members, coeffs):
        merged[m.seed] = merged.get(m.seed, 0.0) + c
    return list(merged.items())


def pair_coefficients(members: list[Member], rewards: list[float], clip: float) -> list[float]:
    """QES's coefficients: per mirrored pair, diff = r(+s) - r(-s); z-score the diffs over pairs (population std
    + 1e-8); c = clip(z, -clip, clip); member +s gets c and member -s gets -c."""
    if len(members) != len(rewards):
        raise ValueError(f"{len(rewards)} rewards for {len(members)} members")
    plus, minus = members[0::2], members[1::2]
    if len(plus) != len(minus) or any(a.seed != b.seed or (a.sign, b.sign) != (1, -1) for a, b in zip(plus, minus)):
        raise ValueError("pair coefficients need mirrored members (+s, -s) adjacent, as ask(antithetic=True) draws them")
    r = np.asarray(rewards, dtype=np.float64)
    c = np.clip(zscore(r[0::2] - r[1::2]), -clip, clip)
    return [float(v) for ci in c for v in (ci, -ci)]


class Strategy:
    """How a generation's members are drawn and how their rewards become the update (default: ask, tell and
    merge_by_seed above, exactly as the paper's ES)."""

    def __init__(self, es_cfg, run_seed: int):
        self.cfg, self.run_seed = es_cfg, run_seed

    def ask(self, generation: int) -> list[Member]:
        c = self.cfg
        return ask(self.run_seed, generation, c.population, c.antithetic, c.seed_stream)

    def tell(self, members: list[Member], rewards: list[float]) -> list[float]:
        return tell(members, rewards, self.cfg.alpha, self.cfg.fitness)

    def merge(self, members: list[Member], coeffs: list[float]) -> list[tuple[int, float]]:
        """The (seed, coefficient) list handed to Backend.apply_update and logged as the generation's update."""
        return merge_by_seed(members, coeffs)


class MirroredPairs(Strategy):
    """es.update=qes: mirrored pairs always; coefficients are clipped pair-difference z-scores (no alpha: the QES
    update applies alpha itself); the update holds one (seed, c) per pair, c being member +s's coefficient."""

    def ask(self, generation: int) -> list[Member]:
        return ask(self.run_seed, generation, self.cfg.population, True, self.cfg.seed_stream)

    def tell(self, members: list[Member], rewards: list[float]) -> list[float]:
        return pair_coefficients(members, rewards, self.cfg.qes.coeff_clip)

    def merge(self, members: list[Member], coeffs: list[float]) -> list[tuple[int, float]]:
        return [(m.seed, c) for m, c in zip(members, coeffs) if m.sign > 0]


STRATEGIES = {"paper": Strategy, "mirrored_pairs": MirroredPairs}


def build_strategy(es_cfg, run_seed: int) -> Strategy:
    """The strategy es.update selects (es_repro/es/update_rules.py update_method)."""
    from es_repro.es.update_rules import update_method  # local: this module stays numpy-only

    return STRATEGIES[update_method(es_cfg.update).strategy](es_cfg, run_seed)


def prompt_subset(run_seed: int, generation: int, n_rows: int, k: int) -> list[int]:
    """Row indices a generation trains on: all when k == 0 or k >= n_rows, else a seeded subset of k."""
    if k <= 0 or k >= n_rows:
        return list(range(n_rows))
    rng = np.random.default_rng([run_seed, generation, 1])
    return sorted(int(i) for i in rng.choice(n_rows, size=k, replace=False))
