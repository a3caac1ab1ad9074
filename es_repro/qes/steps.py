"""QES's integer arithmetic on codes (all sizes in code units: one quantization step = 1).

Perturbation of a layer by member (seed s, sign): e = randn(shape) from a generator seeded s_layer, x = sigma*e,
d = floor(x) + Bernoulli(x - floor(x)), computed as floor(x + u) with the uniforms u from a second generator
seeded s_layer + 12345, and the
member's step is sign * d, so d(-s) = -d(s) exactly. s_layer = s + layer index (es.noise=iid) or s
(es.noise=correlated, the released code). Where code + step leaves [0, 2^B - 1] the step is 0 (boundary gating).
Steps are dense int8 tensors shaped like the codes.

The update of one layer (error feedback):
    u = alpha * g + gamma * e_prev;  D = round(u) (half to even), 0 where code + D leaves the range;
    codes += D;  e = clamp(u - D, -1.5, 1.5), stored in float16.
"""
from __future__ import annotations

import torch

from es_repro.es.noise import tensor_seed

ROUNDING_STREAM_OFFSET = 12345  # the second (Bernoulli) stream's seed = noise seed + 12345
RESIDUAL_CLAMP = 1.5
RESIDUAL_DTYPE = torch.float16


def layer_seed(seed: int, layer: int, noise_mode: str) -> int:
    return tensor_seed(seed, layer, noise_mode)  # a quantized layer's codes draw as a float tensor's noise


def stochastic_round(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """floor(x + u) for uniforms u in [0, 1): floor(x) + 1 exactly when u >= 1 - frac(x), i.e. floor(x) plus a
    Bernoulli(x - floor(x)) draw, so E_u[result] = x (up to float32 rounding of x + u, ~1e-7)."""
    return torch.floor(x + u)


def stochastic_step(shape: torch.Size | tuple, seed: int, sigma: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """d = stochastic_round(sigma * randn(shape)) for noise seed ``seed`` as int8 (|d| <= 127: sigma is a few
    code units at most); the uniforms come from a second generator seeded seed + 12345."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    x = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).mul_(sigma)
    gen.manual_seed(seed + ROUNDING_STREAM_OFFSET)
    u = torch.rand(shape, generator=gen, device=device, dtype=torch.float32)
    return stochastic_round(x, u).clamp_(-127, 127).to(torch.int8)


def in_range(values: torch.Tensor, maxq: int) -> torch.Tensor:
    return (values >= 0) & (values <= maxq)


def gate(codes: torch.Tensor, step: torch.Tensor, maxq: int) -> torch.Tensor:
    """``step`` with 0 where codes + step would leave [0, maxq] (boundary gating; maxq = 2^B - 1, so a value is
    outside the range exactly when a bit above the B low bits is set, negative values included)."""
    outside = codes.to(torch.int16).add_(step).bitwise_and_(~maxq).ne_(0).bool()
    return step.masked_fill(outside, 0)


def pair_gradient(codes: torch.Tensor, pairs: list[tuple[torch.Tensor, float]], maxq: int, scale: float) -> torch.Tensor:
    """g = scale * sum_i c_i * d_i over a mirrored population, gating each member against the current codes.

    ``pairs``: per seed, the base step d and the pair coefficient c; members (+s, c) and (-s, -c) add
    c * gate(+d) + (-c) * gate(-d). scale is 1/sigma (es.qes.norm=code) or 1/(N sigma) (norm=paper)."""
    g = torch.zeros(codes.shape, dtype=torch.float32, device=codes.device)
    for d, c in pairs:
        both = gate(codes, d, maxq).to(torch.int16) - gate(codes, -d, maxq)
        g.add_(both.to(torch.float32), alpha=c)
    return g.mul_(scale)


def error_feedback(codes: torch.Tensor, alpha_g: torch.Tensor, e_prev: torch.Tensor | None, gamma: float,
                   maxq: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One update of a layer: (D as int16 over all elements, new residual in float16, number of elements whose
    nonzero round(u) was gated to 0). No code is changed here."""
    u = alpha_g if e_prev is None else alpha_g + gamma * e_prev.to(torch.float32)
    step = torch.round(u)  # round half to even
    ok = in_range(codes.to(torch.float32) + step, maxq)
    gated = int((~ok & (step != 0)).sum())
    step = torch.where(ok, step, torch.zeros_like(step))
    e = torch.clamp(u - step, -RESIDUAL_CLAMP, RESIDUAL_CLAMP).to(RESIDUAL_DTYPE)
    return step.to(torch.int16), e, gated
