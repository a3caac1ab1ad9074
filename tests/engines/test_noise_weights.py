"""Noise modes and the perturb / restore / update mechanics on real (tiny) model parameters."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from es_repro.engines import master as master_module
from es_repro.engines.weights import ESWeights
from es_repro.es.noise import tensor_noise
from es_repro.es.update_rules import SGD, Momentum
from es_repro.models.tiny import build_tiny_model


def test_correlated_equals_randn_reseeded_per_tensor_in_param_dtype():
    params = [torch.zeros(3, 4, dtype=torch.bfloat16), torch.zeros(5, dtype=torch.float32), torch.zeros(3, 4)]
    for i, p in enumerate(params):
        g = torch.Generator(device=p.device)
        g.manual_seed(1234)
        expected = torch.randn(p.shape, generator=g, dtype=p.dtype, device=p.device)
        noise = tensor_noise(p, i, 1234, "correlated")
        assert noise.dtype == p.dtype and torch.equal(noise, expected)
    # the paper's quirk: same seed, same shape -> the same noise in different tensors
    assert torch.equal(tensor_noise(params[0].float(), 0, 9, "correlated"), tensor_noise(params[2], 2, 9, "correlated"))


def test_iid_streams_are_seeded_by_seed_plus_index_and_uncorrelated():
    a = torch.zeros(200_000)
    n0, n1 = tensor_noise(a, 0, 77, "iid"), tensor_noise(a, 1, 77, "iid")
    assert torch.equal(n1, torch.randn(a.shape, generator=torch.Generator().manual_seed(78)))
    corr = torch.corrcoef(torch.stack([n0, n1]))[0, 1]
    assert abs(float(corr)) < 0.01  # ~ N(0, 1/sqrt(2e5)) = 0.002 if independent
    assert float(n0.std()) == pytest.approx(1.0, abs=0.01)


def test_unknown_noise_mode_is_an_error():
    with pytest.raises(ValueError, match="iid"):
        tensor_noise(torch.zeros(2), 0, 0, "lowrank")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["iid", "correlated"])
def test_perturb_then_restore_is_bit_exact(dtype, mode):
    model, _ = build_tiny_model(seed=1)
    model.to(dtype)
    weights = ESWeights(model, mode)
    before = [p.detach().clone() for p in weights.params]
    for seed in (11, 12):
        weights.perturb(seed, 1e-3)
        assert any(not torch.equal(a, b) for a, b in zip(before, weights.params))
        weights.restore()
        assert all(torch.equal(a, b) for a, b in zip(before, weights.params))


def test_update_accumulates_in_fp32_below_bf16_resolution():
    model, _ = build_tiny_model(seed=2)
    model.to(torch.bfloat16)
    weights = ESWeights(model, "iid")
    master0 = [m.clone() for m in weights.master]
    weights.apply_update([(5, 1e-6)])  # far below bf16 spacing (~1e-2 relative) for most weights
    moved = sum(int((m != m0).sum()) for m, m0 in zip(weights.master, master0))
    assert moved > 0.9 * sum(m.numel() for m in master0)
    # the working copy is the rounded master
    assert all(torch.equal(p, m.to(torch.bfloat16)) for p, m in zip(weights.params, weights.master))


def test_decay_pulls_toward_base():
    model, _ = build_tiny_model(seed=2)
    base = [p.detach().clone() for p in model.parameters()]
    weights = ESWeights(model, "iid", rule=SGD(decay=0.5))
    weights.rule.decay = 0.0  # a plain step first, then one pure decay step
    weights.apply_update([(5, 0.1)])
    dist = sum(float((m - b).norm()) for m, b in zip(weights.master, base))
    weights.rule.decay = 0.5
    weights.apply_update([])
    dist_after = sum(float((m - b).norm()) for m, b in zip(weights.master, base))
    assert dist_after == pytest.approx(dist * 0.5, rel=1e-5)


def test_momentum_rule_follows_its_definition():
    """v_1 = d_1, v_2 = beta v_1 + d_2; theta_2 = theta_0 + v_1 + v_2, with d_t the plain ES step of generation t."""
    model, _ = build_tiny_model(seed=2)
    theta0 = [p.detach().clone() for p in model.parameters()]
    weights = ESWeights(model, "iid", rule=Momentum(beta=0.5))
    steps = [[(5, 0.1), (6, -0.05)], [(7, 0.02)]]
    for s in steps:
        weights.apply_update(s)
    for i, (t0, m) in enumerate(zip(theta0, weights.master)):
        d = [sum(c * tensor_noise(t0, i, seed, "iid") for seed, c in s) for s in steps]
        torch.testing.assert_close(m, t0 + d[0] + (0.5 * d[0] + d[1]), rtol=0, atol=1e-6)
    assert sorted(weights.rule.state_dict()) == sorted(f"velocity.{n}" for n in weights.names)



def test_a_resumed_rules_state_lives_where_the_master_does(tmp_path):
    """safetensors loads onto the CPU; momentum's velocity must follow the master to its device, or the first update
    after a resume on a GPU adds a CPU velocity to a CUDA delta. The meta device stands in for the GPU."""
    names, shapes = ["a", "b"], [(3, 4), (5,)]
    like = [SimpleNamespace(shape=s, dtype=torch.bfloat16, device=torch.device("cpu")) for s in shapes]
    saved = master_module.Master(names, [torch.randn(s) for s in shapes], like, "iid", "param", Momentum(beta=0.5))
    next(saved.step_master([(3, 0.1)]))  # velocity for tensor a
    saved.save(tmp_path)
    resumed = master_module.Master(names, [torch.empty(s, device="meta") for s in shapes], like, "iid", "param",
                                   Momentum(beta=0.5))
    resumed.load(tmp_path)
    assert set(resumed.rule.velocity) == {"a"} and resumed.rule.velocity["a"].device.type == "meta"

def test_tied_weights_are_perturbed_once():
    model, _ = build_tiny_model(tie_embeddings=True)
    weights = ESWeights(model, "iid")
    assert model.config.tie_word_embeddings
    assert "lm_head.weight" not in weights.names
    weights.perturb(3, 0.1)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def count_draws(monkeypatch) -> list:
    """Every tensor_noise call the masters make, as (index, seed)."""
    calls = []
    monkeypatch.setattr(master_module, "tensor_noise", lambda p, i, seed, *a: calls.append((i, seed)) or tensor_noise(p, i, seed, *a))
    return calls


def perturbed_copies(weights: ESWeights, seed: int, scales) -> list[list[torch.Tensor]]:
    """The working weights after perturb(seed, scale) for each scale, each restored after."""
    out = []
    for scale in scales:
        weights.perturb(seed, scale)
        out.append([p.detach().clone() for p in weights.params])
        weights.restore()
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_mirrored_pair_draws_its_noise_once_with_the_same_bits(dtype, monkeypatch):
    reused = ESWeights(build_tiny_model(seed=2)[0].to(dtype), "iid")
    fresh = ESWeights(build_tiny_model(seed=2)[0].to(dtype), "iid")
    expected = perturbed_copies(fresh, 41, (0.05, -0.05)) + perturbed_copies(fresh, 42, (0.05,))
    calls = count_draws(monkeypatch)
    for (scale, keep), want in zip(((0.05, True), (-0.05, False)), expected):  # the pair (+s, -s) as HFBackend runs it
        reused.perturb(41, scale, keep_noise=keep)
        assert all(torch.equal(a, b) for a, b in zip(reused.params, want))
        reused.restore()
    assert len(calls) == len(reused.params)  # one draw per tensor for the whole pair
    assert not reused.kept  # the mirrored member released the held noise
    # a kept noise is never used for another seed
    reused.perturb(41, 0.05, keep_noise=True), reused.restore()
    reused.perturb(42, 0.05)
    assert all(torch.equal(a, b) for a, b in zip(reused.params, expected[2]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("antithetic", [False, True])
def test_noise_kept_for_the_update_gives_the_same_bits_and_no_draws(dtype, antithetic, monkeypatch):
    """es.noise_cache: every member's noise is held from its perturbation, so the update draws nothing; the
    master and working weights land on the same bits as when the update redraws every noise."""
    members = [(7, 1), (7, -1), (9, 1), (9, -1)] if antithetic else [(7, 1), (8, 1), (9, 1), (10, 1)]
    update = [(7, 0.3), (9, -0.2)] if antithetic else [(7, 0.3), (8, -0.1), (9, -0.2), (10, 0.05)]
    cached = ESWeights(build_tiny_model(seed=3)[0].to(dtype), "iid", keep_for_update=True)
    redrawn = ESWeights(build_tiny_model(seed=3)[0].to(dtype), "iid")
    for weights in (redrawn, cached):
        calls = count_draws(monkeypatch)
        for seed, sign in members:
            weights.perturb(seed, sign * 0.01)
            weights.restore()
        draws_per_member = len(calls)
        weights.apply_update(update)
    assert draws_per_member == len({s for s, _ in members}) * len(cached.params)  # each seed drawn once
    assert len(calls) == draws_per_member  # the update drew nothing
    assert not cached.kept  # released after the update
    assert all(torch.equal(a, b) for a, b in zip(cached.master, redrawn.master))
    assert all(torch.equal(a, b) for a, b in zip(cached.params, redrawn.params))


def test_update_with_a_repeated_seed_equals_the_sum_drawn_per_member():
    model, _ = build_tiny_model(seed=2)
    weights = ESWeights(model, "iid")
    before = [m.clone() for m in weights.master]
    seed_coeffs = [(5, 0.3), (5, -0.1), (9, -0.2), (9, 0.25)]
    weights.apply_update(seed_coeffs)
    for i, (m0, m) in enumerate(zip(before, weights.master)):
        delta = torch.zeros_like(m0)
        for seed, coeff in seed_coeffs:  # the definition: every member's noise drawn afresh
            delta.add_(tensor_noise(m0, i, seed, "iid"), alpha=coeff)
        assert torch.equal(m, m0 + delta)


def test_noise_cache_auto_keeps_noise_only_when_it_fits(monkeypatch):
    from es_repro.es import noise

    params = [torch.zeros(1000), torch.zeros(10, 100, dtype=torch.bfloat16)]  # 4000 + 2000 bytes of noise per seed
    monkeypatch.setattr(noise, "available_memory_bytes", lambda: 4 * 6000 * 8)
    assert noise.keep_noise_for_update("auto", params, "param", seeds=8)  # exactly a quarter: kept
    assert not noise.keep_noise_for_update("auto", params, "param", seeds=9)
    assert not noise.keep_noise_for_update("auto", params, "float32", seeds=8)  # fp32 noise for the bf16 tensor
    assert noise.keep_noise_for_update("on", params, "param", seeds=10**6)
    assert not noise.keep_noise_for_update("off", params, "param", seeds=1)
    with pytest.raises(ValueError, match="es.noise_cache='maybe'"):
        noise.keep_noise_for_update("maybe", params, "param", seeds=1)


class RecordingCudart:
    """torch.cuda.cudart() as the pinned master calls it: records registrations; `refuse` makes them fail."""

    def __init__(self, refuse: bool = False):
        self.registered: dict[int, int] = {}
        self.unregistered: list[int] = []
        self.refuse = refuse

    def cudaHostRegister(self, ptr: int, size: int, flags: int) -> int:
        if self.refuse:
            return 712  # cudaErrorHostMemoryAlreadyRegistered
        self.registered[ptr] = size
        return 0

    def cudaHostUnregister(self, ptr: int) -> int:
        self.unregistered.append(ptr)
        return 0


def test_the_pinned_master_registers_whole_pages_of_its_own_and_unregisters_them_when_freed(monkeypatch, tmp_path):
    """Exactly the tensor's bytes are pinned (torch's pinned allocator would round each tensor up to a power of two);
    every registered range is page-aligned, covers its tensor, lies in its own allocation (so no two overlap, which
    CUDA refuses), and is released with the tensor. The tensors save and load like any other master."""
    import gc
    import mmap

    from es_repro.engines.weights import pinned_empty

    cudart = RecordingCudart()
    monkeypatch.setattr(torch.cuda, "cudart", lambda: cudart)
    shapes = [(3, 5), (7,), (1000, 300), (2,), (4096,)]
    tensors = [pinned_empty(s, torch.float32) for s in shapes]
    spans = []
    for t in tensors:
        size = cudart.registered[t.data_ptr()]
        assert t.data_ptr() % mmap.PAGESIZE == 0 and size % mmap.PAGESIZE == 0
        assert t.numel() * 4 <= size < t.numel() * 4 + mmap.PAGESIZE
        storage = t.untyped_storage()
        assert storage.data_ptr() <= t.data_ptr() and t.data_ptr() + size <= storage.data_ptr() + storage.nbytes()
        spans.append((t.data_ptr(), t.data_ptr() + size))
    spans.sort()
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))
    for t, values in zip(tensors, [torch.randn(s) for s in shapes]):
        t.copy_(values)
    like = [SimpleNamespace(shape=s, dtype=torch.bfloat16, device=torch.device("cpu")) for s in shapes]
    names = [f"t{i}" for i in range(len(shapes))]
    master_module.Master(names, tensors, like, "iid", "param").save(tmp_path)
    loaded = master_module.Master(names, [torch.zeros(s) for s in shapes], like, "iid", "param")
    loaded.load(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.master, tensors))
    ptrs = [t.data_ptr() for t in tensors]
    del tensors, t
    gc.collect()
    assert sorted(cudart.unregistered) == sorted(ptrs)


def test_a_refused_registration_falls_back_to_torchs_pinned_allocator(monkeypatch):
    from es_repro.engines.weights import pinned_empty

    asked = {}
    real_empty = torch.empty
    monkeypatch.setattr(torch.cuda, "cudart", lambda: RecordingCudart(refuse=True))
    monkeypatch.setattr(torch, "empty", lambda *a, **k: asked.update(k) or real_empty(*a, **{**k, "pin_memory": False}))
    t = pinned_empty((4, 4), torch.float32)
    assert asked.get("pin_memory") is True and t.shape == (4, 4) and t.dtype == torch.float32
