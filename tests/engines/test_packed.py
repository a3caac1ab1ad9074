"""generation.packed_weights: bf16 linears computed from oneDNN-packed weights give F.linear's bits, follow every
in-place weight change, and leave greedy completions and member rewards exactly as eager generation has them."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from es_repro.engines.hf.backend import build
from es_repro.engines.hf.packed import PackedLinear, install_packed_linears, packing_available, use_packed_weights
from es_repro.es.strategy import ask
from es_repro.models.tiny import build_tiny_model
from es_repro.tasks import task_from_config
from es_repro.util.errors import ConfigError
from es_repro.util.timing import Timer
from tests.helpers import make_cfg

needs_packing = pytest.mark.skipif(not packing_available(), reason="oneDNN has no bf16 kernels on this CPU")


@needs_packing
@pytest.mark.parametrize("shape", [(1536, 576), (576, 1536), (192, 576), (49152, 576), (250, 64), (7, 3)])
def test_packed_linear_has_f_linear_bits_for_every_row_count(shape):
    out_f, in_f = shape
    gen = torch.Generator().manual_seed(out_f)
    layer = nn.Linear(in_f, out_f, bias=out_f < 1000).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(shape, generator=gen))
    packed = PackedLinear(layer)
    with torch.no_grad():
        for rows in (1, 2, 3, 16, 17, 64, 300):
            x = torch.randn(rows, in_f, generator=gen).to(torch.bfloat16)
            assert torch.equal(packed(x), F.linear(x, layer.weight, layer.bias)), rows
        x3 = torch.randn(2, 5, in_f, generator=gen).to(torch.bfloat16)
        assert torch.equal(packed(x3), F.linear(x3, layer.weight, layer.bias))


@needs_packing
def test_the_pack_follows_in_place_weight_changes_and_gradients_fall_through():
    """In grad mode the layer is plain F.linear: its output and its gradients (input, weight, bias) are F.linear's."""
    layer = nn.Linear(64, 32).to(torch.bfloat16)
    packed = PackedLinear(layer)
    x = torch.randn(2, 64).to(torch.bfloat16)
    with torch.no_grad():
        before = packed(x)
        layer.weight.add_(0.5)  # what perturb/restore/update do
        after = packed(x)
    assert not torch.equal(before, after)
    assert torch.equal(after, F.linear(x, layer.weight, layer.bias))
    upstream = torch.randn(2, 32).to(torch.bfloat16)
    xr, wr, br = (t.detach().clone().requires_grad_(True) for t in (x, layer.weight, layer.bias))
    ref = F.linear(xr, wr, br)
    ref.backward(upstream)
    layer.weight.requires_grad_(True)
    x.requires_grad_(True)
    out = packed(x)
    out.backward(upstream)
    assert torch.equal(out, ref)
    assert torch.equal(x.grad, xr.grad) and torch.equal(layer.weight.grad, wr.grad)
    assert torch.equal(layer.bias.grad, br.grad)


def greedy_and_rewards(cfg, packed: bool):
    task = task_from_config(cfg.task)
    if not packed:
        cfg = replace(cfg, generation=replace(cfg.generation, packed_weights="off"))
    backend = build(cfg, task)
    assert any(isinstance(getattr(m, "forward", None), PackedLinear) for m in backend.model.modules()) == packed
    members = ask(cfg.seed, 0, cfg.es.population, cfg.es.antithetic)
    rewards = backend.fitness(members, cfg.es.sigma, task.train_rows, task, Timer())
    backend.apply_update([(m.seed, 0.01 * (k - 2)) for k, m in enumerate(members)])
    return rewards, backend.generate(task.eval_rows)


@needs_packing
def test_member_rewards_and_completions_equal_eager_generation():
    cfg = make_cfg(["model.dtype=bfloat16", "es.sigma=0.05", "task.max_new_tokens=12"])
    backend = build(cfg, task_from_config(cfg.task))
    assert isinstance(backend.model.lm_head.forward, PackedLinear)  # auto packs a bf16 CPU model
    packed = greedy_and_rewards(cfg, packed=True)
    eager = greedy_and_rewards(cfg, packed=False)
    assert packed == eager
    assert len(set(packed[0])) > 1  # the members really differ, so equality says something


def test_auto_leaves_fp32_models_alone_and_on_names_the_field():
    model, _ = build_tiny_model()
    assert not use_packed_weights("auto", model.float())
    assert not use_packed_weights("off", model)
    with pytest.raises(ValueError, match="generation.packed_weights=on"):
        use_packed_weights("on", model.float())
    with pytest.raises(ConfigError, match="generation.packed_weights"):
        make_cfg(["generation.packed_weights=always"])


@needs_packing
def test_install_is_idempotent():
    model, _ = build_tiny_model()
    model.to(torch.bfloat16)
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert install_packed_linears(model) == linears
    assert install_packed_linears(model) == 0
