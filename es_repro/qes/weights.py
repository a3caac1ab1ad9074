"""A quantized model's codes as ES sees them: perturb, restore (integer-exact), and the QES update.

Only the codes of the block linears move (es_repro/qes/model.py); scales, zeros, g_idx and every other tensor are
frozen. The model's linear weights always hold the de-quantization of the current codes in the working dtype;
a layer is re-de-quantized only when one of its codes changed. Steps are dense int8 tensors per layer (the
noise has to be drawn for every element anyway); a perturbation keeps its gated steps (1 byte per code) so the
restore is integer-exact.
"""
from __future__ import annotations

from typing import Iterable

import torch

from es_repro.qes import NORMS
from es_repro.qes.quant import QuantizedTensor
from es_repro.qes.residual import Residuals
from es_repro.qes.steps import error_feedback, gate, layer_seed, pair_gradient, stochastic_step


class QuantizedWeights:
    def __init__(self, model: torch.nn.Module, quantized: dict[str, QuantizedTensor], *, sigma: float, alpha: float,
                 population: int, gamma: float = 0.9, norm: str = "code", noise_mode: str = "iid",
                 residuals: Residuals | None = None):
        if norm not in NORMS:
            raise ValueError(f"es.qes.norm={norm!r} is not one of {NORMS}")
        modules = dict(model.named_modules())
        self.names = list(quantized)
        self.quantized = [quantized[n] for n in self.names]
        self.weights = [modules[n].weight for n in self.names]
        for w in self.weights:
            w.requires_grad_(False)
        self.sigma, self.alpha, self.population, self.gamma, self.norm = sigma, alpha, population, gamma, norm
        self.noise_mode = noise_mode
        self.residuals = residuals if residuals is not None else Residuals("full", 0, "zero", 0)
        self._perturbation: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.last_stats: dict[str, float] = {}

    # codes <-> working weights ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _move(self, i: int, step: torch.Tensor) -> bool:
        """codes += step (already gated); re-de-quantize the layer if any code changed. Returns whether one did."""
        if not bool(step.any()):
            return False
        q, w = self.quantized[i], self.weights[i]
        q.codes.copy_((q.codes.to(torch.int16) + step).to(torch.uint8))
        w.copy_(q.dequantize(w.dtype))
        return True

    @torch.no_grad()
    def refresh_all(self) -> None:
        """Re-de-quantize every layer from its codes (after loading codes from a checkpoint)."""
        for q, w in zip(self.quantized, self.weights):
            w.copy_(q.dequantize(w.dtype))

    # ES: perturb / restore -------------------------------------------------------------------------------------
    @torch.no_grad()
    def perturb(self, seed: int, scale: float) -> None:
        """codes += gate(sign(scale) * d(seed)) with sigma = |scale|; the gated steps are kept for restore."""
        if self._perturbation is not None:
            raise RuntimeError("perturb called twice without restore")
        sign, sigma = (1 if scale >= 0 else -1), abs(scale)
        kept = []
        for i, q in enumerate(self.quantized):
            d = stochastic_step(q.codes.shape, layer_seed(seed, i, self.noise_mode), sigma, q.codes.device)
            step = gate(q.codes, d if sign > 0 else d.neg_(), q.maxq)
            kept.append(step if self._move(i, step) else None)
        self._perturbation = kept

    @torch.no_grad()
    def restore(self) -> None:
        """codes -= the kept steps: integer-exact, boundary mask included."""
        if self._perturbation is None:
            return
        for i, step in enumerate(self._perturbation):
            if step is not None:
                self._move(i, step.neg_())
        self._perturbation = None

    # the QES update --------------------------------------------------------------------------------------------
    def _scale(self, sigma: float) -> float:
        return 1.0 / sigma if self.norm == "code" else 1.0 / (self.population * sigma)

    def _alpha_g(self, i: int, seed_coeffs: list[tuple[int, float]], sigma: float) -> torch.Tensor:
        q = self.quantized[i]
        pairs = [(stochastic_step(q.codes.shape, layer_seed(s, i, self.noise_mode), sigma, q.codes.device), c)
                 for s, c in seed_coeffs]
        return pair_gradient(q.codes, pairs, q.maxq, self._scale(sigma)).mul_(self.alpha)

    def previous_residual(self, i: int) -> torch.Tensor | None:
        """e_{t-1} of layer i: stored (full) or rebuilt from the kept records (replay)."""
        if self.gamma == 0:
            return None  # gamma = 0: rounding only, no error feedback
        q = self.quantized[i]
        e = self.residuals.start(i, q.codes.shape)  # e0 and loaded residuals come from the CPU
        e = e.to(q.codes.device) if e is not None else None
        if self.residuals.mode == "replay":
            for seed_coeffs, sigma in self.residuals.records:
                _, e, _ = error_feedback(q.codes, self._alpha_g(i, seed_coeffs, sigma), e, self.gamma, q.maxq)
        return e

    @torch.no_grad()
    def apply_update(self, seed_coeffs: Iterable[tuple[int, float]]) -> None:
        """One QES generation: ``seed_coeffs`` holds (seed, pair coefficient c) per mirrored pair."""
        seed_coeffs = [(int(s), float(c)) for s, c in seed_coeffs]
        changed = gated = total = 0
        for i, q in enumerate(self.quantized):
            e_prev = self.previous_residual(i)
            step, e, n_gated = error_feedback(q.codes, self._alpha_g(i, seed_coeffs, self.sigma), e_prev, self.gamma, q.maxq)
            changed += int(step.count_nonzero())
            self._move(i, step)
            if self.gamma != 0:
                self.residuals.store(i, e)
            gated += n_gated
            total += q.codes.numel()
        self.residuals.record(seed_coeffs, self.sigma)
        self.last_stats = {"codes_changed_frac": changed / total, "codes_gated": gated}

    # checkpoints -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def load_codes(self, quantized: dict[str, QuantizedTensor]) -> None:
        """Set the codes from saved tensors (scales, zeros and g_idx must match the frozen ones)."""
        if set(quantized) != set(self.names):
            raise ValueError(f"checkpoint layers differ from the model's: {sorted(set(quantized) ^ set(self.names))[:5]}")
        for name, q in zip(self.names, self.quantized):
            saved = quantized[name]
            for field in ("scales", "zeros", "g_idx"):
                if not torch.equal(getattr(saved, field).to(q.codes.device), getattr(q, field)):
                    raise ValueError(f"checkpoint {name}.{field} differs from the run's (frozen) quantization")
            q.codes.copy_(saved.codes)
        self.refresh_all()
