"""The ES update against its formula: theta' = theta + alpha/N * sum_n z_n eps_n, z = (r - mean) / (std + 1e-8)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from es_repro.engines.weights import ESWeights
from es_repro.es import strategy as es
from es_repro.models.tiny import build_tiny_model


def test_ask_is_deterministic_and_depends_on_generation():
    a = es.ask(7, 3, 10)
    assert a == es.ask(7, 3, 10)
    assert a != es.ask(7, 4, 10) and a != es.ask(8, 3, 10)
    assert len({m.seed for m in a}) == 10 and all(m.sign == 1 for m in a)


def test_antithetic_pairs_share_seed_with_opposite_signs():
    members = es.ask(0, 0, 6, antithetic=True)
    assert [m.sign for m in members] == [1, -1] * 3
    assert all(members[i].seed == members[i + 1].seed for i in range(0, 6, 2))


def test_zscore_uses_population_std():
    r = np.array([1.0, 2.0, 3.0, 6.0])
    expected = (r - 3.0) / (np.sqrt(((r - 3.0) ** 2).mean()) + 1e-8)
    np.testing.assert_allclose(es.zscore(r), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shaping", ["zscore", "centered_rank"])
def test_flat_population_gives_zero_update_not_nan(shaping):
    coeffs = es.tell(es.ask(0, 0, 5), [0.06] * 5, alpha=5e-4, shaping=shaping)
    assert coeffs == [0.0] * 5


def test_centered_rank_values_and_ties():
    np.testing.assert_allclose(es.centered_rank(np.array([10.0, -1.0, 3.0])), [0.5, -0.5, 0.0])
    np.testing.assert_allclose(es.centered_rank(np.array([1.0, 1.0, 5.0])), [-0.25, -0.25, 0.5])


def test_tell_coefficients_are_alpha_over_n_times_z_times_sign():
    members = es.ask(1, 0, 4, antithetic=True)
    rewards = [0.2, 0.5, 0.9, 0.1]
    z = es.zscore(np.array(rewards))
    expected = [0.01 / 4 * m.sign * zi for m, zi in zip(members, z)]
    np.testing.assert_allclose(es.tell(members, rewards, alpha=0.01), expected, rtol=1e-12)
    merged = dict(es.merge_by_seed(members, expected))
    assert len(merged) == 2
    assert merged[members[0].seed] == pytest.approx(expected[0] + expected[1])


@pytest.mark.parametrize("mode", ["iid", "correlated"])
def test_update_equals_formula_with_noise_regenerated_by_hand(mode):
    model, _ = build_tiny_model(seed=3)
    weights = ESWeights(model, mode)
    before = [p.detach().clone() for p in weights.params]
    members, rewards, alpha = es.ask(5, 0, 6), [0.1, 0.4, 0.4, 0.9, 0.0, 0.3], 0.01
    weights.apply_update(es.merge_by_seed(members, es.tell(members, rewards, alpha)))

    r = np.array(rewards)
    z = (r - r.mean()) / (r.std() + 1e-8)
    for i, (p0, p1) in enumerate(zip(before, weights.params)):
        expected = p0.double().clone()
        for m, zn in zip(members, z):
            gen = torch.Generator().manual_seed(m.seed + i if mode == "iid" else m.seed)
            eps = torch.randn(p0.shape, generator=gen, dtype=torch.float32)
            expected += alpha / len(members) * zn * eps.double()
        torch.testing.assert_close(p1.double(), expected, rtol=0, atol=1e-6)
        assert not torch.equal(p0, p1)


def test_prompt_subset_seeded():
    assert es.prompt_subset(0, 1, 10, 0) == list(range(10))
    sub = es.prompt_subset(0, 1, 10, 4)
    assert sub == es.prompt_subset(0, 1, 10, 4) and len(set(sub)) == 4
    assert sub != es.prompt_subset(0, 2, 10, 4) or sub != es.prompt_subset(0, 3, 10, 4)


def test_prompt_fitness_baseline_equals_a_hand_computation():
    """es.fitness_baseline=prompt: each prompt's rewards z-scored over the members (ddof 0, + 1e-8), then the
    member's mean over prompts. Prompt C is scored alike by every member and contributes nothing."""
    per_prompt = [[10.0, 0.0, 3.0], [0.0, 1.0, 3.0], [5.0, 1.0, 3.0]]  # 3 members x prompts A, B, C
    means = [13 / 3, 4 / 3, 3.0]
    # A = (10, 0, 5): mean 5, std sqrt(50/3); B = (0, 1, 1): mean 2/3, std sqrt(2)/3; C: z = 0
    sa, sb = np.sqrt(50 / 3) + 1e-8, np.sqrt(2) / 3 + 1e-8
    want = [(5 / sa - (2 / 3) / sb) / 3, (-5 / sa + (1 / 3) / sb) / 3, (0 / sa + (1 / 3) / sb) / 3]
    got = es.member_fitness("prompt", per_prompt, means)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(got, [-0.06315, -0.17255, 0.23570], atol=1e-5)
    assert es.member_fitness("none", per_prompt, means) == means
    # not the means moved by a constant (which every shaping would undo): member 0's lead on the wide prompt A
    # counts for less than member 2's on B, so the order changes
    assert np.argsort(got).tolist() == [1, 0, 2] and np.argsort(means).tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="es.fitness_baseline='mean' is not one of"):
        es.member_fitness("mean", per_prompt, means)
