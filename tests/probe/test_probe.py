"""The sigma/N probe (issue 15): its statistics against exact enumeration, the Appendix A toy model's closed forms
against simulation, resume (a relaunch scores only the missing candidates), and the probe end to end through
Hydra on a second backend (tests/fakes/fake_backend.py) and on the tiny-random HF model."""
from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from es_repro.config import ConfigError, compose, load_config
from es_repro.probe import appendix_a as toy
from es_repro.probe import stats as st
from es_repro.probe.report import main as report_main
from es_repro.probe.run import candidate_seeds, run_probe
from es_repro.probe.store import load_results
from es_repro.run.log import RunLog
from tests.fakes import fake_backend

REPO = Path(__file__).resolve().parents[2]


def probe_cfg(overrides):
    return load_config(compose(overrides, config_name="probe"))


# statistics ---------------------------------------------------------------------------------------------------
def enumerate_best_of_n(values, n):
    return float(np.mean([max(c) for c in itertools.combinations(values, n)]))


@pytest.mark.parametrize("values", [
    [0.3, -0.1, 0.0, 0.0, 0.25, -0.4, 0.1],  # ties included
    list(np.random.default_rng(1).normal(size=9)),
    [0.0] * 5,
])
def test_exact_best_of_n_equals_enumeration(values):
    for n in range(1, len(values) + 1):
        assert st.best_of_n_exact(values, n) == pytest.approx(enumerate_best_of_n(values, n), abs=1e-12), n


def test_subset_estimator_agrees_with_enumeration_within_its_error():
    values = np.random.default_rng(2).normal(size=12)
    rng = np.random.default_rng(3)
    for n in (1, 3, 6, 12):
        exact = enumerate_best_of_n(values, n)
        picks = rng.random((20000, 12)).argsort(axis=1)[:, :n]
        se = values[picks].max(axis=1).std() / math.sqrt(20000)
        est = st.best_of_n_subsets(values, n, 20000, np.random.default_rng(n))
        assert abs(est - exact) <= 4 * se + 1e-12, (n, est, exact, se)
    assert st.best_of_n(values, 4, 0, rng) == st.best_of_n_exact(values, 4)  # subsets=0: exact
    with pytest.raises(ValueError, match="n=13 must be in"):
        st.best_of_n_exact(values, 13)


def test_one_improving_candidate_gives_a_linear_curve_and_n90():
    dr = np.zeros(10)
    dr[3] = 1.0  # E[max of N] = P(candidate 3 is drawn) = N / 10
    curve = st.exact_curve(dr, 10)
    assert curve == pytest.approx(np.arange(1, 11) / 10)
    assert st.n90(curve) == 9
    assert math.isnan(st.n90(st.exact_curve(-np.ones(10), 10)))  # no gain: N90 undefined
    gains = st.gain_curve(dr, [2, 5], subsets=0, batches=2, scale=0.5, rng=np.random.default_rng(0))
    # batches [0..4] (holds the improver) and [5..9]: per-batch gains N/5/0.5 and 0, so sd = N/5/0.5/sqrt(2)
    for g, n in zip(gains, (2, 5)):
        assert g["gain"] == pytest.approx(n / 10 / 0.5)
        half = st.t975(1) * (n / 5 / 0.5) / math.sqrt(2) / math.sqrt(2)
        assert (g["lo"], g["hi"]) == pytest.approx((g["gain"] - half, g["gain"] + half))
    assert math.isnan(st.gain_curve(dr, [6], 0, 2, 1.0, np.random.default_rng(0))[0]["lo"])  # N > batch size


def test_sigma_summary_counts():
    base = np.array([1, 0, 0, 0], np.float32)  # R0 = 0.25, headroom 0.75
    rewards = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], np.float32)
    base_h = np.array([1, 2, 3, 4], np.uint64)
    hashes = np.array([[1, 9, 3, 4], [1, 2, 3, 4], [8, 2, 3, 4], [1, 2, 3, 7]], np.uint64)
    s = st.sigma_summary(rewards, base, hashes, base_h, reward="binary", reward_max=None, n_values=[1, 4],
                         subsets=0, batches=2, n_ref=4)
    assert s["r0"] == 0.25 and s["headroom"] == 0.75
    assert (s["p_up"], s["p_zero"], s["e_dr"]) == (0.25, 0.5, pytest.approx(0.0))
    assert s["identical"] == 0.25 and s["changed"] == pytest.approx(3 / 16)
    assert s["gain"][1]["gain"] == pytest.approx(0.25 / 0.75)  # all four drawn: the max dR is +0.25
    assert s["gain_ref"] == pytest.approx(0.25 / 0.75)
    assert s["spread"] == pytest.approx(np.std([0.5, 0.25, 0.0, 0.25]))
    shaped = st.sigma_summary(rewards, base, hashes, base_h, reward="shaped", reward_max=None, n_values=[4],
                              subsets=0, batches=1, n_ref=4)
    assert shaped["headroom"] == 1.0 and shaped["unit"] == "reward units"
    assert st.headroom("shaped", -30.0, 0.0) == 30.0


def test_recommendation_names_the_window_and_the_saturating_n():
    def summ(gain, identical, n90=12.0):
        return {"gain_ref": gain, "identical": identical, "p_up": 0.3, "n90": n90, "unit": "headroom"}

    line = st.recommend({1e-4: summ(0.0, 1.0), 1e-3: summ(0.1, 0.2), 3e-3: summ(0.2, 0.0, 17.0), 1e-2: summ(-0.1, 0.0)},
                        n_ref=30, identical_max=0.5)
    assert "sigma in [0.001, 0.003], best 0.003" in line and "N90 = 17" in line
    line = st.recommend({1e-4: summ(0.0, 1.0), 1e-2: summ(-0.1, 0.0)}, n_ref=30, identical_max=0.5)
    assert line.startswith("No usable sigma") and "{0.0001} leaves" in line and "{0.01} gives no positive" in line


# the Appendix A toy model ---------------------------------------------------------------------------------------
ALPHA = 0.8  # alpha*lambda_hi = 0.8: the (2 - alpha*lambda) factor matters (1.2 vs 2), so a wrong formula fails


def test_toy_stationary_variance_and_plateau_match_simulation():
    lams = toy.curvatures()  # D = 128, d = 16, lambda 1 / 0.05
    assert len(lams) == 128 and (lams == 1.0).sum() == 16
    sigma, n, chains, burn, keep = 0.7, 10, 200, 400, 1500
    rng = np.random.default_rng(0)
    x = np.zeros((chains, len(lams)))
    sq, gap = np.zeros(len(lams)), 0.0
    for t in range(burn + keep):  # from the optimum; (1 - 0.04)^(2*400) ~ 1e-14 of the transient is left
        x = (1 - ALPHA * lams) * x + ALPHA * sigma / math.sqrt(n) * rng.standard_normal(x.shape)
        if t >= burn:
            sq += (x**2).mean(axis=0) / keep
            gap += (1 - toy.objective(x, lams)).mean() / keep
    v = toy.stationary_variance(lams, ALPHA, sigma, n)
    # tolerance 3%: relative standard errors here are ~0.5% (stiff, pooled over 16 coords) and ~1% (flat, 112)
    assert sq[:16].mean() == pytest.approx(v[0], rel=0.03)
    assert sq[16:].mean() == pytest.approx(v[-1], rel=0.03)
    assert gap == pytest.approx(toy.plateau_gap(lams, ALPHA, sigma, n), rel=0.03)
    assert toy.plateau_gap(lams, ALPHA, sigma, n) == pytest.approx(0.5 * np.sum(lams * v))
    naive = ALPHA * sigma**2 / (2 * n * lams)  # small-alpha formula without (2 - alpha*lambda): must be rejected
    assert abs(sq[:16].mean() / naive[0] - 1) > 0.3
    assert toy.d_eff(lams, ALPHA) == pytest.approx(2 * (16 / 1.2 + 112 / 1.96))


def test_toy_mean_trajectory_matches_simulation_and_rises_then_decays():
    lams, alpha, sigma, n, steps = toy.curvatures(), 0.1, 0.5, 4, 400
    x0 = toy.start_point(lams)
    closed = toy.mean_objective(steps, x0, lams, alpha, sigma, n)
    sim = toy.simulate(steps, x0, lams, alpha, sigma, n, chains=400, rng=np.random.default_rng(1))
    se = sim.std(axis=1) / math.sqrt(400) + 1e-12
    assert closed[0] == pytest.approx(0.0) and sim[0] == pytest.approx(0.0)
    assert np.all(np.abs(sim.mean(axis=1) - closed) <= 5 * se)
    peak = int(np.argmax(closed))
    assert 10 < peak < 100 and closed[peak] - closed[-1] > 0.05  # rise, then decay toward the plateau
    assert closed[-1] == pytest.approx(1 - toy.plateau_gap(lams, alpha, sigma, n), abs=0.01)
    with pytest.raises(ValueError, match=r"alpha\*lambda must lie in \(0, 2\)"):
        toy.stationary_variance(lams, 2.5, sigma, n)


# config ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("probe.candidates=1", "probe.candidates=1 is not allowed"),
    ("probe.reward=accuracy", "probe.reward='accuracy' is not allowed; choose one of: binary, shaped"),
    ("probe.n_values=[5,100]", r"probe.n_values=\[5, 100\] is not allowed"),
    ("probe.sigmas=[0.001,0.001]", "probe.sigmas"),
    ("probe.split=test", "probe.split='test' is not allowed; choose one of: train, eval, all"),
])
def test_bad_probe_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        probe_cfg(["model=tiny-random", "task=synthetic", "probe.candidates=10", "probe.n_values=[5]",
                   "probe.n_ref=5", override])


def test_es_runs_carry_no_probe_section():
    from tests.helpers import make_cfg

    assert make_cfg().probe is None


# end to end ------------------------------------------------------------------------------------------------------
FAKE = ["generation.backend=tests.fakes.fake_backend:build", "model=tiny-random", "task=synthetic", "task.train_size=8",
        "probe.prompts=8", "probe.sigmas=[0.0001,0.05,0.3]", "probe.candidates=6", "probe.batches=2",
        "probe.n_values=[2,3]", "probe.n_ref=3", "probe.subsets=0", "probe.reward=shaped", "progress=false"]


def counting(monkeypatch, crash_at=None):
    calls = {"n": 0}
    real = fake_backend.FakeBackend.member_completions

    def wrapped(self, *args, **kwargs):
        calls["n"] += 1
        if crash_at is not None and calls["n"] == crash_at:
            raise RuntimeError("simulated crash")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(fake_backend.FakeBackend, "member_completions", wrapped)
    return calls


@pytest.mark.slow
def test_probe_resumes_scoring_only_missing_candidates(tmp_path, monkeypatch):
    cfg = probe_cfg(FAKE)
    total = 1 + 3 * 6  # the base model, then 6 candidates at each of 3 sigmas
    calls = counting(monkeypatch)
    full = run_probe(cfg, tmp_path / "full")
    assert calls["n"] == total

    calls = counting(monkeypatch, crash_at=6)  # base + 4 candidates stored, the 5th dies
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_probe(cfg, tmp_path / "resumed")
    assert RunLog(tmp_path / "resumed").info()["status"] == "failed"
    _, partial = load_results(tmp_path / "resumed")
    assert list(partial) == [0.0001] and len(partial[0.0001]["seeds"]) == 4
    calls = counting(monkeypatch)
    resumed = run_probe(cfg, tmp_path / "resumed")
    assert calls["n"] == total - 5
    calls = counting(monkeypatch)
    run_probe(cfg, tmp_path / "resumed")  # everything stored: nothing is generated, the report is rewritten
    assert calls["n"] == 0

    base_a, a = load_results(tmp_path / "full")
    base_b, b = load_results(tmp_path / "resumed")
    for key in ("binary", "shaped", "hashes"):
        assert np.array_equal(base_a[key], base_b[key])
        for sigma in a:
            assert np.array_equal(a[sigma][key], b[sigma][key]), (sigma, key)
    assert full["recommendation"] == resumed["recommendation"]
    assert list(a[0.05]["seeds"]) == candidate_seeds(0, 6) == list(a[0.3]["seeds"])  # same directions per sigma
    s = full["sigmas"]
    assert s[0.0001]["identical"] == 1.0 and s[0.0001]["spread"] == 0.0  # too small to change any output
    assert s[0.3]["identical"] < 1.0 and s[0.3]["spread"] > 0.0
    for name in ("report_shaped.md", "summary_shaped.json", "best_of_n_shaped.png", "landscape_shaped.pdf",
                 "base.npz", "sigma_0.05.npz"):
        assert (tmp_path / "full" / name).is_file(), name
    info = RunLog(tmp_path / "full").info()
    assert info["status"] == "finished" and info["kind"] == "probe"
    assert info["summary"]["recommendation"] == full["recommendation"]

    # a changed pool or candidate count never mixes with stored results
    with pytest.raises(ValueError, match="other candidates"):
        run_probe(probe_cfg(FAKE + ["probe.candidates=7"]), tmp_path / "full")

    # the report CLI: another reward kind, from the run directory alone
    assert report_main(["--report", str(tmp_path / "full"), "--reward", "binary"]) == 0
    text = (tmp_path / "full" / "report_binary.md").read_text()
    assert "Reward: binary" in text and "| 0.3 | 6 |" in text and "Recommendation:" in text
    assert json.loads((tmp_path / "full" / "summary_binary.json").read_text())["reward"] == "binary"


def test_probe_on_tiny_random_end_to_end(tmp_path):
    """At sigma=0.05 the candidates really are perturbed models: completions move away from the base model's and
    differ between candidates (each its own noise direction), more than at sigma=0.001; "changed" is the share
    of (candidate, prompt) completions whose hash differs from the base's."""
    cfg = probe_cfg(["model=tiny-random", "task=synthetic", "task.train_size=4", "probe.prompts=4",
                     "probe.sigmas=[0.001,0.05]", "probe.candidates=4", "probe.batches=2", "probe.n_values=[2,4]",
                     "probe.n_ref=4", "probe.subsets=200", "progress=false"])
    summary = run_probe(cfg, tmp_path)
    base, results = load_results(tmp_path)
    assert sorted(results) == [0.001, 0.05]
    for data in results.values():
        assert data["binary"].shape == data["shaped"].shape == data["hashes"].shape == (4, 4)
        assert not np.isnan(data["shaped"]).any() and (data["seconds"] > 0).all()
    assert 0 <= summary["r0"] <= 1 and summary["recommendation"]
    for sigma, data in results.items():
        assert summary["sigmas"][sigma]["changed"] == pytest.approx(float((data["hashes"] != base["hashes"]).mean()))
    assert summary["sigmas"][0.05]["changed"] > summary["sigmas"][0.001]["changed"]
    assert len({tuple(h) for h in results[0.05]["hashes"]}) > 1  # not one shared perturbation
    assert (tmp_path / "report_binary.md").is_file() and (tmp_path / "best_of_n_binary.png").is_file()


@pytest.mark.parametrize("mode", [[], ["es.lowrank=1"]])
def test_hf_member_completions_at_sigma_zero_is_the_base_model_and_restores(tmp_path, mode):
    """The probe's member path, full rank and low-rank (the probe runs either)."""
    import torch

    from es_repro.engines.base import build_backend
    from es_repro.es.strategy import Member
    from es_repro.tasks import build_task
    from es_repro.util.timing import Timer

    cfg = probe_cfg(["model=tiny-random", "task=synthetic", *mode])
    task = build_task("synthetic", 4, 4, 0, {"target_char": "a"})
    backend = build_backend(cfg, task)
    before = [p.clone() for p in backend.weights.params]
    rows = task.train_rows
    assert backend.member_completions([Member(5, 1)], 0.0, rows, Timer()) == [backend.generate(rows)]
    two = backend.member_completions([Member(5, 1), Member(6, 1)], 0.5, rows, Timer())
    assert len(two) == 2 and two[0] != backend.generate(rows)
    assert all(torch.equal(a, b) for a, b in zip(before, backend.weights.params))
    fitness = backend.fitness([Member(5, 1), Member(6, 1)], 0.5, rows, task, Timer())
    assert fitness == [float(np.mean(task.reward(c, target_char=["a"] * 4))) for c in two]


@pytest.mark.slow
def test_probe_command_line_writes_its_run_directory(tmp_path):
    cmd = [sys.executable, "-m", "es_repro.probe", f"out_root={tmp_path}", *FAKE]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = list((tmp_path / "probe" / "default").iterdir())
    assert len(runs) == 1 and "probe.reward" not in runs[0].name and "probe.candidates=6" in runs[0].name
    info = RunLog(runs[0]).info()
    assert info["status"] == "finished" and info["kind"] == "probe"
    recommendation = info["summary"]["recommendation"]  # printed last, as the run directory records it
    assert recommendation.startswith(("Use sigma", "No usable sigma")) and out.stdout.rstrip().endswith(recommendation)
    assert recommendation in (runs[0] / "report_shaped.md").read_text()
