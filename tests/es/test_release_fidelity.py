"""es-repro against the released Countdown script (VsonicV/es-fine-tuning-paper, countdown/
es_fine-tuning_countdown.py), bit for bit. Each ``release_*`` function below transcribes the release's arithmetic
independently of es_repro's code (numbers and order of operations carried over, nothing imported from es_repro):
- perturb:  for every named parameter, param.data.add_(SIGMA * noise), noise = randn(shape, dtype=param.dtype)
            from a generator seeded with `seed` (default) or `seed + tensor index` (--seed_shift);
- restore:  param.data.add_(-SIGMA * noise) with the noise regenerated;
- update:   rewards in a float32 tensor, z = (r - mean) / (std + 1e-8) in float32 numpy; per tensor, update =
            zeros_like(param), update.add_(noise.mul_(float(z_n))) for every member, update.div_(N),
            param.data.add_(ALPHA * update);
- seeds:    np.random.seed(33) once, then np.random.randint(0, 2**30, size=N, dtype=np.int64) per iteration.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from es_repro.bench.release_loop import PaperLoopWeights, release_tell
from es_repro.engines.weights import ESWeights
from es_repro.es import strategy as es
from es_repro.models.tiny import build_tiny_model

SIGMA, ALPHA = 1e-3, 5e-4
CASES = [(dtype, tie, shift) for dtype in (torch.float32, torch.bfloat16) for tie in (False, True) for shift in (False, True)]
IDS = [f"{str(d).split('.')[-1]}-{'tied' if t else 'untied'}-{'seed_shift' if s else 'same_seed'}" for d, t, s in CASES]


def model(dtype, tie):
    m, _ = build_tiny_model(seed=11, tie_embeddings=tie)
    return m.to(dtype)


def release_noise(param, seed, idx, seed_shift):
    gen = torch.Generator(device=param.device)
    gen.manual_seed(int(seed + idx) if seed_shift else int(seed))
    return torch.randn(param.shape, generator=gen, device=param.device, dtype=param.dtype)


def release_perturb(m, seed, seed_shift, sign=1.0):
    for idx, (_, param) in enumerate(m.named_parameters()):
        param.data.add_(sign * SIGMA * release_noise(param, seed, idx, seed_shift))


def release_update(m, seeds, rewards, seed_shift):
    n = len(seeds)
    all_rewards = torch.zeros(n)
    for i, r in enumerate(rewards):
        all_rewards[i] = r
    rewards_tensor = np.array(all_rewards.cpu().tolist(), dtype=np.float32)
    rewards_normalized = (rewards_tensor - rewards_tensor.mean()) / (rewards_tensor.std() + 1e-8)
    for idx, (_, param) in enumerate(m.named_parameters()):
        update = torch.zeros_like(param)
        for seed_idx in range(n):
            noise = release_noise(param, seeds[seed_idx], idx, seed_shift)
            noise.mul_(float(rewards_normalized[seed_idx]))
            update.add_(noise)
        update.div_(n)
        param.data.add_(ALPHA * update)


def snapshot(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def assert_bit_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("dtype, tie, shift", CASES, ids=IDS)
def test_perturbed_weights_equal_the_release(dtype, tie, shift):
    ours, release = model(dtype, tie), model(dtype, tie)
    base = snapshot(ours)
    ESWeights(ours, "iid" if shift else "correlated", "param").perturb(424242, SIGMA)
    release_perturb(release, 424242, shift)
    assert_bit_equal(snapshot(ours), snapshot(release))
    assert any(not torch.equal(base[k], v) for k, v in snapshot(ours).items())


@pytest.mark.parametrize("dtype, tie, shift", CASES, ids=IDS)
def test_restore_paper_loop_equals_the_release_ours_is_exact(dtype, tie, shift):
    mode = "iid" if shift else "correlated"
    paper_model, release, ours_model = model(dtype, tie), model(dtype, tie), model(dtype, tie)
    base = snapshot(ours_model)
    paper = PaperLoopWeights(paper_model, mode)
    paper.perturb(99, SIGMA)
    paper.restore()
    release_perturb(release, 99, shift)
    release_perturb(release, 99, shift, sign=-1.0)
    assert_bit_equal(snapshot(paper_model), snapshot(release))
    ours = ESWeights(ours_model, mode, "param")
    ours.perturb(99, SIGMA)
    ours.restore()
    assert_bit_equal(snapshot(ours_model), base)
    if dtype == torch.bfloat16:  # the release's subtract-to-restore drifts in bf16; the copy from the master does not
        assert any(not torch.equal(base[k], v) for k, v in snapshot(release).items())


@pytest.mark.parametrize("dtype, tie, shift", CASES, ids=IDS)
def test_paper_loop_update_equals_the_release(dtype, tie, shift):
    seeds = [5, 77, 123456, 2**29 + 3, 31337, 8]
    rewards = [0.1, 1.1, 0.0, 0.1, 0.6000000001, 0.25]
    paper_model, release = model(dtype, tie), model(dtype, tie)
    paper = PaperLoopWeights(paper_model, "iid" if shift else "correlated", ALPHA, len(seeds))
    paper.apply_update(list(zip(seeds, release_tell(rewards))))
    release_update(release, seeds, rewards, shift)
    assert_bit_equal(snapshot(paper_model), snapshot(release))


@pytest.mark.parametrize("tie", [False, True])
def test_default_update_matches_the_release_in_fp32(tie):
    """es-repro's own update (fp32 master, coefficients alpha/N * z in float64) lands within two fp32 ulps of the
    release's weights in fp32 (not bit for bit: the order of the roundings differs), and it does move them."""
    seeds, rewards = [5, 77, 123456, 31337], [0.1, 1.1, 0.0, 0.6]
    ours_model, release = model(torch.float32, tie), model(torch.float32, tie)
    base = snapshot(ours_model)
    members = [es.Member(s, 1) for s in seeds]
    ESWeights(ours_model, "correlated").apply_update(es.merge_by_seed(members, es.tell(members, rewards, ALPHA)))
    release_update(release, seeds, rewards, seed_shift=False)
    ours, theirs = snapshot(ours_model), snapshot(release)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=2.5e-7, atol=1e-9)  # atol: weights near 0, ~1e-5 of a step
    assert sum(int((ours[k] != base[k]).sum()) for k in ours) > 0.9 * sum(v.numel() for v in base.values())


def release_seeds(initial_seed: int, population: int, iterations: int) -> list[list[int]]:
    """The release's member seeds per iteration, from numpy's global stream (left as it was found)."""
    saved = np.random.get_state()
    try:
        np.random.seed(initial_seed)
        return [np.random.randint(0, 2**30, size=population, dtype=np.int64).tolist() for _ in range(iterations)]
    finally:
        np.random.set_state(saved)


def test_released_seed_stream_equals_numpys_global_stream():
    expected = release_seeds(33, 30, 12)
    es._released_draws.clear()
    assert [m.seed for m in es.ask(33, 7, 30, stream="released")] == expected[7]  # a resume at 7 redraws 0..6
    assert [[m.seed for m in es.ask(33, g, 30, stream="released")] for g in range(12)] == expected


def test_a_run_with_es_released_logs_the_releases_seeds(tmp_path):
    from es_repro.run.log import RunLog
    from es_repro.train import run_es
    from tests.helpers import make_cfg

    expected = release_seeds(33, 6, 2)
    cfg = make_cfg(["es=released", "seed=33", "es.population=6", "es.generations=2", "es.sigma=0.03", "es.alpha=0.03",
                    "eval.kl_samples=0"])
    assert (cfg.es.noise, cfg.es.noise_dtype, cfg.es.seed_stream) == ("correlated", "param", "released")
    run_es(cfg, tmp_path)
    assert [r["seeds"] for r in RunLog(tmp_path).records("train")] == expected
