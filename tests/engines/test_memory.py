"""The memory plan (es_repro/engines/memory.py, python -m es_repro.plan): its terms against their definitions, and
the verdicts over the paper's seven models x GPU sizes x engines x tensor parallelism."""
from __future__ import annotations

import pytest
import torch

from es_repro.config import compose_config
from es_repro.engines import memory
from es_repro.engines.memory import GIB, model_shape, plan_memory, resolve_master_device
from es_repro.models.shapes import SHAPES
from es_repro.plan import main as plan_main
from es_repro.util.errors import ConfigError

MODELS = ["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b"]


@pytest.mark.parametrize("name", MODELS)
def test_the_parameter_count_is_the_models_own(name):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = dict(SHAPES[name])
    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[spec.pop("arch")]
    with torch.device("meta"):  # the real module tree, no memory
        model = model_cls(config_cls(**spec))
    shape = memory.shape_of_config(SHAPES[name])
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert sorted(shape.tensor_sizes()) == sorted(p.numel() for p in model.parameters())  # tensor by tensor


def _cfg(model: str, backend: str = "hf", tp: int = 1, *extra: str):
    return compose_config(["experiment=table1", f"model={model}-instruct", f"generation.backend={backend}",
                           f"generation.vllm.tensor_parallel_size={tp}", *extra])


def test_the_terms_follow_their_definitions():
    cfg = _cfg("qwen2.5-7b", "hf", 1, "es.master_device=auto", "eval.keep_base_model=true")
    shape = model_shape(cfg.model)
    plan = plan_memory(cfg, shape, 80 * GIB)
    rows = {name: b for name, b, _ in plan.rows}
    P, width = shape.params, 256 + 1024
    assert rows["weights"] == P * 2 and rows["master (fp32)"] == P * 4 and rows["evaluation copies"] == P * 2
    # KV: batch x tokens x layers x (K and V) x kv heads x head dim x 2 bytes
    assert rows["KV cache"] == 200 * width * 28 * 2 * 4 * 128 * 2
    assert plan.total == sum(rows.values()) and plan.fits == (plan.total <= 80 * GIB)
    on_cpu = plan_memory(_cfg("qwen2.5-7b", "hf", 1, "es.master_device=cpu"), shape, 80 * GIB)
    assert dict((n, b) for n, b, _ in on_cpu.rows)["master (fp32)"] == 0 and on_cpu.host_bytes == P * 4



@pytest.mark.parametrize("master_device", ["auto", "cpu"])
def test_the_update_rules_own_tensors_are_counted_where_the_master_lives(master_device):
    """momentum keeps a velocity and es.decay a base copy, each one fp32 model-size tensor set beside the master."""
    for extra, tensors in [([], 0), (["es.update=momentum"], 1), (["es.decay=0.01"], 1),
                           (["es.update=momentum", "es.decay=0.01"], 2)]:
        cfg = _cfg("qwen2.5-7b", "hf", 1, f"es.master_device={master_device}", *extra)
        shape = model_shape(cfg.model)
        plan = plan_memory(cfg, shape, 80 * GIB)
        rows, host = dict((n, b) for n, b, _ in plan.rows), dict((n, b) for n, b, _ in plan.host)
        where = rows if master_device == "auto" else host
        assert where.get("update rule state", 0) == tensors * shape.params * 4
        assert "update rule state" not in (host if master_device == "auto" else rows)


def test_lowrank_sizes_its_cache_for_every_member_in_the_forward():
    """es.lowrank generates all of a generation's prompts once per member sharing the forward, in one call."""
    cfg = _cfg("qwen2.5-1.5b", "hf", 1, "es.lowrank=1", "es.members_per_forward=4", "es.prompts_per_generation=50")
    shape = model_shape(cfg.model)
    plan = plan_memory(cfg, shape, 80 * GIB)
    width = cfg.task.max_prompt_tokens + cfg.task.max_new_tokens
    assert dict((n, b) for n, b, _ in plan.rows)["KV cache"] == 4 * 50 * width * shape.kv_bytes_per_token(2)
    full = _cfg("qwen2.5-1.5b", "hf", 1, "es.lowrank=1", "es.members_per_forward=8")  # all 200 train prompts x 8
    refused = plan_memory(full, shape, 80 * GIB)
    assert not refused.fits and "es.members_per_forward" in memory.levers(full, refused)

@pytest.mark.parametrize("kl_samples", [1, 0])
def test_vllm_keeps_no_evaluation_model_on_the_gpu(kl_samples):
    """The engine scores KL itself: no HF copy on the GPU whatever eval.keep_base_model says; every worker keeps the
    base weights (model dtype) in host memory instead, and eval.keep_base_model is no lever."""
    for keep in ("true", "false"):
        cfg = _cfg("qwen2.5-7b", "vllm", 2, "es.master_device=cpu", f"eval.keep_base_model={keep}",
                   f"eval.kl_samples={kl_samples}")
        shape = model_shape(cfg.model)
        plan = plan_memory(cfg, shape, 80 * GIB)
        assert dict((n, b) for n, b, _ in plan.rows)["evaluation copies"] == 0
        host = {n: b for n, b, _ in plan.host}
        assert host.get("base weights for KL", 0) == shape.params * 2 * 2 * kl_samples  # bf16, 2 workers
        assert host["master (fp32)"] == shape.params * 4 * 2 and plan.host_bytes == sum(host.values())
        assert "eval.keep_base_model=false" not in memory.levers(cfg, plan)
        assert "(host memory) base weights for KL" in plan.table() or not kl_samples


# Verdicts at the paper's settings (experiment=table1): ok, ok with the master moved to pinned host memory by
# es.master_device=auto (cpu), or refused (NO). Columns: hf@40/80/141 GiB, vllm TP1@40/80/141, vllm TP2@40/80/141.
VERDICTS = {
    "qwen2.5-0.5b": "ok ok ok | ok ok ok | ok ok ok",
    "qwen2.5-1.5b": "ok ok ok | ok ok ok | ok ok ok",
    "qwen2.5-3b": "cpu ok ok | cpu ok ok | cpu ok ok",
    "qwen2.5-7b": "NO cpu ok | cpu cpu ok | cpu cpu ok",
    "llama-3.2-1b": "ok ok ok | ok ok ok | ok ok ok",
    "llama-3.2-3b": "NO ok ok | cpu ok ok | cpu ok ok",
    "llama-3.1-8b": "NO cpu ok | cpu cpu ok | cpu cpu ok",
}


def _verdict(cfg, gib: int) -> str:
    resolved, plan = resolve_master_device(cfg, model_shape(cfg.model), gib * GIB)
    return "NO" if not plan.fits else ("cpu" if resolved.es.master_device == "cpu" else "ok")


@pytest.mark.parametrize("name", MODELS)
def test_the_papers_models_fit_where_the_plan_says(name):
    cells = [_verdict(_cfg(name, backend, tp), gib) for backend, tp in (("hf", 1), ("vllm", 1), ("vllm", 2))
             for gib in (40, 80, 141)]
    assert " | ".join(" ".join(cells[i:i + 3]) for i in (0, 3, 6)) == VERDICTS[name]
    fits = [c != "NO" for c in cells]
    for start in (0, 3, 6):  # a bigger GPU never turns a fit into a refusal
        assert fits[start: start + 3] == sorted(fits[start: start + 3])


def test_the_papers_largest_models_fit_one_80gb_gpu_on_vllm_by_default(capsys):
    for model in ("qwen2.5-7b-instruct", "llama-3.1-8b-instruct"):
        assert plan_main(["experiment=table1", f"model={model}", "generation.backend=vllm", "--gpu-gib", "80"]) == 0
        assert "fits:" in capsys.readouterr().out
    assert plan_main(["experiment=table1", "model=llama-3.1-8b-instruct", "generation.backend=vllm", "--gpu-gib", "12"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit" in err[0] and "levers: es.master_device=cpu" in err[0]


def test_a_run_that_cannot_fit_is_refused_in_one_line_naming_the_levers():
    cfg = _cfg("llama-3.1-8b", "hf", 1, "eval.keep_base_model=true")
    with pytest.raises(ConfigError, match=r"does not fit: it needs .* GiB per GPU of 40 GiB .*levers: "
                                          r"es.master_device=cpu, eval.keep_base_model=false, generation.batch_size"):
        memory.check_fits(cfg, 40 * GIB)
    assert memory.check_fits(cfg, 80 * GIB).es.master_device == "cpu"  # auto moved the master off the GPU
    tiny = compose_config(["model=tiny-random", "task=synthetic"])
    assert memory.check_fits(tiny, 1) is tiny  # no shape known for the test model: no plan, no refusal


def test_processes_sharing_a_gpu_each_count_on_hf():
    cfg = _cfg("qwen2.5-0.5b")
    one, two = (plan_memory(cfg, model_shape(cfg.model), 80 * GIB, sharing) for sharing in (1, 2))
    assert two.total == 2 * one.total


def test_a_cuda_launch_plans_with_the_cards_size_before_anything_loads(monkeypatch):
    """cli.fit_on_the_gpu, as a launch on a 40 GiB / 80 GiB card runs it (CUDA simulated: only its size is read)."""
    from types import SimpleNamespace

    from es_repro import cli
    from es_repro.util import distributed

    card = SimpleNamespace(total_memory=40 * GIB)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: card)
    monkeypatch.setattr(distributed, "placement", lambda per_process: ([0], 0, 1, 1))
    cfg = _cfg("llama-3.1-8b")
    with pytest.raises(ConfigError, match="does not fit"):
        cli.fit_on_the_gpu(cfg, 1)
    card.total_memory = 80 * GIB
    assert cli.fit_on_the_gpu(cfg, 1).es.master_device == "cpu"


def test_the_noise_table_is_counted_on_every_gpu():
    cfg = compose_config(["experiment=table1", "model=qwen2.5-1.5b-instruct", "es.noise=table",
                          "es.noise_table_values=1048576"])
    plan = memory.plan_memory(cfg, memory.model_shape(cfg.model), 80 * GIB)
    assert dict((n, b) for n, b, _ in plan.rows)["noise table"] == 1048576 * 4
    assert "noise table" not in dict((n, b) for n, b, _ in memory.plan_memory(
        compose_config(["experiment=table1", "model=qwen2.5-1.5b-instruct", "es.noise=iid"]), memory.model_shape(cfg.model),
        80 * GIB).rows)


def test_the_population_engines_slots_and_wave_follow_their_definitions():
    """es.lowrank on vLLM: LoRA slots = max_loras x max_lora_rank x (rows + columns of q, k, v, o, gate, up, down)
    x 2 bytes (bf16); the wave's KV = one max-length sequence per slot; both must fit the engine's share."""
    from es_repro.engines.vllm.memory import lora_slot_bytes

    cfg = compose_config(["experiment=countdown_vllm_population", "generation.vllm.max_loras=100", "es.lowrank=4"])
    s = model_shape(cfg.model)  # Qwen2.5-1.5B: hidden 1536, intermediate 8960, 28 layers, 12 heads, 2 KV heads of 128
    per_layer = (1536 + 1536) + 2 * (256 + 1536) + (1536 + 1536) + 3 * (8960 + 1536)
    assert s.projection_rows_and_cols == 28 * per_layer
    assert lora_slot_bytes(cfg, s) == 100 * 8 * 28 * per_layer * 2  # rank 4 takes vLLM's slot rank 8
    assert lora_slot_bytes(cfg, s, rank=4) == 100 * 4 * 28 * per_layer * 2  # the registered adapters (host)
    plan = plan_memory(cfg, s, 80 * GIB)
    notes = {name: note for name, _, note in plan.rows}
    wave_kv = 100 * 1280 * s.kv_bytes_per_token(2)
    assert notes["KV cache of a wave (in the engine's share)"] == f"{wave_kv / GIB:.2f} GiB: 100 sequences x 1280 tokens"
    assert plan.fits
    # the share is 0.7 x 80 GiB: weights + slots + the wave's KV beyond it is refused, whatever else fits
    too_many = compose_config(["experiment=countdown_vllm_population", "model=qwen2.5-7b-instruct",
                               "generation.vllm.max_loras=1024"])
    tight = plan_memory(too_many, model_shape(too_many.model), 80 * GIB)
    assert not tight.fits and "1024 LoRA slots and the KV cache of 1024 1280-token sequences" in tight.problems[0]


def test_the_population_preset_plans_for_1_5b_and_7b_and_an_impossible_one_names_max_loras(capsys):
    for model in ("qwen2.5-1.5b-instruct", "qwen2.5-7b-instruct"):
        assert plan_main(["experiment=countdown_vllm_population", f"model={model}", "--gpu-gib", "80"]) == 0
        out = capsys.readouterr().out
        assert "LoRA slots" in out and "generation.vllm.max_loras 64" in out and "fits:" in out
    assert plan_main(["experiment=countdown_vllm_population", "model=qwen2.5-7b-instruct",
                      "generation.vllm.max_loras=1024", "--gpu-gib", "80"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit" in err[0] and "generation.vllm.max_loras" in err[0].split("levers:")[1]
