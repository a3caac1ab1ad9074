"""QESBackend: the HF engine generating from a quantized model's de-quantized weights, with ES on the codes.

Selected by es.update=qes (es_repro/engines/base.py maps generation.backend=hf to "qes" then; generation.backend=qes
is the same). Members come in mirrored pairs and their coefficients are pair-difference z-scores
(es_repro/es/strategy.py MirroredPairs); apply_update receives one (seed, pair coefficient) per pair.
Checkpoint payload: the export is a GPTQ v1 checkpoint (config.json with quantization_config, model.safetensors
with qweight/qzeros/scales/g_idx: the codes), plus qes_state.json (residual bookkeeping: update count, replay
records) and, for es.qes.residual=full, qes_residual.safetensors (the fp16 residuals).
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from es_repro.engines.base import builds
from es_repro.engines.hf.backend import HFBackend, make_generator
from es_repro.qes import gptq
from es_repro.qes.model import export_gptq, load_for_qes
from es_repro.qes.residual import Residuals
from es_repro.qes.weights import QuantizedWeights

STATE_FILE, RESIDUAL_FILE = "qes_state.json", "qes_residual.safetensors"


class QESBackend(HFBackend):
    name = "qes"
    update_rules = ("qes",)  # it moves integer codes: no float rule
    reuse_pair_noise = False  # its integer perturbation keeps no noise between members (no keep_noise)

    @classmethod
    def memory_terms(cls, cfg, shape, gpu_bytes: int, sharing: int):
        """The HF engine's terms (de-quantized weights, generation, the base model), no fp32 master: the update
        moves the codes (uint8, one per weight), a perturbation keeps its int8 steps, es.qes.residual=full keeps an
        fp16 residual per code. Counted over every weight: an upper estimate (only block linears are quantized)."""
        terms = super().memory_terms(cfg, shape, gpu_bytes, sharing)
        terms.master = False
        P = shape.params
        terms.weights += [("codes (uint8)", P, "the quantized weights ES moves"),
                          ("perturbation steps (int8)", P, "kept for the integer-exact restore")]
        q = cfg.es.qes
        if q.gamma and q.residual == "full":
            terms.weights.append(("residuals (fp16)", 2 * P, "es.qes.residual=full"))
        return terms

    def __init__(self, *args, source: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.source = source or {}

    @property
    def qweights(self) -> QuantizedWeights:
        return self._es_weights()

    def describe(self) -> dict:
        """What ran, for run.json: the forward path and the quantized model's origin."""
        w = self.qweights
        return {**super().describe(), "quantization": self.source, "quantized_layers": len(w.names),
                "quantized_params": sum(q.codes.numel() for q in w.quantized),
                "forward_path": f"dequantized: each block linear runs torch's dense matmul on scale * (code - zero) "
                                f"in {self.source.get('dtype')}, re-de-quantized per layer, only for layers whose codes "
                                f"changed (no quantized kernel)",
                "residual": w.residuals.mode if w.gamma else "none (gamma=0)"}

    def update_stats(self) -> dict:
        return dict(self.qweights.last_stats)

    def save_state(self, path: Path) -> None:
        meta, tensors = self.qweights.residuals.state()
        (Path(path) / STATE_FILE).write_text(json.dumps(meta))
        if tensors:
            save_file(tensors, Path(path) / RESIDUAL_FILE)

    def load_state(self, path: Path) -> None:
        path = Path(path)
        quantized, _, _ = gptq.load_tensors(path)
        self.qweights.load_codes(quantized)
        tensors = load_file(path / RESIDUAL_FILE) if (path / RESIDUAL_FILE).is_file() else {}
        self.qweights.residuals.load(json.loads((path / STATE_FILE).read_text()), tensors)

    def export(self, path: Path) -> None:
        w = self.qweights
        export_gptq(path, self.model, self.tokenizer, dict(zip(w.names, w.quantized)))


@builds(QESBackend)
def build(cfg, task) -> QESBackend:
    q = cfg.es.qes
    model, tokenizer, quantized, source = load_for_qes(cfg.model, q.bits, q.group_size)
    residuals = Residuals(q.residual, q.window, q.init_residual, cfg.seed)
    weights = QuantizedWeights(model, quantized, sigma=cfg.es.sigma, alpha=cfg.es.alpha, population=cfg.es.population,
                               gamma=q.gamma, norm=q.norm, noise_mode=cfg.es.noise, residuals=residuals)
    reference = lambda: load_for_qes(cfg.model, q.bits, q.group_size)[0]  # noqa: E731  the quantized base model
    backend = QESBackend(model, tokenizer, make_generator(cfg, task, model, tokenizer), weights, reference=reference,
                         source=source)
    backend.keep_reference = cfg.eval.keep_base_model
    return backend
