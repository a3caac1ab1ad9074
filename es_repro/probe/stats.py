"""The sigma/N probe's statistics (numpy only), after Appendix G of "The Blessing of Dimensionality in LLM
Fine-Tuning" (arXiv 2602.00170).

Inputs per sigma: R[i, p], the reward of candidate i (one seeded perturbation at that sigma) on prompt p, and
R0[p], the base model's. With R_i = mean_p R[i, p] and R0 = mean_p R0[p]:

- dR_i = R_i - R0, the candidate's improvement over the base model.
- Best-of-N gain Delta*_N = E[max_{i in S} dR_i] over uniformly random N-subsets S of the candidates (without
  replacement), divided by the headroom H: H = 1 - R0 for binary rewards (accuracy, the paper); for shaped
  rewards H = reward_max - R0 when the best reachable reward is given, else H = 1 (raw reward units).
  Estimated as the paper does, by the mean over ``subsets`` random subsets (subsets=0: exactly, by order
  statistics: with v_1 <= ... <= v_M sorted, max_S = v_k iff S holds k and N-1 of the k-1 below it, so
  E = sum_k v_k C(k-1, N-1) / C(M, N)). Both estimate the expected best of N i.i.d. draws from the candidates'
  distribution, the quantity ES's population of N samples from.
- 95% interval: the point estimate (all M candidates) +- t_{0.975, S-1} * sd / sqrt(S), where sd is the standard
  deviation (ddof=1) of the same estimator applied to each of S disjoint batches of candidates (np.array_split
  of candidate order). Undefined (NaN) when S < 2 or N exceeds the smallest batch.
- N90: on the exact curve G(N) (all candidates, N = 1 .. N_max = the largest requested N), the smallest N with
  G(N) >= 0.9 * G(N_max); G is non-decreasing in N, so this is where 90% of the gain available at N_max is
  reached. Undefined when G(N_max) <= 0.
- p(dR > 0), p(dR = 0), E[dR], q0.95 (numpy's linear-interpolation quantile of dR), spread = std (ddof=0) of R_i
  over candidates (zero spread means ES's z-scores, hence its update, are zero).
- identical: the share of candidates whose greedy completions equal the base model's on every prompt (compared
  by hash); changed: the mean share of prompts whose completion differs from the base model's.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30; above 30, 1.96 + 2.5/df (within 0.002).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.5 / df


def best_of_n_exact(values: Sequence[float], n: int) -> float:
    """E[max of a uniformly random n-subset of ``values``] by order statistics (see the module docstring)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    m = len(v)
    if not 1 <= n <= m:
        raise ValueError(f"n={n} must be in [1, {m}] (the number of candidates)")
    total = math.comb(m, n)
    weights = np.array([math.comb(k - 1, n - 1) / total for k in range(1, m + 1)])  # exact big-int ratios
    return float(weights @ v)


def best_of_n_subsets(values: Sequence[float], n: int, subsets: int, rng: np.random.Generator) -> float:
    """The paper's estimator: the mean, over ``subsets`` independent random n-subsets (each without
    replacement), of the subset's maximum."""
    v = np.asarray(values, dtype=np.float64)
    if not 1 <= n <= len(v):
        raise ValueError(f"n={n} must be in [1, {len(v)}] (the number of candidates)")
    picks = rng.random((subsets, len(v))).argsort(axis=1)[:, :n]  # each row: a uniform n-subset
    return float(v[picks].max(axis=1).mean())


def best_of_n(values: Sequence[float], n: int, subsets: int, rng: np.random.Generator) -> float:
    return best_of_n_exact(values, n) if subsets == 0 else best_of_n_subsets(values, n, subsets, rng)


def headroom(reward: str, r0: float, reward_max: float | None) -> float:
    """What the best-of-N gain is divided by: 1 - R0 (binary), reward_max - R0 (shaped, when given), else 1."""
    if reward == "binary":
        return 1.0 - r0
    if reward == "shaped":
        return 1.0 if reward_max is None else reward_max - r0
    raise ValueError(f"reward={reward!r} is not allowed; choose one of: binary, shaped")


def gain_curve(dr: np.ndarray, n_values: Sequence[int], subsets: int, batches: int, scale: float,
               rng: np.random.Generator) -> list[dict]:
    """Per N: the normalised best-of-N gain over all candidates and its 95% interval over ``batches``."""
    parts = np.array_split(dr, batches)
    smallest = min(len(p) for p in parts)
    out = []
    for n in n_values:
        point = best_of_n(dr, n, subsets, rng) / scale
        lo = hi = float("nan")
        if batches >= 2 and n <= smallest:
            per_batch = np.array([best_of_n(p, n, subsets, rng) / scale for p in parts])
            half = t975(batches - 1) * per_batch.std(ddof=1) / math.sqrt(batches)
            lo, hi = point - half, point + half
        out.append({"n": int(n), "gain": point, "lo": lo, "hi": hi})
    return out


def exact_curve(dr: np.ndarray, n_max: int) -> np.ndarray:
    """The exact best-of-N gain for N = 1 .. n_max (unnormalised)."""
    return np.array([best_of_n_exact(dr, n) for n in range(1, n_max + 1)])


def n90(curve: np.ndarray) -> float:
    """The smallest N whose gain on ``curve`` (N = 1, 2, ...) reaches 90% of its last value (NaN when that value
    is not positive)."""
    curve = np.asarray(curve, dtype=np.float64)
    if len(curve) == 0 or curve[-1] <= 0:
        return float("nan")
    return float(np.argmax(curve >= 0.9 * curve[-1]) + 1)


def sigma_summary(rewards: np.ndarray, base: np.ndarray, hashes: np.ndarray, base_hashes: np.ndarray, *,
                  reward: str, reward_max: float | None, n_values: Sequence[int], subsets: int, batches: int,
                  n_ref: int, seed: int = 0) -> dict:
    """Every statistic of one sigma from per-prompt rewards [M, P], the base's [P] and completion hashes."""
    rewards, base = np.asarray(rewards, np.float64), np.asarray(base, np.float64)
    m = len(rewards)
    r0 = float(base.mean())
    r = rewards.mean(axis=1)
    dr = r - r0
    room = headroom(reward, r0, reward_max)
    usable_n = [n for n in n_values if n <= m]
    rng = np.random.default_rng(seed)  # the subset draws are reproducible
    same = hashes == base_hashes[None, :]
    curve = exact_curve(dr, max(usable_n)) if usable_n else np.zeros(0)
    nan = float("nan")
    gains = gain_curve(dr, usable_n, subsets, min(batches, m), room, rng) if room > 0 else \
        [{"n": n, "gain": nan, "lo": nan, "hi": nan} for n in usable_n]
    return {
        "candidates": m, "prompts": rewards.shape[1], "r0": r0, "headroom": room,
        "unit": "reward units" if reward == "shaped" and reward_max is None else "headroom", "reward_mean": float(r.mean()),
        "e_dr": float(dr.mean()), "p_up": float((dr > 0).mean()), "p_zero": float((dr == 0).mean()),
        "q95": float(np.quantile(dr, 0.95)), "spread": float(r.std()),
        "identical": float(same.all(axis=1).mean()), "changed": float(1.0 - same.mean()),
        "gain": gains,
        "curve": [float(c / room) for c in curve] if room > 0 else [],  # exact gain, N = 1 .. max(n_values)
        "gain_ref": best_of_n_exact(dr, min(n_ref, m)) / room if room > 0 else nan,
        "n90": n90(curve),
    }


def _fmt_sigma(s: float) -> str:
    return f"{s:g}"


def recommend(summaries: dict[float, dict], n_ref: int, identical_max: float) -> str:
    """One line: the sigmas whose best-of-n_ref gain is positive while outputs differ from the base model's, the
    best of them, and the N where its gain saturates (N90)."""
    usable = [s for s in sorted(summaries)
              if summaries[s]["gain_ref"] > 0 and summaries[s]["identical"] < identical_max]
    if not usable:
        frozen = [s for s in sorted(summaries) if summaries[s]["identical"] >= identical_max]
        hurt = [s for s in sorted(summaries) if s not in frozen]
        why = []
        if frozen:
            why.append(f"sigma in {{{', '.join(map(_fmt_sigma, frozen))}}} leaves >= {identical_max:.0%} of candidates "
                       "with the base model's exact outputs")
        if hurt:
            why.append(f"sigma in {{{', '.join(map(_fmt_sigma, hurt))}}} gives no positive best-of-{n_ref} gain")
        return "No usable sigma in this grid: " + "; ".join(why) + ". Widen or refine the grid."
    best = max(usable, key=lambda s: summaries[s]["gain_ref"])
    b = summaries[best]
    gaps = [s for s in sorted(summaries) if usable[0] < s < usable[-1] and s not in usable]
    window = (_fmt_sigma(usable[0]) if len(usable) == 1 else f"[{_fmt_sigma(usable[0])}, {_fmt_sigma(usable[-1])}]") + (
        f" (except {', '.join(map(_fmt_sigma, gaps))})" if gaps else "")
    sat = "N90 undefined" if math.isnan(b["n90"]) else f"saturates at N90 = {int(b['n90'])}"
    return (f"Use sigma {'=' if len(usable) == 1 else 'in'} {window}, best {_fmt_sigma(best)} (best-of-{n_ref} gain {b['gain_ref']:+.3g} "
            f"({b['unit']}), "
            f"p(dR>0) = {b['p_up']:.2f}, {b['identical']:.0%} of candidates output-identical to the base); "
            f"best-of-N {sat}, so a population of about that size suffices.")
