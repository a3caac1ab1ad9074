"""The noise fingerprint: one seed must give one noise wherever a member is scored, the update applied or a run
resumed. torch's CUDA randn sizes its launch from the device's SM count, so the same seed draws different noise on
an A100, an H100-SXM, an H100-PCIe or an L40S (and CPU noise differs from CUDA noise). A job spread over mixed GPU
models would score members with one noise and move the weights along another; a resume on another GPU model would
change the trajectory without a word.

So every process draws a fixed reference noise at start, in the run's noise settings on the model's device, and
hashes it. The processes compare their hashes (a mismatch refuses the run, naming each rank's device), run.json
records the hash with the device facts, and a resume whose hash differs is refused unless
es.allow_noise_change=true. With es.noise=table the reference noise is read from the shared table, so the hash is
the same on every device: a table run resumes and replays on another GPU model or on the CPU without the flag, and
run.json also records the table's settings and SHA-256 (compared as well).
"""
from __future__ import annotations

import hashlib
import platform
import socket

import torch

from es_repro.es.noise import noise_mode, tensor_noise
from es_repro.util.errors import RunStateError
from es_repro.util.machine import cpuinfo_field

# 2^22 values: past the size where CUDA's randn launch is capped by the SM count on current GPUs (~1M), so the
# fingerprint sees what a model's large tensors see. About 16 MB, drawn once per launch.
REFERENCE_SHAPE = (2048, 2048)
REFERENCE_SEED = 20250924  # any fixed seed; noise of tensor index 0


def noise_fingerprint(device: torch.device, dtype: torch.dtype, mode, noise_dtype: str) -> str:
    """16 hex digits of the SHA-256 of the reference noise drawn as the run draws a parameter's noise."""
    like = torch.empty((), dtype=dtype, device=device).expand(*REFERENCE_SHAPE)  # shape, dtype and device only
    eps = tensor_noise(like, 0, REFERENCE_SEED, mode, noise_dtype)
    return hashlib.sha256(eps.float().cpu().numpy().tobytes()).hexdigest()[:16]


def device_facts(device: torch.device) -> dict:
    """What decides the noise of ``device``: its model and, on CUDA, its SM count and the CUDA build."""
    facts = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(name=props.name, sm_count=props.multi_processor_count, cuda=torch.version.cuda)
    else:
        facts.update(name=_cpu_model())
    return facts


def _cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def this_process(cfg) -> dict:
    """This process's noise record: the fingerprint in the run's noise settings on its model device, with the
    device facts and the host."""
    from es_repro.models.loading import resolve_device, resolve_dtype  # local: transformers is heavy

    device = resolve_device(cfg.model.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # the GPU this process was bound to
    dtype = resolve_dtype(cfg.model.dtype, device)
    mode = noise_mode(cfg.es)
    table = {"table": mode.identity()} if mode.device_independent else {}  # es.noise=table: its settings and hash
    return {"fingerprint": noise_fingerprint(device, dtype, mode, cfg.es.noise_dtype), **table,
            "host": socket.gethostname(), **device_facts(device)}


def agreed_noise(cfg, recorded: dict | None, per_rank: list[dict]) -> dict:
    """The run's noise record for run.json, after the checks: every rank draws one noise, and it is the noise the
    run was trained with (``recorded``: run.json's, None for a new run)."""
    check_ranks_agree(per_rank)
    check_resume(recorded, per_rank[0], cfg.es.allow_noise_change)
    return {**per_rank[0], **({"ranks": per_rank} if len(per_rank) > 1 else {})}


def check_ranks_agree(per_rank: list[dict]) -> None:
    """Every process must draw the same noise; per_rank[r] = {"fingerprint", "host", facts...} of rank r."""
    if len({r["fingerprint"] for r in per_rank}) <= 1:
        return
    lines = "; ".join(f"rank {i} on {r.get('host', '?')}: {r.get('name', '?')} (SMs {r.get('sm_count', '-')}, "
                      f"CUDA {r.get('cuda', '-')}) -> {r['fingerprint']}" for i, r in enumerate(per_rank))
    raise RunStateError(f"the processes of this run draw different noise from the same seed ({lines}); members "
                        f"would be scored with one noise and the update applied with another. Run every process on "
                        f"one GPU model (SLURM: --constraint or --gpus=<type>:N)")


def check_resume(recorded: dict | None, current: dict, allow_change: bool, *, action: str = "resume",
                 allow_with: str = "es.allow_noise_change=true") -> None:
    """A run resumed (or replayed: action="replay", allowed with --allow-noise-change) where its noise differs from
    the one it was trained with is refused, in one line naming both devices."""
    if not recorded or (recorded.get("fingerprint") == current["fingerprint"]
                        and recorded.get("table") == current.get("table")):
        return
    if allow_change:
        print(f"[es-repro] WARNING: {action.removesuffix('e')}ing with different noise ({recorded.get('name')} "
              f"-> {current.get('name')}); {allow_with}")
        return
    if recorded.get("fingerprint") == current["fingerprint"]:  # the same noise, another table record
        raise RunStateError(
            f"this run was trained with the noise table {recorded.get('table')}, but here it is "
            f"{current.get('table')}: replay and the remaining generations would follow another trajectory. "
            f"{action.capitalize()} with the run's noise table settings, or accept the change with {allow_with}")
    raise RunStateError(
        f"this run was trained with noise fingerprint {recorded.get('fingerprint')} on {recorded.get('name')} "
        f"(SMs {recorded.get('sm_count', '-')}, torch {recorded.get('torch')}), but here the same seeds draw "
        f"{current['fingerprint']} on {current.get('name')} (SMs {current.get('sm_count', '-')}, torch "
        f"{current.get('torch')}): replay and the remaining generations would follow another trajectory. "
        f"{action.capitalize()} on the original GPU model, or accept the change with {allow_with}")


def main() -> None:
    """python -m es_repro.es.fingerprint: this machine's device facts and the fingerprints of the noise settings a
    run can have (scripts/gpu_check.sh records them; compare them between GPU models)."""
    import json

    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    prints = {f"{dtype}/{noise_dtype}": noise_fingerprint(device, getattr(torch, dtype), "iid", noise_dtype)
              for dtype in ("bfloat16", "float32") for noise_dtype in ("param", "float32")}
    print(json.dumps({**device_facts(device), "fingerprints": prints}, indent=1))


if __name__ == "__main__":
    main()
