"""python -m es_repro.plan <the overrides of a run> --gpu-gib 80: the run's memory per GPU, term by term (the
engine states its own terms), and whether it fits, without a GPU and without loading the model
(es_repro/engines/memory.py); then the engine's preflight on this machine, as a note (a plan for a GPU cluster may
be made where the engine is not installed). Exit 0: it fits (es.master_device=auto resolved as the run would
resolve it); 2: it does not, with the levers in one line."""
from __future__ import annotations

import argparse
import sys

from es_repro.config.load import compose_config
from es_repro.engines.base import engine_class, engine_name
from es_repro.engines.memory import GIB, model_shape, refusal, resolve_master_device
from es_repro.util.errors import UserError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m es_repro.plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m es_repro")
    ap.add_argument("--gpu-gib", type=float, required=True, help="memory of one GPU in GiB (H100/A100 80GB: 80)")
    ap.add_argument("--sharing", type=int, default=1, help="processes (engines) sharing one GPU")
    args = ap.parse_args(argv)
    try:
        cfg = compose_config(args.overrides)
    except UserError as err:
        print(f"{err.kind} error: {err}", file=sys.stderr)
        return 2
    shape = model_shape(cfg.model)
    if shape is None:
        print(f"no memory plan: the shape of model={cfg.model.name} is unknown here (a paper model, "
              f"model.source=random_shape, or a local model.path with config.json)", file=sys.stderr)
        return 2
    cfg, plan = resolve_master_device(cfg, shape, int(args.gpu_gib * GIB), args.sharing)
    print(f"model={cfg.model.name} ({shape.params / 1e9:.2f}B parameters), generation.backend="
          f"{cfg.generation.backend}, es.master_device={cfg.es.master_device}, {args.gpu_gib:g} GiB per GPU\n")
    print(plan.table())
    print(f"\npreflight on this machine: {preflight(cfg)}")
    if plan.fits:
        print(f"\nfits: {plan.total / GIB:.1f} of {args.gpu_gib:g} GiB per GPU")
        return 0
    print(f"\n{refusal(cfg, plan)}", file=sys.stderr)
    return 2


def preflight(cfg) -> str:
    """The engine's own preflight (Backend.preflight) here: "ok", or the problem it names."""
    try:
        engine_class(engine_name(cfg)).preflight(cfg)
    except UserError as err:
        return str(err)
    return "ok"


if __name__ == "__main__":
    sys.exit(main())
