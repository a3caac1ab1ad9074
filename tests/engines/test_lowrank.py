"""Population-batched low-rank ES: one batched forward equals k separately perturbed models; the update
equals its formula; a short run learns."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from es_repro.engines.lowrank import LowRankESWeights, lowrank_factors
from es_repro.es.strategy import Member, ask, merge_by_seed, tell
from es_repro.models.tiny import build_tiny_model
from es_repro.run.checkpoint import latest_checkpoint
from es_repro.run.log import RunLog
from es_repro.run.replay import main as replay_main
from es_repro.train import run_es
from tests.helpers import make_cfg


def explicitly_perturbed(seed_model: int, tie: bool, weights: LowRankESWeights, member: Member, sigma: float):
    ref, _ = build_tiny_model(seed=seed_model, tie_embeddings=tie)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for i in weights.moving:
            a, b = lowrank_factors(params[weights.names[i]], i, member.seed, weights.rank)
            params[weights.names[i]].add_(member.sign * sigma * (a @ b.T) / math.sqrt(weights.rank))
    return ref


def assert_batched_equals_explicit(model, weights: LowRankESWeights, tie: bool, members: list[Member]):
    """One batched forward of the members (2 rows each) against each member's explicitly perturbed model; returns
    the input ids."""
    ids = torch.randint(0, 250, (2, 7), generator=torch.Generator().manual_seed(0))
    with weights.population(members, 0.1):
        logits = model(input_ids=ids.repeat(len(members), 1)).logits
    for j, m in enumerate(members):
        expected = explicitly_perturbed(0, tie, weights, m, 0.1)(input_ids=ids).logits
        torch.testing.assert_close(logits[2 * j : 2 * j + 2], expected, rtol=1e-5, atol=2e-5)
    return ids


@pytest.mark.parametrize("tie", [False, True])
def test_batched_forward_equals_each_member_perturbed_explicitly(tie):
    model, _ = build_tiny_model(seed=0, tie_embeddings=tie)
    weights = LowRankESWeights(model, rank=2)
    ids = assert_batched_equals_explicit(model, weights, tie, [Member(5, 1), Member(9, -1), Member(5, -1)])
    unperturbed, _ = build_tiny_model(seed=0, tie_embeddings=tie)  # hooks are gone after the block
    assert torch.equal(model(input_ids=ids).logits, unperturbed(input_ids=ids).logits)



def test_lowrank_honours_es_master_device(monkeypatch):
    """es.master_device reaches the low-rank weights (the memory plan may have moved the master to pinned host
    memory because it does not fit beside the model); recorded at the one place a master tensor is made. A spy,
    because on a CPU-only machine a cpu master is made exactly as an auto one (pinning needs CUDA, and the meta
    device cannot stand in for the GPU: a host master copies the model's values, which meta tensors lack); the
    pinned master itself is checked on CUDA in tests/engines/test_gpu.py."""
    from es_repro.engines import weights as weights_module
    from es_repro.engines.hf.backend import make_weights

    asked = []
    real = weights_module.master_copy
    monkeypatch.setattr(weights_module, "master_copy", lambda p, device: asked.append(device) or real(p, device))
    cfg = make_cfg(["es.lowrank=1", "es.master_device=cpu"])
    weights = make_weights(build_tiny_model(seed=1)[0], cfg.es)
    assert isinstance(weights, LowRankESWeights) and asked and set(asked) == {"cpu"}

def test_update_equals_sum_of_coefficient_times_lowrank_noise():
    model, _ = build_tiny_model(seed=1)
    weights = LowRankESWeights(model, rank=3)
    before = [m.clone() for m in weights.master]
    members = ask(0, 0, 4)
    coeffs = tell(members, [0.1, 0.7, 0.3, 0.2], alpha=0.01)
    weights.apply_update(merge_by_seed(members, coeffs))
    for i, (b0, p) in enumerate(zip(before, weights.params)):
        if i not in weights.moving:
            assert torch.equal(b0, p)  # vectors (norms) are not perturbed in low-rank mode
            continue
        expected = b0.double()
        for m, c in zip(members, coeffs):
            a, b = lowrank_factors(p, i, m.seed, 3)
            expected = expected + c * (a.double() @ b.double().T) / math.sqrt(3)
        torch.testing.assert_close(p.double(), expected, rtol=0, atol=1e-6)


def test_lowrank_run_learns_and_replays(tmp_path):
    cfg = make_cfg(["es.lowrank=2", "es.members_per_forward=8", "es.generations=15", "es.population=16",
                    "task.train_size=8", "task.max_new_tokens=4", "eval.kl_samples=0", "eval.every=5"])
    run_es(cfg, tmp_path)
    evals = [r["eval_reward"] for r in RunLog(tmp_path).records("eval")]
    assert evals[-1] > evals[0] + 0.2, evals
    replay_main([str(tmp_path), "--out", str(tmp_path / "replayed")])
    replayed = load_file(tmp_path / "replayed" / "model.safetensors")
    final = load_file(latest_checkpoint(tmp_path) / "model.safetensors")
    assert all(torch.equal(replayed[k], final[k]) for k in final)


@pytest.mark.parametrize("tie", [False, True])
def test_projection_targets_leave_the_embeddings_and_the_head_alone(tie):
    """es.lowrank_targets=projections (what the vLLM population engine perturbs): members and the update touch the
    attention and MLP projections only; the batched forward still equals each member perturbed explicitly."""
    from es_repro.engines.lowrank import lowrank_users

    model, _ = build_tiny_model(seed=0, tie_embeddings=tie)
    names = [name for name, _, _ in lowrank_users(model, "projections")]
    assert names and all(n.split(".")[-1].endswith("_proj") for n in names)
    assert {n for n, _, _ in lowrank_users(model, "all")} - set(names) >= {"model.embed_tokens", "lm_head"}
    weights = LowRankESWeights(model, rank=2, targets="projections")
    assert_batched_equals_explicit(model, weights, tie, [Member(5, 1), Member(9, -1)])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    weights.apply_update([(5, 0.5), (9, -0.25)])
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {f"{n}.weight" for n in names}
    with pytest.raises(ValueError, match="es.lowrank_targets='heads' is not one of"):
        lowrank_users(model, "heads")
