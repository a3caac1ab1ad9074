"""generation.backend=vllm, its logic against a fake engine (tests/fakes/fake_vllm.py: the real worker extension over a
plain HF model), in the main environment without vLLM. The real engine is tests/engines/vllm/test_vllm_engine.py.

- without vLLM installed, choosing it is a one-line config error naming the install command; bad settings name the
  field and the allowed values;
- the weights written into the engine equal the HF backend's perturbed weights bit for bit (bf16 and fp32, both
  noise dtypes), restore is exact, and an update lands where the HF backend's does;
- weight_write: auto is reload off CUDA and direct on CUDA when the start-up self-check passes; a direct write that
  differs from reload (or fails) falls back with a warning naming the tensor, and an explicit direct is refused;
- KL log-probabilities come from the engine, under cast(master) and under the base weights written in for the call;
  they equal the HF backend's;
- the prefix cache is reset after every weight change, and a refused reset raises;
- what is asked of the engine: greedy = temperature 0, the task's stop strings kept, the resolved repetition penalty;
  samples = seeded per request, no penalty;
- a whole ES run (train, eval with KL, checkpoints) logs exactly the HF backend's seeds, rewards and coefficients and
  ends on its weights; a checkpoint of either engine resumes on the other.
"""
from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from es_repro.config import ConfigError
from es_repro.engines.base import build_backend
from es_repro.engines.hf import backend as hf_backend
from es_repro.es.strategy import Member
from es_repro.run.checkpoint import latest_checkpoint
from es_repro.run.log import RunLog
from es_repro.tasks import task_from_config
from es_repro.train import run_es
from es_repro.util.timing import Timer
from tests.fakes import fake_vllm
from tests.helpers import make_cfg

VLLM = ["generation.backend=vllm"]
WRITES = {"es_init", "es_perturb", "es_restore", "es_update", "es_load_state", "es_probe_write", "es_write_base"}


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("ES_REPRO_CACHE", str(tmp_path / "cache"))  # the tiny model's saved directory
    fake_vllm.install(monkeypatch)
    return fake_vllm


def _task(cfg):
    return task_from_config(cfg.task)


def _pair(overrides):
    """(HF backend, vLLM backend over the fake engine) of one config."""
    cfg = make_cfg(VLLM + overrides)
    task = _task(cfg)
    return hf_backend.build(cfg, task), build_backend(cfg, task), cfg, task


def _same_weights(hf, engine_model) -> None:
    engine = dict(engine_model.named_parameters(remove_duplicate=True))
    for name, p in hf.model.named_parameters(remove_duplicate=True):
        assert torch.equal(p, engine[name]), name


def test_without_vllm_the_choice_fails_in_one_line_with_the_install_command(tmp_path):
    """The config validates (a cluster's config plans on a laptop); the launch refuses before anything loads."""
    from es_repro.cli import launch
    from es_repro.config import compose
    from tests.helpers import TINY

    make_cfg(VLLM)
    with pytest.raises(ConfigError) as err:
        launch(compose(TINY + VLLM), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written
    message = str(err.value)
    assert "\n" not in message and "generation.backend=vllm" in message
    assert "pip install -e '.[vllm]'" in message and "scripts/setup_vllm_cpu.sh" in message


@pytest.mark.parametrize("override, message", [
    ("generation.vllm.weight_write=inplace", "generation.vllm.weight_write='inplace' is not allowed; choose one of: auto, reload, direct"),
    ("generation.vllm.gpu_memory_utilization=1.5", r"generation.vllm.gpu_memory_utilization=1.5 is not allowed; it must be in \(0, 1\]"),
    ("generation.vllm.tensor_parallel_size=0", "generation.vllm.tensor_parallel_size=0 is not allowed; it must be > 0"),
    ("es.lowrank=2", "es.lowrank_targets=all perturbs the embeddings and the LM head, which the vLLM population "
                     "engine does not serve as LoRA adapters; use es.lowrank_targets=projections"),
    ("es.lowrank=2 es.lowrank_targets=projections generation.vllm.max_lora_rank=4",
     "generation.vllm.max_lora_rank=4 is not allowed; vLLM's LoRA ranks are 1, 8, 16, 32, 64, 128, 256, 320, 512"),
    ("es.lowrank=16 es.lowrank_targets=projections generation.vllm.max_lora_rank=8",
     "generation.vllm.max_lora_rank=8 is below es.lowrank=16"),
    ("es.lowrank=600 es.lowrank_targets=projections", r"es.lowrank=600 is above vLLM's largest LoRA rank \(512\)"),
    ("es.lowrank=1 es.lowrank_targets=projections generation.vllm.max_loras=0",
     "generation.vllm.max_loras=0 is not allowed; it must be > 0"),
    ("es.update=qes", "es.update=qes does not run on generation.backend=vllm; that engine runs es.update: sgd, momentum"),
])
def test_bad_vllm_settings_name_the_field_and_the_choices(fake, override, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(VLLM + override.split())


@pytest.mark.parametrize("dtype, noise_dtype, master", [("bfloat16", "param", "auto"), ("bfloat16", "float32", "auto"),
                                                       ("float32", "param", "auto"), ("bfloat16", "param", "cpu")])
@pytest.mark.parametrize("write", ["reload", "direct"])
def test_engine_weights_equal_the_hf_backend_bit_for_bit(fake, dtype, noise_dtype, master, write):
    hf, vb, cfg, _ = _pair([f"model.dtype={dtype}", f"es.noise_dtype={noise_dtype}", "es.update=momentum",
                            f"generation.vllm.weight_write={write}", f"es.master_device={master}"])
    engine = fake.LLM.last
    worker_master = engine.worker._es_master
    assert all(m.dtype == torch.float32 and m.device.type == "cpu" for m in worker_master.master)
    assert worker_master.device == torch.device("cpu")  # the noise is drawn where the engine's weights are
    if master == "cpu" and torch.cuda.is_available():
        assert all(m.is_pinned() for m in worker_master.master)
    _same_weights(hf, engine.model)  # base: cast(master) on both
    base = {n: p.clone() for n, p in engine.model.named_parameters()}
    for seed, scale in ((3, 0.02), (11, -0.05)):
        hf.weights.perturb(seed, scale)
        vb._write("es_perturb", seed, scale)
        _same_weights(hf, engine.model)
        assert any(not torch.equal(p, base[n]) for n, p in engine.model.named_parameters())
        hf.weights.restore()
        vb._write("es_restore")
        _same_weights(hf, engine.model)
        assert all(torch.equal(p, base[n]) for n, p in engine.model.named_parameters())
    for update in ([(5, 0.3), (9, -0.7)], [(2, 0.1)]):  # momentum: the rule's state moves the second step
        hf.apply_update(update)
        vb.apply_update(update)
        _same_weights(hf, engine.model)
    hf.weights.perturb(7, 0.01)
    vb._write("es_perturb", 7, 0.01)
    _same_weights(hf, engine.model)
    runner = engine.worker.model_runner
    assert all(names == [n for n, _ in hf.model.named_parameters(remove_duplicate=True)] for names in runner.loads)
    assert runner.paths[-1] == write == vb.describe()["weight_write"]  # direct: chosen after its self-check passed


def test_every_weight_change_is_followed_by_a_prefix_cache_reset_and_a_refusal_raises(fake):
    from es_repro.engines.vllm.backend import PrefixCacheResetFailed

    cfg = make_cfg(VLLM)
    task = _task(cfg)
    vb = build_backend(cfg, task)
    members = [Member(1, 1), Member(1, -1), Member(4, 1)]
    vb.fitness(members, 0.05, task.train_rows, task, Timer())
    vb.apply_update([(1, 0.5)])
    events = fake.LLM.last.events
    writes = [i for i, e in enumerate(events) if e in WRITES]
    assert [events[i] for i in writes] == ["es_init", "es_perturb", "es_perturb", "es_perturb", "es_restore", "es_update"]
    assert all(events[i + 1] == "reset" for i in writes)
    assert events.count("generate") == 3 and events.count("reset") == len(writes)

    fake.LLM.reset_result = False
    with pytest.raises(PrefixCacheResetFailed, match="did not reset its prefix cache"):
        vb.fitness(members, 0.05, task.train_rows, task, Timer())


@pytest.mark.parametrize("penalty", ["null", "1.3"])
def test_greedy_and_sampled_requests_match_the_hf_generator(fake, penalty):
    hf, vb, cfg, task = _pair(["task=countdown", "task.train_size=3", "task.eval_size=3", "task.max_new_tokens=12",
                               f"generation.repetition_penalty={penalty}"])
    rows = task.train_rows
    vb.generate(rows)
    engine = fake.LLM.last
    greedy = engine.params[-1]
    assert greedy.temperature == 0.0 and greedy.max_tokens == 12
    assert greedy.stop == ["</answer>"] and greedy.include_stop_str_in_output
    assert greedy.repetition_penalty == hf.generator.repetition_penalty == (1.3 if penalty == "1.3" else 1.0)
    # the same prompt token ids as the HF path: render_prompt, tokenized without special tokens
    hf_ids = [hf.tokenizer(t, add_special_tokens=False)["input_ids"] for t in hf.prompts(rows)]
    assert vb.prompt_ids(rows) == hf_ids

    pairs = vb.sample_ids(rows + rows[:1], temperature=0.7, seed=5, max_new_tokens=6)
    sampled = engine.params[-4:]
    assert all(p.temperature == 0.7 and p.repetition_penalty == 1.0 and p.max_tokens == 6 for p in sampled)
    assert len({p.seed for p in sampled}) == 4  # a repeated row still gets its own stream
    assert vb.sample_ids(rows + rows[:1], temperature=0.7, seed=5, max_new_tokens=6) == pairs  # seeded
    assert [p for p, _ in pairs] == hf_ids + hf_ids[:1]


def test_the_model_generation_config_penalty_is_used_when_unset(fake, tmp_path):
    from es_repro.models.tiny import build_tiny_model

    model, tokenizer = build_tiny_model()
    model.generation_config.repetition_penalty = 1.05
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    hf, vb, _, _ = _pair(["model.source=hf", f"model.path={tmp_path / 'm'}"])
    assert vb.repetition_penalty == hf.generator.repetition_penalty == 1.05
    assert vb.describe()["repetition_penalty"] == 1.05


def test_logprobs_are_scored_by_the_engine_under_the_master_and_the_base(fake):
    """prompt + completion sent back as a prompt (prompt_logprobs=0, one token generated and dropped): equal to HF's
    token_logprobs (one forward per sample, as the fake engine scores) under the HF backend's current weights and
    under its base model, which the worker writes in from its host copy and takes out again; no HF model and no
    model file on the way."""
    from es_repro.engines.hf.generation import token_logprobs
    from es_repro.engines.vllm.backend import model_directory

    # both from the saved directory (the HF backend's in-memory tiny model rounds its rotary buffers to bf16)
    saved = model_directory(make_cfg().model)
    hf, vb, _, task = _pair(["model.dtype=bfloat16", "model.source=hf", f"model.path={saved}"])
    engine = fake.LLM.last
    pairs = vb.sample_ids(task.eval_rows, temperature=1.0, seed=0)
    for update in ([(3, 2.0)], [(8, -1.0)]):
        hf.apply_update(update)
        vb.apply_update(update)
        for reference in (False, True):
            start = len(engine.events)
            got = vb.token_logprobs(pairs, reference=reference)
            model = hf.reference_model() if reference else hf.model
            assert len(got) == len(pairs)
            assert all(torch.equal(a, token_logprobs(model, p, c)) for a, (p, c) in zip(got, pairs))
            assert engine.events[start:] == (["es_write_base", "reset", "generate", "es_restore", "reset"] if reference
                                             else ["generate"])
            _same_weights(hf, engine.model)  # cast(master) again after the base model's turn
    scoring = engine.params[-1]
    assert (scoring.prompt_logprobs, scoring.max_tokens, scoring.temperature, scoring.detokenize) == (0, 1, 0.0, False)
    assert not all(torch.equal(a, b) for a, b in zip(vb.token_logprobs(pairs), vb.token_logprobs(pairs, reference=True)))
    assert vb._reference is None and "es_save_model" not in engine.events
    assert vb.token_logprobs([]) == []


def test_the_base_weights_are_kept_only_when_kl_is_measured(fake):
    cfg = make_cfg(VLLM + ["eval.kl_samples=0"])
    build_backend(cfg, _task(cfg))
    assert "es_keep_base" not in fake.LLM.last.events and not hasattr(fake.LLM.last.worker, "_es_base")
    with pytest.raises(RuntimeError, match="kept no base weights"):
        fake.LLM.last.worker.es_write_base()


def test_weight_write_auto_is_reload_off_cuda_and_direct_on_cuda_after_its_self_check(fake, capsys):
    hf, vb, _, _ = _pair([])
    engine = fake.LLM.last
    runner = engine.worker.model_runner
    assert vb.describe()["weight_write"] == "reload" and "es_probe_write" not in engine.events  # auto on cpu
    assert "vLLM weight writes: reload (auto on cpu)" in capsys.readouterr().out
    start = len(engine.events)
    assert vb.select_weight_write("auto", "cuda") == "direct" == vb.describe()["weight_write"]
    assert [e for e in engine.events[start:] if e != "reset"] == ["es_probe_write", "es_restore", "es_probe_write",
                                                                  "es_restore", "es_set_write"]
    assert runner.paths[-4:] == ["reload", "reload", "direct", "reload"]  # probe, restore, probe, restore
    assert "vLLM weight writes: direct (start-up self-check passed" in capsys.readouterr().out
    _same_weights(hf, engine.model)  # the probe member is gone
    vb._write("es_perturb", 4, 0.01)
    hf.weights.perturb(4, 0.01)
    assert runner.paths[-1] == "direct"
    _same_weights(hf, engine.model)


@pytest.mark.parametrize("fault", ["wrong value", "raises"])
def test_a_direct_write_that_differs_from_reload_falls_back_naming_the_tensor(fake, monkeypatch, capsys, fault):
    """The fake's direct write made wrong on one tensor (an expectation the reload path does not meet), or failing
    there as vLLM-CPU's does: auto falls back to reload in one warning line; an explicit direct is refused."""
    hf, vb, _, _ = _pair([])
    engine = fake.LLM.last
    target = "model.layers.1.mlp.up_proj.weight"

    def faulty(self, weights):
        def changed():
            for name, tensor in weights:
                if name == target and fault == "raises":
                    raise AttributeError("'Parameter' object has no attribute 'weight_loader'")
                yield name, (tensor + 1 if name == target else tensor)
        self.runner._copy(changed(), "direct")

    monkeypatch.setattr(fake.FakeEngineModel, "load_weights", faulty)
    capsys.readouterr()
    assert vb.select_weight_write("auto", "cuda") == "reload" == vb.describe()["weight_write"]
    warning = [line for line in capsys.readouterr().out.splitlines() if "WARNING" in line]
    assert len(warning) == 1
    why = f"writing {target} failed: AttributeError" if fault == "raises" else f"{target} differs from vLLM's own load"
    assert why in warning[0]
    _same_weights(hf, engine.model)
    vb._write("es_perturb", 4, 0.01)
    hf.weights.perturb(4, 0.01)
    assert engine.worker.model_runner.paths[-1] == "reload"
    _same_weights(hf, engine.model)
    with pytest.raises(RuntimeError, match=f"weight_write=direct failed its start-up self-check: .*{target}"):
        vb.select_weight_write("direct", "cuda")


def test_the_checksums_see_every_byte_and_position_and_do_not_depend_on_chunking(monkeypatch):
    from es_repro.engines.vllm import worker

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.int8):
        t = (torch.randn(37, 11, generator=g) * 50).to(dtype)
        base = worker.tensor_checksum(t)
        assert worker.tensor_checksum(t.clone()) == base and base[0] == t.numel() * t.element_size()
        flipped = t.clone()
        flipped.view(-1)[200] += 1
        swapped = t.clone().view(-1)
        swapped[[3, 300]] = swapped[[300, 3]]
        assert worker.tensor_checksum(flipped) != base and worker.tensor_checksum(swapped) != base
        monkeypatch.setattr(worker, "CHECKSUM_CHUNK", 7)  # many chunks, one ending mid-tensor
        assert worker.tensor_checksum(t) == base
        monkeypatch.setattr(worker, "CHECKSUM_CHUNK", 1 << 22)
    assert worker.tensor_checksum(torch.empty(0)) == [0, 0, 0]  # vLLM-CPU's emptied linear weights


def test_reload_warnings_are_dropped_only_for_layers_without_checkpoint_weights():
    """vLLM's reload warns "<layer>: Failed to load weights" at every write for the rotary cache and a tied head
    (two lines per member on SmolLM2); those are expected, any other layer's warning still shows."""
    import logging

    from es_repro.engines.vllm import worker

    class Rotary(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("cos_sin_cache", torch.zeros(4), persistent=False)

    class Head(torch.nn.Module):
        def __init__(self, weight):
            super().__init__()
            self.weight = weight

    class Model(torch.nn.Module):
        def __init__(self, tied: bool):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.embed_tokens = torch.nn.Embedding(8, 4)
            self.model.rotary = Rotary()
            self.model.norm = torch.nn.LayerNorm(4)
            self.lm_head = Head(self.model.embed_tokens.weight if tied else torch.nn.Parameter(torch.zeros(8, 4)))

    assert worker.unloaded_by_design(Model(tied=True)) == {"Rotary", "Head"}
    assert worker.unloaded_by_design(Model(tied=False)) == {"Rotary"}
    logger = logging.getLogger(worker.RELOAD_LOGGER)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        worker.install_reload_filter(Model(tied=True))
        worker.install_reload_filter(Model(tied=True))  # once per process, whatever the calls
        assert sum(isinstance(f, worker.ExpectedNotLoaded) for f in logger.filters) == 1
        for layer in ("Rotary", "Head", "LayerNorm"):
            logger.warning(worker.NOT_LOADED, layer)
        logger.warning("%s: Delayed processing", "Head")
    finally:
        logger.removeHandler(handler)
        for f in [f for f in logger.filters if isinstance(f, worker.ExpectedNotLoaded)]:
            logger.removeFilter(f)
    assert [r.getMessage() for r in records] == ["LayerNorm: Failed to load weights", "Head: Delayed processing"]


def test_member_write_times_are_logged_and_the_sequence_has_room_to_be_scored(fake):
    from es_repro.engines.vllm.backend import max_model_len

    cfg = make_cfg(VLLM + ["task.max_new_tokens=7", "task.max_prompt_tokens=50"])
    task = _task(cfg)
    vb = build_backend(cfg, task)
    assert vb.update_stats() == {}
    vb.fitness([Member(1, 1), Member(2, 1)], 0.05, task.train_rows[:1], task, Timer())
    assert len(vb.write_times) == 2 and vb.update_stats()["write_s_per_member"] > 0
    assert max_model_len(cfg) == 50 + 7 + 1  # a whole KL sample is a prompt, and vLLM generates one token after it


# batch 1: the fake engine generates one prompt at a time; HF generate on the HF side too (the fake engine is HF
# generate, and es-repro's fast CPU decode has other bf16 bits)
RUN = ["es.generations=4", "checkpoint_every=2", "model.dtype=bfloat16", "es.update=momentum", "eval.every=2",
       "generation.batch_size=1", "generation.fast_decode=off"]


@pytest.mark.slow
def test_an_es_run_matches_the_hf_backend_and_checkpoints_cross_engines(fake, tmp_path):
    from es_repro.engines.vllm.backend import model_directory

    # Both engines load the tiny model from its saved directory: the HF backend's in-memory tiny model is cast
    # to bf16 after construction, rotary buffers included, which shifts its bf16 outputs.
    run = RUN + ["model.source=hf", f"model.path={model_directory(make_cfg().model)}"]
    run_es(make_cfg(run), tmp_path / "hf")
    run_es(make_cfg(VLLM + run), tmp_path / "vllm")
    a, b = RunLog(tmp_path / "hf"), RunLog(tmp_path / "vllm")
    for key in ("seeds", "signs", "rewards", "coeffs", "update"):
        assert [r[key] for r in a.records("train")] == [r[key] for r in b.records("train")], key
    assert len({tuple(r["rewards"]) for r in a.records("train")}) > 1  # the members did differ
    # greedy evaluation equal; KL samples are drawn per request by the engine (not HF's one batch stream), so KL
    # is only checked to be measured (its log-probabilities: test_logprobs_are_scored_by_the_engine_...)
    evals = [{k: r[k] for k in ("step", "eval_reward", "eval_accuracy")} for r in a.records("eval")]
    assert evals == [{k: r[k] for k in ("step", "eval_reward", "eval_accuracy")} for r in b.records("eval")]
    assert all(r["eval_kl"] > 0 for r in b.records("eval")[1:])
    assert json.loads((tmp_path / "vllm" / "run.json").read_text())["backend"]["name"] == "vllm"
    ckpt_a, ckpt_b = latest_checkpoint(tmp_path / "hf"), latest_checkpoint(tmp_path / "vllm")
    for file in ("model.safetensors", "master.safetensors", "update_rule.safetensors"):
        x, y = load_file(ckpt_a / file), load_file(ckpt_b / file)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), file

    # each engine loads the other's checkpoint and continues identically
    hf, vb, _, _ = _pair(run)
    hf.load_state(ckpt_b)
    vb.load_state(ckpt_a)
    _same_weights(hf, fake.LLM.last.model)
    hf.apply_update([(1, 0.4)])
    vb.apply_update([(1, 0.4)])
    _same_weights(hf, fake.LLM.last.model)

    # the export loads as an HF model
    from transformers import AutoModelForCausalLM

    vb.export(tmp_path / "export")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export", local_files_only=True)
    assert loaded.dtype == torch.bfloat16
    _same_weights(hf, loaded)


def test_the_benchmark_runs_the_vllm_mode_with_forced_tokens_and_its_limit(fake):
    from es_repro.bench import throughput as bench
    from es_repro.bench.roofline import generation_limit_s, shape_of

    cfg = make_cfg(VLLM + ["task.train_size=2", "task.max_new_tokens=5", "es.population=2"])
    task = _task(cfg)
    backend = bench.setup(cfg, task, "vllm", "float32", force_tokens=True)
    r = bench.bench_generation(cfg, backend, task, limits=(1e9, 1e11))
    assert r["tokens"] == 2 * 2 * 5  # N members x prompts x the forced length
    assert all(sp.min_tokens == 5 and sp.ignore_eos and sp.stop is None for sp in fake.LLM.last.params)
    hf = hf_backend.build(cfg, task)
    expected = sum(generation_limit_s(shape_of(hf.model), batch=b, width=w, steps=t, bytes_per_value=4,
                                      bandwidth=1e9, peak_flops=1e11) for b, w, t in backend.calls)
    assert r["limit_s"] == pytest.approx(expected) and len(backend.calls) == 2


@pytest.mark.parametrize("local_rank, devices, placed", [(3, [1], True), (2, [0], False)])
def test_engines_sharing_a_gpu_split_its_memory_and_are_placed_by_local_rank(fake, monkeypatch, local_rank, devices,
                                                                             placed):
    """4 processes on a 2-GPU node: 2 engines per GPU, each with half of gpu_memory_utilization; an engine for
    GPU 1 is placed there with device_ids (vLLM would otherwise take GPU 0), GPU 0 needs no placement."""
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = make_cfg(VLLM + ["model.device=cpu", "generation.vllm.gpu_memory_utilization=0.8"])
    backend = build_backend(cfg, _task(cfg))
    kwargs = fake.LLM.last.kwargs
    assert kwargs["gpu_memory_utilization"] == pytest.approx(0.4)
    assert kwargs.get("device_ids") == (devices if placed else None)
    assert backend.describe()["devices"] == devices and backend.describe()["engines_sharing_devices"] == 2


def test_a_vllm_without_device_ids_refuses_to_stack_engines_on_gpu_0(fake, monkeypatch):
    @dataclasses.dataclass
    class OldEngineArgs:
        model: str = ""

    monkeypatch.setattr(sys.modules["vllm.engine.arg_utils"], "EngineArgs", OldEngineArgs)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = make_cfg(VLLM + ["model.device=cpu"])
    with pytest.raises(RuntimeError, match=r"should run its engine on GPU\(s\) \[1\].*cannot place an engine"):
        build_backend(cfg, _task(cfg))
    assert fake.LLM.last is None  # refused before any engine started


def test_the_compile_cache_goes_to_node_local_disk_unless_chosen():
    import os

    from es_repro.engines.vllm.backend import node_local_cache

    uid = os.getuid()
    assert node_local_cache({"SLURM_TMPDIR": "/local/job7", "TMPDIR": "/tmp/x"}) == {"VLLM_CACHE_ROOT": f"/local/job7/vllm-cache-{uid}"}
    assert node_local_cache({"TMPDIR": "/scratch"}) == {"VLLM_CACHE_ROOT": f"/scratch/vllm-cache-{uid}"}
    assert node_local_cache({}) == {"VLLM_CACHE_ROOT": f"/tmp/vllm-cache-{uid}"}
    assert node_local_cache({"VLLM_CACHE_ROOT": "/shared/cache"}) == {}


def test_es_master_device_reaches_the_worker(fake, monkeypatch):
    """es.master_device=cpu: the worker keeps its master in (pinned) CPU memory, as the HF backend does, instead of
    beside the engine on the GPU (a 7B/8B master does not fit there)."""
    from es_repro.engines.vllm import worker

    asked = []
    real = worker.master_copy
    monkeypatch.setattr(worker, "master_copy", lambda p, where: asked.append(where) or real(p, where))
    cfg = make_cfg(VLLM + ["es.master_device=cpu"])
    build_backend(cfg, _task(cfg))
    assert asked and set(asked) == {"cpu"}


@pytest.mark.parametrize("version, problem", [("0.32.0", None), ("0.32.3+cpu", None), ("0.33.0", "outside the range"),
                                              ("0.31.2", "outside the range"), ("dev", "no release number")])
def test_a_vllm_outside_the_tested_range_is_named(version, problem):
    from es_repro.engines.vllm.checks import version_problem

    found = version_problem(version)
    if problem is None:
        assert found is None
    else:
        assert problem in found and version in found


def test_an_in_process_engine_is_refused_in_a_run_of_several_processes():
    from es_repro.engines.vllm.checks import check_engine_process

    with pytest.raises(ConfigError, match="VLLM_ENABLE_V1_MULTIPROCESSING=0 .* run of 2 processes"):
        check_engine_process({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}, 2)
    check_engine_process({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}, 1)  # one process: the engine may share it
    check_engine_process({}, 4)  # vLLM's default: the engine in its own process


@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_a_random_shape_is_built_for_the_engine_as_the_hf_backend_builds_it(dtype, monkeypatch, tmp_path):
    """The random init draws from the build device's generator: the checkpoint vLLM loads is built on the device
    and in the dtype of the HF backend's load_model (on a GPU, both on CUDA), and cached under that device and dtype."""
    from es_repro.engines.vllm import backend as vllm_backend
    from es_repro.models import loading, shapes
    from es_repro.models.tiny import build_tiny_model

    built = []

    def record(name, *, dtype, device, seed=0):
        built.append((name, dtype, torch.device(device), seed))
        return build_tiny_model(seed=seed)

    monkeypatch.setattr(shapes, "build_random_shape", record)
    monkeypatch.setattr(loading, "cache_root", lambda: tmp_path)
    model_cfg = make_cfg(["model=qwen2.5-1.5b-random", f"model.dtype={dtype}"]).model
    loading.load_model(model_cfg)
    directory = vllm_backend.model_directory(model_cfg)
    assert len(built) == 2 and built[0] == built[1]
    device, resolved = loading.resolve_device(model_cfg.device), vllm_backend.engine_dtype(model_cfg)
    assert directory == str(tmp_path / f"random-qwen2.5-1.5b-{device.type}-{resolved}-seed{model_cfg.seed}")


class ScaledSGD:
    """A rule with a setting the worker has never heard of: the worker must receive it all the same."""

    def __new__(cls, decay: float, scale: float):
        from es_repro.es.update_rules import SGD

        rule = SGD(decay)
        rule.scale = scale
        return rule


def test_a_new_update_rule_setting_reaches_the_vllm_worker_without_editing_it(fake, monkeypatch):
    """The worker builds its rule from the run's whole ES section through build_update_rule, so a setting added to
    a rule's entry in UPDATES (here: scale, read from es.alpha) arrives on the worker as the driver built it."""
    from es_repro.es import update_rules

    sgd = update_rules.UPDATES["sgd"]
    monkeypatch.setitem(update_rules.UPDATES, "sgd", update_rules.UpdateMethod(
        ScaledSGD, lambda es: {"decay": float(es.decay), "scale": 7 * es.alpha}, strategy=sgd.strategy))
    cfg = make_cfg(VLLM + ["es.alpha=0.25", "es.decay=0.125"])
    build_backend(cfg, _task(cfg))
    rule = fake.LLM.last.worker._es_master.rule
    assert (rule.scale, rule.decay) == (7 * 0.25, 0.125)
    assert update_rules.build_update_rule(cfg.es).scale == rule.scale  # the driver's rule, built by the same function


def test_the_engine_reads_the_noise_table_as_the_hf_backend_does(fake):
    """es.noise=table reaches the workers with its settings (the whole ES section), and their weights after a
    perturbation and an update equal the HF backend's bit for bit."""
    from es_repro.es.noise import TableNoise

    hf, vb, _, _ = _pair(["es.noise=table", "es.noise_table_values=65536", "es.noise_table_chunk=256",
                          "model.dtype=float32"])
    engine = fake.LLM.last
    mode = engine.worker._es_master.noise_mode
    assert isinstance(mode, TableNoise) and (mode.values, mode.chunk) == (65536, 256)
    hf.weights.perturb(3, 0.02)
    vb._write("es_perturb", 3, 0.02)
    _same_weights(hf, engine.model)
    hf.weights.restore()
    vb._write("es_restore")
    hf.apply_update([(5, 0.3)])
    vb.apply_update([(5, 0.3)])
    _same_weights(hf, engine.model)
