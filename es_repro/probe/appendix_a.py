"""The toy model of Appendix A of "The Blessing of Dimensionality in LLM Fine-Tuning" (arXiv 2602.00170): ES as
noisy gradient ascent on a quadratic with a few stiff and many flat directions.

Dynamics, per coordinate i with curvature lambda_i (given in the issue):
    x_{t+1} = (1 - alpha*lambda_i) x_t + alpha*sigma/sqrt(N) * xi_t,   xi_t ~ N(0, 1) i.i.d.
i.e. a gradient step of size alpha on J plus the population-N noise of the ES estimate.

Objective. The issue gives the dynamics and the plateau gap but not J. The dynamics are gradient ascent
x <- x + alpha * dJ/dx with dJ/dx_i = -lambda_i x_i, so J(x) = J* - 1/2 sum_i lambda_i x_i^2; we take J* = 1.
This is the J consistent with the stated gap: each coordinate is an AR(1) process with stationary variance
    v_i = alpha sigma^2 / (N lambda_i (2 - alpha lambda_i))          [v = (1 - a l)^2 v + a^2 s^2 / N]
so 1 - E[J_inf] = 1/2 sum_i lambda_i v_i = (alpha sigma^2 / 2N) sum_i 1/(2 - alpha lambda_i)
                = (alpha/4) d_eff sigma^2 / N,   d_eff = 2 sum_i 1/(2 - alpha lambda_i),
exactly the issue's formula. Before the plateau, E[x_i,t] = (1 - alpha lambda_i)^t x_i,0 and
Var x_i,t = v_i (1 - (1 - alpha lambda_i)^(2t)), which gives E[J_t] in closed form (``mean_objective``).

Rise then decay (the paper's point): start the d stiff coordinates away from the optimum (J_0 = 0) and the
D - d flat ones at it. The stiff ones converge fast (rate ~ alpha lambda_hi) and J rises; the flat ones then
slowly fill up with noise (rate ~ 2 alpha lambda_lo) and J decays to the plateau, lower for smaller N.

    python -m es_repro.probe.appendix_a --out results/probe/toy     # the figure (toy_model.png/.pdf)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# The paper's toy figure: D = 128 coordinates, d = 16 of them stiff.
D, D_STIFF, LAMBDA_HI, LAMBDA_LO = 128, 16, 1.0, 0.05


def curvatures(dim: int = D, stiff: int = D_STIFF, lam_hi: float = LAMBDA_HI, lam_lo: float = LAMBDA_LO) -> np.ndarray:
    """lambda_i: the first ``stiff`` coordinates lam_hi, the rest lam_lo."""
    return np.where(np.arange(dim) < stiff, lam_hi, lam_lo).astype(np.float64)


def _check(lams: np.ndarray, alpha: float) -> None:
    if np.any(alpha * lams <= 0) or np.any(alpha * lams >= 2):
        raise ValueError(f"alpha*lambda must lie in (0, 2) for a stationary state; got alpha={alpha}, "
                         f"lambda in [{lams.min()}, {lams.max()}]")


def stationary_variance(lams, alpha: float, sigma: float, n: int) -> np.ndarray:
    lams = np.asarray(lams, np.float64)
    _check(lams, alpha)
    return alpha * sigma**2 / (n * lams * (2 - alpha * lams))


def d_eff(lams, alpha: float) -> float:
    lams = np.asarray(lams, np.float64)
    _check(lams, alpha)
    return float(2 * np.sum(1 / (2 - alpha * lams)))


def plateau_gap(lams, alpha: float, sigma: float, n: int) -> float:
    """1 - J_inf = (alpha/4) d_eff sigma^2 / N."""
    return alpha / 4 * d_eff(lams, alpha) * sigma**2 / n


def objective(x: np.ndarray, lams: np.ndarray) -> np.ndarray:
    """J(x) = 1 - 1/2 sum_i lambda_i x_i^2 over the last axis."""
    return 1.0 - 0.5 * np.sum(lams * x**2, axis=-1)


def start_point(lams: np.ndarray, stiff: int = D_STIFF) -> np.ndarray:
    """Stiff coordinates equal and off the optimum with J_0 = 0; flat ones at the optimum."""
    x0 = np.zeros_like(lams)
    x0[:stiff] = np.sqrt(2.0 / np.sum(lams[:stiff]))
    return x0


def mean_objective(steps: int, x0: np.ndarray, lams, alpha: float, sigma: float, n: int) -> np.ndarray:
    """E[J_t] for t = 0 .. steps, exactly."""
    lams = np.asarray(lams, np.float64)
    t = np.arange(steps + 1)[:, None]
    decay = (1 - alpha * lams)[None, :] ** t
    mean, var = decay * x0, stationary_variance(lams, alpha, sigma, n) * (1 - decay**2)
    return 1.0 - 0.5 * np.sum(lams * (mean**2 + var), axis=1)


def simulate(steps: int, x0: np.ndarray, lams, alpha: float, sigma: float, n: int, chains: int,
             rng: np.random.Generator) -> np.ndarray:
    """J_t for t = 0 .. steps of ``chains`` independent runs of the dynamics: array [steps + 1, chains]."""
    lams = np.asarray(lams, np.float64)
    _check(lams, alpha)
    x = np.broadcast_to(x0, (chains, len(lams))).copy()
    keep, noise = 1 - alpha * lams, alpha * sigma / np.sqrt(n)
    out = np.empty((steps + 1, chains))
    out[0] = objective(x, lams)
    for t in range(1, steps + 1):
        x = keep * x + noise * rng.standard_normal(x.shape)
        out[t] = objective(x, lams)
    return out


def figure(out: Path, alpha: float = 0.1, sigma: float = 0.5, ns=(4, 8, 16, 32, 128), steps: int = 600,
           chains: int = 200, seed: int = 0) -> list[Path]:
    """Left: J_t (simulation mean over chains, and the closed form) for several N, with the plateau
    1 - (alpha/4) d_eff sigma^2/N. Right: simulated plateau gap vs sigma^2/N against the formula."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from es_repro.analysis.figures import save_figure, stamp

    rng = np.random.default_rng(seed)
    lams = curvatures()
    x0 = start_point(lams)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, n in enumerate(ns):
        sim = simulate(steps, x0, lams, alpha, sigma, n, chains, rng).mean(axis=1)
        a.plot(sim, color=f"C{k}", lw=1, label=f"N={n}")
        a.plot(mean_objective(steps, x0, lams, alpha, sigma, n), color=f"C{k}", lw=1, ls="--")
        a.axhline(1 - plateau_gap(lams, alpha, sigma, n), color=f"C{k}", lw=0.6, ls=":")
    a.set_xlabel("iteration t")
    a.set_ylabel("J_t (solid: simulation, dashed: closed form)")
    a.set_title(f"rise then decay: D={len(lams)}, d={D_STIFF}, lambda={LAMBDA_HI}/{LAMBDA_LO}, "
                f"alpha={alpha}, sigma={sigma}", fontsize=8)
    a.legend(fontsize=7)
    xs, gaps = [], []
    for s in (0.25, 0.5, 1.0):
        for n in (3, 10, 30):  # distinct sigma^2/N values
            sim = simulate(steps, np.zeros_like(lams), lams, alpha, s, n, chains, rng)
            xs.append(s**2 / n)
            gaps.append(1 - sim[steps // 2 :].mean())
    line = np.geomspace(min(xs), max(xs))
    b.loglog(line, alpha / 4 * d_eff(lams, alpha) * line, "k--", lw=1, label="(alpha/4) d_eff sigma^2/N")
    b.loglog(xs, gaps, "o", label="simulation")
    b.set_xlabel("sigma^2 / N")
    b.set_ylabel("plateau gap 1 - J_inf")
    b.legend(fontsize=7)
    command = f"python -m es_repro.probe.appendix_a --out {out}"
    fig.tight_layout(rect=(0, 0.05, 1, 1))  # room for the regenerate line
    stamp(fig, command)
    paths = save_figure(fig, Path(out) / "toy_model", command)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m es_repro.probe.appendix_a", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for toy_model.png/.pdf")
    args = parser.parse_args(argv)
    for path in figure(Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
