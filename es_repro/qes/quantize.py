"""Quantize a model offline with the built-in RTN group quantizer and write a GPTQ v1 checkpoint directory
(usable as model=hf model.path=OUT es.update=qes es.qes.bits=B, or by any GPTQ v1 loader).

    python -m es_repro.qes.quantize model=smollm2-135m --bits 4 --out ~/.cache/es-repro/smollm2-135m-rtn-int4-g128
Model overrides are Hydra's (model=..., model.path=...); the model is read in float32.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    from es_repro.config.load import compose_config
    from es_repro.models.loading import load_model
    from es_repro.qes.model import export_gptq, quantize_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for the model group, e.g. model=smollm2-135m")
    ap.add_argument("--bits", type=int, choices=(4, 8), required=True)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    model_cfg = compose_config(args.overrides).model
    model, tokenizer = load_model(replace(model_cfg, dtype="float32", device="cpu"))
    with torch.no_grad():
        quantized = quantize_model(model, args.bits, args.group_size)
    export_gptq(args.out, model, tokenizer, quantized)
    n = sum(q.codes.numel() for q in quantized.values())
    print(f"quantized {len(quantized)} block linears ({n} weights) to INT{args.bits}, group {args.group_size} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
