"""The Backend seam: a second engine (tests/fakes/fake_backend.py) runs a whole ES run, resume and replay without any
change to the loop, the evaluator, checkpoints or replay; bad backend names fail with the allowed values; and
resume/replay are bit-exact through the HF backend for every update rule."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from es_repro.config import ConfigError
from es_repro.run.checkpoint import latest_checkpoint
from es_repro.run.log import RunLog
from es_repro.run.replay import main as replay_main
from es_repro.train import run_es
from tests.fakes import fake_backend
from tests.helpers import make_cfg

FAKE = ["generation.backend=tests.fakes.fake_backend:build", "es.generations=6", "checkpoint_every=2", "es.sigma=0.1",
        "es.alpha=0.05", "eval.every=3", "eval.kl_prompts=2"]


def _theta(path) -> torch.Tensor:
    return load_file(path / "fake_weights.safetensors")["theta"]


@pytest.mark.parametrize("rule", ["sgd", "momentum"])
def test_a_second_backend_runs_resumes_and_replays(tmp_path, rule, monkeypatch):
    cfg = make_cfg(FAKE + [f"es.update={rule}"])
    full = run_es(cfg, tmp_path / "full")
    log = RunLog(tmp_path / "full")
    train = log.records("train")
    assert [r["generation"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert train[-1]["reward_mean"] > train[0]["reward_mean"]  # it learns: theta shrinks toward 0
    assert full["eval_reward"] > log.records("eval")[0]["eval_reward"]
    kl = [(r["generation"], r["eval_kl"]) for r in log.records("eval")]
    assert kl[0] == (0, 0.0) and all(k > 0 for _, k in kl[1:])  # the base model, then theta moved away from it
    final = _theta(latest_checkpoint(tmp_path / "full"))

    # a crash in generation 4 (after the generation-2 checkpoint and generation 3's log line), then a relaunch
    monkeypatch.setattr(fake_backend.FakeBackend, "fail_after_fitness_calls", 3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_es(cfg, tmp_path / "resumed")
    info = RunLog(tmp_path / "resumed").info()
    assert info["status"] == "failed" and "simulated crash" in info["error"]
    monkeypatch.setattr(fake_backend.FakeBackend, "fail_after_fitness_calls", None)
    run_es(cfg, tmp_path / "resumed")
    assert RunLog(tmp_path / "resumed").info()["status"] == "finished"
    assert torch.equal(_theta(latest_checkpoint(tmp_path / "resumed")), final)

    # replay: base weights + the log, through the backend named in run.json
    replay_main([str(tmp_path / "full"), "--out", str(tmp_path / "replayed")])
    assert torch.equal(_theta(tmp_path / "replayed"), final)
    replay_main([str(tmp_path / "full"), "--out", str(tmp_path / "replayed2"), "--generations", "5"])
    assert not torch.equal(_theta(tmp_path / "replayed2"), final)


@pytest.mark.parametrize("value, message", [
    ("vllm_typo", "generation.backend='vllm_typo' is not allowed; choose one of: hf, qes, vllm"),
])
def test_unknown_backend_names_the_choices(value, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg([f"generation.backend={value}"])


def test_unimportable_backend_factory_is_a_clear_error_when_the_config_is_checked():
    with pytest.raises(ConfigError, match="generation.backend='no_such_module:build': cannot import no_such_module:build"):
        make_cfg(["generation.backend=no_such_module:build"])


def test_an_engine_path_from_before_the_move_still_loads_with_a_warning():
    from es_repro.engines.base import backend_factory
    from es_repro.engines.hf import backend as hf_backend

    with pytest.warns(FutureWarning, match="es_repro.hf_backend is now es_repro.engines.hf.backend"):
        assert backend_factory("es_repro.hf_backend:build") is hf_backend.build


@pytest.mark.parametrize("rule, lowrank", [("sgd", []), ("momentum", []),
                                           ("sgd", ["es.lowrank=2", "es.antithetic=true", "es.members_per_forward=3"]),
                                           ("momentum", ["es.lowrank=1", "es.members_per_forward=6"])])
def test_hf_resume_and_replay_are_bit_exact_for_every_update_rule(tmp_path, rule, lowrank, monkeypatch):
    """Full rank and low-rank members (with antithetic pairs split across batched forwards) alike."""
    from es_repro.engines.hf import backend as hf_backend

    overrides = [f"es.update={rule}", "es.generations=5", "checkpoint_every=2", "es.decay=0.05", "eval.kl_samples=0",
                 "model.dtype=bfloat16", *lowrank]
    cfg = make_cfg(overrides)
    run_es(cfg, tmp_path / "full")
    final = load_file(latest_checkpoint(tmp_path / "full") / "model.safetensors")
    info = RunLog(tmp_path / "full").info()["backend"]
    assert info["name"] == ("hf-lowrank" if lowrank else "hf")
    # full-rank members decode through es-repro's own loop (issue 34): resume and replay are checked on it
    assert info["greedy_decoder"].startswith("hf generate" if lowrank else "fast")

    calls = {"n": 0}
    real = hf_backend.HFBackend.member_rewards

    def crashing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(hf_backend.HFBackend, "member_rewards", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_es(cfg, tmp_path / "resumed")
    assert RunLog(tmp_path / "resumed").info()["status"] == "failed"
    monkeypatch.setattr(hf_backend.HFBackend, "member_rewards", real)
    run_es(cfg, tmp_path / "resumed")
    resumed = load_file(latest_checkpoint(tmp_path / "resumed") / "model.safetensors")
    replay_main([str(tmp_path / "full"), "--out", str(tmp_path / "replayed")])
    replayed = load_file(tmp_path / "replayed" / "model.safetensors")
    for k in final:
        assert torch.equal(final[k], resumed[k]), k
        assert torch.equal(final[k], replayed[k]), k
    if rule == "momentum":  # its state travels in the checkpoint
        assert (latest_checkpoint(tmp_path / "full") / "update_rule.safetensors").is_file()


# The engine's class-level facts: a new engine states them in its own file, and no caller names it.
PLAN_FAKE = ["generation.backend=tests.fakes.fake_backend:build", "model=qwen2.5-1.5b-instruct"]


def test_the_plan_prints_the_fake_engines_own_memory_rows_and_preflight(capsys, monkeypatch):
    from es_repro.engines.memory import GIB, model_shape
    from es_repro.plan import main as plan_main

    monkeypatch.delenv("FAKE_ENGINE_MISSING", raising=False)
    assert plan_main([*PLAN_FAKE, "--gpu-gib", "80"]) == 0
    out = capsys.readouterr().out
    scratch = 3 * model_shape(make_cfg(PLAN_FAKE).model).params  # FakeBackend.memory_terms' definition
    assert f"| fake engine scratch | {scratch / GIB:.2f} | the fake engine's own term |" in out
    assert "master (fp32)" not in out and "KV cache" not in out  # the fake keeps no master and states no KV cache
    assert "preflight on this machine: ok" in out

    monkeypatch.setenv("FAKE_ENGINE_MISSING", "1")
    assert plan_main([*PLAN_FAKE, "--gpu-gib", "80"]) == 0  # a plan for elsewhere: the preflight is a note
    assert "preflight on this machine: generation.backend=fake needs the fake engine's library" in capsys.readouterr().out
    assert plan_main([*PLAN_FAKE, "--gpu-gib", "4"]) == 2
    assert "levers: fake.scratch, task.max_prompt_tokens" in capsys.readouterr().err  # its own lever, no master lever


def test_a_launch_runs_the_engines_preflight_before_anything_loads(tmp_path, monkeypatch):
    from es_repro.cli import launch
    from es_repro.config import compose

    monkeypatch.setenv("FAKE_ENGINE_MISSING", "1")
    with pytest.raises(ConfigError, match="needs the fake engine's library"):
        launch(compose(FAKE + ["model=tiny-random", "task=synthetic"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_factory_that_states_nothing_gets_the_seams_defaults():
    from es_repro.engines.base import Backend, engine_class

    assert engine_class("tests.fakes.fake_backend:FakeBackend") is fake_backend.FakeBackend  # a class is its own engine
    assert engine_class("tests.fakes.fake_backend:score") is Backend  # an unmarked function: Backend's facts
    assert Backend.devices_per_process(make_cfg(FAKE)) == 1


@pytest.mark.parametrize("overrides, engine", [([], "hf"), (["es.update=qes", "es.noise=iid"], "qes"),
                                               (["generation.backend=vllm"], "vllm"),
                                               (["generation.backend=qes", "es.update=qes", "es.noise=iid"], "qes")])
def test_one_function_names_the_engine_a_run_uses(overrides, engine):
    from es_repro.engines.base import engine_name

    assert engine_name(make_cfg(overrides)) == engine
