"""The population engine (generation.backend=vllm es.lowrank=r, es_repro/engines/vllm/population.py) on the real
engine: vLLM's CPU build in .venv-vllm, SmolLM2-135M in fp32; run by tests/engines/vllm/test_vllm_engine.py beside
vllm_engine_checks.py, with the engine core in this process and in its own.

- one generation's member completions equal the HF low-rank engine's, token for token, over two waves of
  max_loras adapters; registering again keeps at most max_loras adapters (nothing grows);
- a 2-generation run logs the HF low-rank run's rewards and coefficients and ends on its weights bit for bit (the
  second generation runs on the updated base, so the update is checked too);
- replay rebuilds each engine's run on the other, bit for bit; a run stopped on one engine resumes on the other and
  ends where the uninterrupted run ends.
"""
from __future__ import annotations

import os
import time

import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

SMOL = ["generation.backend=vllm", "model=smollm2-135m", "generation.vllm.kv_cache_gb=0.5",
        "generation.vllm.enforce_eager=true", "task=synthetic", "task.max_new_tokens=16", "task.train_size=6",
        "task.eval_size=4", "task.max_prompt_tokens=256", "model.dtype=float32"]
# 6 members, 4 slots: two waves; the HF engine shares one forward among 8
POPULATION = ["es.lowrank=1", "es.lowrank_targets=projections", "generation.vllm.max_loras=4",
              "es.members_per_forward=8"]
RUN = ["es.population=6", "es.sigma=3e-3", "es.alpha=2e-3", "eval.every=0", "eval.kl_samples=0", "task.train_size=4",
       "task.max_new_tokens=12", "progress=false"]


def _registered_adapters(worker) -> int:
    return len(worker.model_runner.lora_manager.list_adapters())


def test_members_equal_the_hf_lowrank_engines_over_two_waves_and_the_slots_are_reused():
    from es_repro.engines.base import build_backend
    from es_repro.engines.hf import backend as hf_backend
    from es_repro.es.strategy import Member
    from es_repro.tasks import task_from_config
    from es_repro.util.timing import Timer
    from tests.helpers import make_cfg

    cfg = make_cfg(SMOL + POPULATION)
    task = task_from_config(cfg.task)
    engine, hf = build_backend(cfg, task), hf_backend.build(cfg, task)
    rows = task.train_rows[:2]
    base = engine.generate(rows)
    members = [Member(s, g) for s in (3, 4, 5) for g in (1, -1)]
    t0 = time.perf_counter()
    got = engine.member_completions(members, 3e-3, rows, Timer())
    seconds = time.perf_counter() - t0
    want = hf.member_completions(members, 3e-3, rows, Timer())
    changed = sum(c != base for c in got)
    print(f"\n[vllm] population: {len(members)} members in {engine.update_stats()['waves']} waves, {seconds:.1f}s "
          f"(adapters {engine.update_stats()['register_s']:.2f}s); equal to HF low-rank: "
          f"{sum(a == b for a, b in zip(got, want))}/{len(members)}; changed from the base: {changed}")
    assert engine.update_stats()["waves"] == 2
    assert changed >= len(members) // 2  # the adapters reached the engine
    assert got == want
    assert engine.generate(rows) == base  # a request without an adapter runs the base weights
    engine.member_completions(members[:3], 3e-3, rows, Timer())
    assert engine.llm.collective_rpc(_registered_adapters) == [3]  # the wave of 3 replaced the wave of 2; at most 4


def _es_run(tmp_path, name: str, overrides: list[str]):
    from es_repro.run.log import RunLog
    from es_repro.train import run_es
    from tests.helpers import make_cfg

    t0 = time.perf_counter()
    run_es(make_cfg(SMOL + POPULATION + RUN + overrides), tmp_path / name)
    print(f"[vllm] population run {name}: {time.perf_counter() - t0:.0f}s")
    return RunLog(tmp_path / name).records("train")


def _final(run_dir):
    from es_repro.run.checkpoint import latest_checkpoint

    return load_file(latest_checkpoint(run_dir) / "model.safetensors")


def _same(x: dict, y: dict) -> bool:
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _killed_at_the_second_call(real):
    calls = []

    def member_rewards(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a SLURM preemption or Ctrl-C in generation 2
        return real(self, *args, **kwargs)
    return member_rewards


def test_runs_match_the_hf_lowrank_engine_and_replay_and_resume_across_engines(tmp_path, monkeypatch):
    from es_repro.engines.base import Backend
    from es_repro.run.log import RunLog
    from es_repro.run.replay import main as replay

    hf = _es_run(tmp_path, "hf", ["generation.backend=hf", "es.generations=2"])
    vl = _es_run(tmp_path, "vllm", ["es.generations=2"])
    for key in ("seeds", "signs", "rewards", "coeffs", "update"):
        assert [r[key] for r in hf] == [r[key] for r in vl], key
    assert all(len(set(r["rewards"])) > 1 for r in hf)  # the members differ, so agreement means something
    hf_final, vl_final = _final(tmp_path / "hf"), _final(tmp_path / "vllm")
    assert _same(hf_final, vl_final)
    base = _base_weights()
    moved = [k for k in hf_final if not torch.equal(hf_final[k], base[k])]
    assert moved and all("proj" in k for k in moved), moved[:5]  # projections only, as es.lowrank_targets says
    print(f"[vllm] 2 generations: rewards, coefficients and final weights equal to HF low-rank; {len(moved)} "
          f"tensors moved (projections only)")

    # replay each run on the other engine
    assert replay([str(tmp_path / "hf"), "--out", str(tmp_path / "hf-on-vllm"), "generation.backend=vllm"]) == 0
    assert replay([str(tmp_path / "vllm"), "--out", str(tmp_path / "vllm-on-hf"), "generation.backend=hf"]) == 0
    assert _same(load_file(tmp_path / "hf-on-vllm" / "model.safetensors"), hf_final)
    assert _same(load_file(tmp_path / "vllm-on-hf" / "model.safetensors"), vl_final)

    # a run killed in generation 2 on one engine, resumed on the other
    for first, then in (("vllm", "hf"), ("hf", "vllm")):
        with monkeypatch.context() as patch:
            patch.setattr(Backend, "member_rewards", _killed_at_the_second_call(Backend.member_rewards))
            with pytest.raises(KeyboardInterrupt):
                _es_run(tmp_path, f"{first}-then-{then}", [f"generation.backend={first}", "es.generations=2"])
        assert len(RunLog(tmp_path / f"{first}-then-{then}").records("train")) == 1
        _es_run(tmp_path, f"{first}-then-{then}", [f"generation.backend={then}", "es.generations=2"])
    assert _same(_final(tmp_path / "vllm-then-hf"), hf_final)
    assert _same(_final(tmp_path / "hf-then-vllm"), hf_final)
    print("[vllm] replay and resume across engines: the same final weights bit for bit, both directions")


def _base_weights() -> dict:
    """SmolLM2's weights at fp32 as the HF engine loads them (generation 0)."""
    from es_repro.models.loading import load_model
    from tests.helpers import make_cfg

    model, _ = load_model(make_cfg(SMOL).model)
    return {k: v.detach() for k, v in model.state_dict().items()}


@pytest.mark.skipif(os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0",
                    reason="several processes need vLLM's engine in its own process (the multiprocess pass runs it)")
def test_two_processes_each_with_an_engine_match_one_hf_lowrank_process(tmp_path):
    """torchrun, 2 processes: each builds its own population engine and scores members rank, rank + 2, ...; the
    gathered rewards, the coefficients and the final weights equal one HF low-rank process's."""
    import subprocess
    import sys

    from es_repro.run.log import RunLog
    from tests.helpers import TINY

    hf = _es_run(tmp_path, "hf", ["generation.backend=hf", "es.generations=1"])
    # TINY first: what make_cfg composes for the in-process run (its small noise table among them)
    overrides = [*TINY, *SMOL, *POPULATION, *RUN, "es.generations=1", f"out_root={tmp_path / 'two'}",
                 "generation.vllm.gpu_memory_utilization=0.3"]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1", "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                          "es_repro", *overrides], env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    (metrics,) = (tmp_path / "two").glob("*/*/metrics.jsonl")
    run_dir = metrics.parent
    two = RunLog(run_dir).records("train")
    print(f"[vllm] 2 processes, one population engine each: {time.perf_counter() - t0:.0f}s")
    assert two[0]["processes"] == 2
    for key in ("seeds", "rewards", "coeffs", "update"):
        assert two[0][key] == hf[0][key], key
    assert _same(_final(run_dir), _final(tmp_path / "hf"))
