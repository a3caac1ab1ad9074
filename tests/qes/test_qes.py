"""QES (es_repro/qes/): integer perturbation, error feedback, residual storage, pair coefficients and the
de-quantized forward path, on the tiny random model (CPU, seconds)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from es_repro.es.strategy import Member, pair_coefficients
from es_repro.models.tiny import build_tiny_model
from es_repro.qes.model import quantizable_linears, quantize_model
from es_repro.qes.quant import rtn_quantize
from es_repro.qes.residual import Residuals
from es_repro.qes.steps import RESIDUAL_CLAMP, error_feedback, stochastic_round, stochastic_step
from es_repro.qes.weights import QuantizedWeights


def tiny_quantized(bits=4, dtype=torch.float32, fill=None, **kwargs):
    """(model, QuantizedWeights) of the tiny random model; ``fill`` sets every code (mid-range: no gating)."""
    model, _ = build_tiny_model(seed=0)
    quantized = quantize_model(model, bits, 128)
    model.to(dtype)
    defaults = dict(sigma=0.5, alpha=0.1, population=6, gamma=0.9)
    w = QuantizedWeights(model, quantized, **{**defaults, **kwargs})
    if fill is not None:
        for q in w.quantized:
            q.codes.fill_(fill)
        w.refresh_all()
    return model, w


def codes_of(w):
    return [q.codes.clone() for q in w.quantized]


def reference_dequant(q, dtype):
    """scale * (code - zero) element by element, written out independently of QuantizedTensor."""
    out = torch.empty(q.codes.shape, dtype=torch.float32)
    for i in range(q.codes.shape[1]):
        g = int(q.g_idx[i])
        out[:, i] = (q.codes[:, i].float() - q.zeros[g].float()) * q.scales[g].float()
    return out.to(dtype)


# ---- the integer perturbation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [4, 8])
def test_perturb_restore_is_integer_exact_with_the_boundary_mask(bits):
    model, w = tiny_quantized(bits)
    maxq = 2**bits - 1
    for q in w.quantized:  # put a quarter of the codes on the boundaries so gating happens
        flat = q.codes.view(-1)
        flat[0::8], flat[1::8] = 0, maxq
    w.refresh_all()
    codes0, weights0 = codes_of(w), [p.clone() for p in w.weights]
    gated = 0
    for seed, scale in [(11, 3.0), (11, -3.0), (12345, 1.5)]:
        w.perturb(seed, scale)
        for i, q in enumerate(w.quantized):
            assert int(q.codes.min()) >= 0 and int(q.codes.max()) <= maxq
            d = stochastic_step(q.codes.shape, seed + i, abs(scale)).to(torch.int16)
            d = d if scale > 0 else -d
            raw = codes0[i].to(torch.int16) + d
            outside = (raw < 0) | (raw > maxq)
            gated += int((outside & (d != 0)).sum())
            moved = q.codes.to(torch.int16) - codes0[i].to(torch.int16)
            assert torch.equal(moved, torch.where(outside, torch.zeros_like(d), d))
            assert torch.equal(w.weights[i], reference_dequant(q, w.weights[i].dtype))
        w.restore()
        assert all(torch.equal(a, b) for a, b in zip(codes_of(w), codes0))
        assert all(torch.equal(a, b) for a, b in zip(w.weights, weights0))
    assert gated > 0


def test_mirrored_member_steps_are_exact_negatives():
    _, w = tiny_quantized(8, fill=128)
    base = codes_of(w)
    deltas = []
    for scale in (2.0, -2.0):
        w.perturb(77, scale)
        deltas.append([q.codes.to(torch.int16) - b.to(torch.int16) for q, b in zip(w.quantized, base)])
        w.restore()
    assert any(d.abs().sum() > 0 for d in deltas[0])
    assert all(torch.equal(a, -b) for a, b in zip(*deltas))


def test_stochastic_rounding_is_unbiased():
    """For a fixed x = sigma * e, the mean of d over many seeds of the rounding stream is within a few standard
    errors of x, element by element; d is always floor(x) or floor(x) + 1."""
    gen = torch.Generator().manual_seed(0)
    x = 0.7 * torch.randn(500, generator=gen)
    seeds = 4000
    total = torch.zeros_like(x)
    for s in range(seeds):
        d = stochastic_round(x, torch.rand(500, generator=torch.Generator().manual_seed(s)))
        assert torch.all((d == torch.floor(x)) | (d == torch.floor(x) + 1))
        total += d
    frac = x - torch.floor(x)
    se = torch.sqrt(frac * (1 - frac) / seeds).clamp(min=1e-6)
    z = (total / seeds - x) / se
    assert z.abs().max() < 5.0  # 500 elements: a 5-sigma excursion has probability ~3e-4
    assert abs(float(z.mean())) < 4.0 / np.sqrt(500)


def test_stochastic_step_matches_its_definition():
    d = stochastic_step((10, 100), 5, 2.3)
    x = 2.3 * torch.randn((10, 100), generator=torch.Generator().manual_seed(5))
    u = torch.rand((10, 100), generator=torch.Generator().manual_seed(5 + 12345))
    assert d.dtype == torch.int8 and torch.equal(d.to(torch.float32), stochastic_round(x, u))


# ---- coefficients ----------------------------------------------------------------------------------------------

def test_pair_coefficients_are_clipped_pair_difference_zscores():
    members = [Member(s, sign) for s in (3, 9, 4, 1) for sign in (1, -1)]
    rewards = [1.0, 0.0, 0.5, 0.5, 0.0, 2.0, 10.0, 0.0]
    c = pair_coefficients(members, rewards, clip=1.0)
    diff = np.array([1.0, 0.0, -2.0, 10.0])
    z = np.clip((diff - diff.mean()) / (diff.std() + 1e-8), -1, 1)
    assert c == pytest.approx([v for zi in z for v in (zi, -zi)])
    assert max(abs(v) for v in c) == 1.0
    with pytest.raises(ValueError, match="mirrored"):
        pair_coefficients([Member(1, 1), Member(2, -1)], [0.0, 1.0], 3.0)


# ---- the update: error feedback -------------------------------------------------------------------------------

def test_gamma_one_telescopes_and_keeps_the_residual_within_half_a_step():
    """gamma = 1, no gating: e_t = u_t - round(u_t), so |e| <= 0.5 exactly and W_T + e_T = W_0 + sum_t alpha*g_t
    up to the fp16 storage of e (at most 2^-12 per step) and float32 sums."""
    _, w = tiny_quantized(8, fill=128, gamma=1.0, sigma=1.0, alpha=0.07)
    rng = np.random.default_rng(0)
    w0 = [q.codes.view(-1).to(torch.float64) for q in w.quantized]
    sums = [torch.zeros_like(c) for c in w0]
    steps = 30
    for t in range(steps):
        seed_coeffs = [(int(s), float(c)) for s, c in zip(rng.integers(0, 2**31 - 1, 3), rng.normal(size=3))]
        for i in range(len(w.quantized)):
            sums[i] += w._alpha_g(i, seed_coeffs, w.sigma).view(-1).to(torch.float64)
        w.apply_update(seed_coeffs)
        assert w.last_stats["codes_gated"] == 0
        for i, q in enumerate(w.quantized):
            e = w.residuals.tensors[i].view(-1).to(torch.float64)
            assert e.abs().max() <= 0.5
            gap = (q.codes.view(-1).to(torch.float64) + e) - (w0[i] + sums[i])
            assert gap.abs().max() <= (t + 1) * 2**-11
    assert any(not torch.equal(q.codes.view(-1).to(torch.float64), c) for q, c in zip(w.quantized, w0))


def test_dead_zone_for_gamma_below_one():
    """A constant per-step u = a: the residual settles at a / (1 - gamma); the element moves only if that
    exceeds 0.5, i.e. |a| > 0.5 (1 - gamma) (0.05 at gamma 0.9). gamma = 0 moves only if |a| > 0.5."""
    def moves(a, gamma, steps=400):
        codes = torch.full((4,), 100, dtype=torch.uint8)
        e, moved = None, 0
        for _ in range(steps):
            step, e, _ = error_feedback(codes, torch.full((4,), a), e, gamma, 255)
            codes = (codes.to(torch.int16) + step).to(torch.uint8)
            moved += int(step.abs().sum())
        return moved, e

    for gamma in (0.9, 0.5, 0.0):
        threshold = 0.5 * (1 - gamma)
        still, e = moves(0.9 * threshold if gamma else 0.49, gamma)
        assert still == 0
        if gamma:
            assert float(e[0]) == pytest.approx(0.9 * threshold / (1 - gamma), rel=1e-2)
        assert moves(1.1 * threshold if gamma else 0.51, gamma)[0] > 0
        assert moves(-1.1 * threshold if gamma else -0.51, gamma)[0] > 0


def test_residual_is_clamped_where_the_boundary_blocks_a_move():
    codes = torch.tensor([255, 0, 100], dtype=torch.uint8)
    step, e, gated = error_feedback(codes, torch.tensor([4.0, -4.0, 0.6]), None, 0.9, 255)
    assert step.tolist() == [0, 0, 1] and gated == 2
    assert e.tolist() == pytest.approx([RESIDUAL_CLAMP, -RESIDUAL_CLAMP, -0.4], abs=1e-3)
    assert error_feedback(codes, torch.tensor([0.5, 1.5, 2.5]), None, 0.9, 255)[0].tolist() == [0, 2, 2]  # half to even


def _twins(mode_b, K, init="zero", **kwargs):
    _, full = tiny_quantized(8, fill=128, residuals=Residuals("full", K, init, 7), **kwargs)
    _, other = tiny_quantized(8, fill=128, residuals=Residuals(mode_b, K, init, 7), **kwargs)
    return full, other


def _updates(T, n_pairs=3, seed=1):
    rng = np.random.default_rng(seed)
    return [[(int(s), float(c)) for s, c in zip(rng.integers(0, 2**31 - 1, n_pairs), rng.normal(size=n_pairs))]
            for _ in range(T)]


@pytest.mark.parametrize("init", ["zero", "uniform"])
def test_replay_equals_full_residual_while_the_window_holds_every_update(init):
    K = 6
    full, replay = _twins("replay", K, init, gamma=0.9, sigma=1.0, alpha=0.1)
    for t, sc in enumerate(_updates(K + 1), start=1):  # update t replays t - 1 <= K records
        full.apply_update(sc)
        replay.apply_update(sc)
        assert all(torch.equal(a.codes, b.codes) for a, b in zip(full.quantized, replay.quantized)), f"t={t}"
        assert all(torch.equal(a, b) for a, b in zip(full.weights, replay.weights))
        if t <= K:
            for i in range(len(full.quantized)):
                assert torch.equal(replay.previous_residual(i), full.residuals.tensors[i])
    assert any(not torch.equal(q.codes, torch.full_like(q.codes, 128)) for q in full.quantized)


def test_replay_residual_differs_from_full_by_at_most_gamma_to_the_K_after_the_window():
    """In a regime where no code moves (|u| < 0.5 throughout), the recursion is linear: the dropped tail of the
    window contributes gamma^K * e_{t-K}, |e| <= 1.5, plus fp16 rounding."""
    K, gamma = 3, 0.6
    full, replay = _twins("replay", K, gamma=gamma, sigma=1.0, alpha=0.01)
    worst = 0.0
    for t, sc in enumerate(_updates(12), start=1):
        full.apply_update(sc)
        replay.apply_update(sc)
        assert full.last_stats["codes_changed_frac"] == 0
        for i in range(len(full.quantized)):
            gap = (replay.previous_residual(i).float() - full.residuals.tensors[i].float()).abs().max().item()
            if t <= K:
                assert gap == 0
            worst = max(worst, gap)
            assert gap <= gamma**K * 1.5 + 2e-3
    assert worst > 0  # the bound is exercised, not vacuous


def test_replay_history_holds_O_K_N_scalars_and_no_tensor():
    K, pairs = 4, 3
    _, w = tiny_quantized(8, fill=128, residuals=Residuals("replay", K, "zero", 0), population=2 * pairs)
    for sc in _updates(10, pairs):
        w.apply_update(sc)
    assert w.residuals.step == 10 and len(w.residuals.records) == K
    assert len(w.residuals.records) == K and all(len(sc) == pairs for sc, _ in w.residuals.records)  # a (seed, c) per pair
    assert w.residuals.tensors == {}


def test_gamma_zero_keeps_no_residual_and_rounds_small_updates_away():
    _, w = tiny_quantized(8, fill=128, gamma=0.0, sigma=1.0, alpha=0.01, residuals=Residuals("full", 1, "zero", 0))
    for sc in _updates(5):
        w.apply_update(sc)
    assert w.residuals.tensors == {}
    assert all(torch.equal(q.codes, torch.full_like(q.codes, 128)) for q in w.quantized)


def _hand_step(shape, seed, sigma):
    """d = floor(sigma * randn + u) for layer seed ``seed`` (es.noise=iid: member seed + layer index), the uniforms u
    from the stream seeded seed + 12345: es_repro/qes/steps.py's definition, written out here."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * sigma
    u = torch.rand(shape, generator=torch.Generator().manual_seed(seed + 12345))
    return torch.floor(x + u).clamp(-127, 127)


@pytest.mark.parametrize("norm", ["code", "paper"])
def test_paper_norm_divides_by_the_population(norm):
    """alpha * g per layer against g worked out by hand: with every code mid-range (8 bits, 128) no step is gated,
    so a pair (+s, c), (-s, -c) adds c * 2 d_s, and g = 2 sum_s c_s d_s / sigma (norm=code, the released code) or
    / (N sigma) (norm=paper, Eq. 5). With gamma = 0 the update then moves each code by round(alpha * g)."""
    N, alpha, sigma = 6, 0.6, 0.7
    _, w = tiny_quantized(8, fill=128, norm=norm, population=N, alpha=alpha, sigma=sigma, gamma=0.0)
    sc = _updates(1)[0]
    divisor = sigma if norm == "code" else N * sigma
    expected = []
    for i, q in enumerate(w.quantized):
        g = sum(c * 2 * _hand_step(q.codes.shape, s + i, sigma).double() for s, c in sc) / divisor
        expected.append(alpha * g)
        torch.testing.assert_close(w._alpha_g(i, sc, sigma).double(), alpha * g, rtol=1e-6, atol=1e-6)
    w.apply_update(sc)
    moved = 0
    for q, a_g in zip(w.quantized, expected):
        assert torch.equal(q.codes.to(torch.int16), (128 + torch.round(a_g)).to(torch.int16))
        moved += int((q.codes != 128).sum())
    assert moved > 0  # the rounding did not swallow the whole update


# ---- quantization and the de-quantized forward path --------------------------------------------------------------

@pytest.mark.parametrize("bits", [4, 8])
def test_rtn_quantizer_is_within_half_a_step(bits):
    w = torch.randn(24, 300, generator=torch.Generator().manual_seed(0)) * 0.05
    w[3, :128] = w[3, :128].abs()  # a group without negative weights (zero would be 0, which GPTQ v1 cannot store)
    q = rtn_quantize(w, bits, 128)
    assert q.scales.shape == (3, 24) and q.g_idx.tolist() == [i // 128 for i in range(300)]
    assert int(q.codes.max()) <= 2**bits - 1 and int(q.zeros.min()) >= 1
    err = (q.dequantize() - w).abs()
    step = q.scales[q.g_idx.long()].T.float()
    assert torch.all(err <= 0.5 * step * (1 + 1e-3) + 1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantized_forward_equals_the_reference_dequantization(dtype):
    model, w = tiny_quantized(4, dtype=dtype, sigma=1.0, alpha=0.5)
    for sc in _updates(3):
        w.perturb(sc[0][0], 1.0)
        w.restore()
        w.apply_update(sc)
    w.perturb(99, 1.0)  # a perturbed model, too
    reference, _ = build_tiny_model(seed=0)
    reference.to(dtype)
    modules = dict(reference.named_modules())
    for name, q in zip(w.names, w.quantized):
        modules[name].weight.data.copy_(reference_dequant(q, dtype))
    for name, module in quantizable_linears(model):
        assert torch.equal(module.weight, modules[name].weight), name
    ids = torch.tensor([[5, 17, 3, 200, 41]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
