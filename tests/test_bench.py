"""The ES benchmark on the tiny model: its numbers follow their definitions, and --timed-members extrapolates
member phases while still applying (and timing) the full N-member update."""
from __future__ import annotations

import pytest
import torch

from es_repro import bench, es
from es_repro.models import load_model
from es_repro.tasks import build_task
from es_repro.tasks.base import score
from es_repro.hf_backend import HFBackend, make_generator
from es_repro.weights import ESWeights
from helpers import make_cfg


def _setup(overrides=()):
    cfg = make_cfg(["task.train_size=3", "task.max_new_tokens=5", *overrides])
    task = build_task(cfg.task.name, cfg.task.train_size, 1, cfg.task.data_seed, cfg.task.options)
    model, tokenizer = load_model(cfg.model)
    return cfg, task, HFBackend(model, tokenizer, make_generator(cfg, task, model, tokenizer), ESWeights(model, cfg.es.noise))


@pytest.mark.parametrize("timed", [0, 2])
def test_bench_numbers_follow_their_definitions(timed):
    cfg, task, backend = _setup()
    r = bench.bench_generation(cfg, backend, task, timed_members=timed)
    phases = ["generate_s", "perturb_s", "restore_s", "reward_s", "update_s"]
    assert r["total_s"] == pytest.approx(sum(r[p] for p in phases))
    assert r["overhead"] == pytest.approx(1 - r["generate_s"] / r["total_s"])
    assert r["tok_per_s"] == pytest.approx(r["tokens"] / r["total_s"])
    assert r["timed_members"] == (timed or cfg.es.population)
    assert 0 < r["tokens"] <= cfg.es.population * len(task.train_rows) * cfg.task.max_new_tokens


def test_timed_members_still_apply_the_full_update():
    cfg, task, backend = _setup()
    weights = backend.weights
    before = [m.clone() for m in weights.master]
    r = bench.bench_generation(cfg, backend, task, timed_members=2)
    # Redo by hand: the two timed members' rewards, reused cyclically for all N members, one update.
    members = es.ask(cfg.seed, 0, cfg.es.population, cfg.es.antithetic)
    ref_model, ref_tokenizer = load_model(cfg.model)
    ref, ref_generator = ESWeights(ref_model, cfg.es.noise), make_generator(cfg, task, ref_model, ref_tokenizer)
    rewards = []
    for m in members[:2]:
        ref.perturb(m.seed, m.sign * cfg.es.sigma)
        rewards.append(sum(score(task.reward, ref_generator.generate(task.train_rows), task.train_rows)) / len(task.train_rows))
        ref.restore()
    all_rewards = [rewards[i % 2] for i in range(len(members))]
    ref.apply_update(es.merge_by_seed(members, es.tell(members, all_rewards, cfg.es.alpha, cfg.es.fitness)))
    assert r["reward_mean"] == pytest.approx(sum(rewards) / 2)
    assert any(not torch.equal(a, b) for a, b in zip(before, weights.master))
    assert all(torch.equal(a, b) for a, b in zip(ref.master, weights.master))


def test_bench_cli_prints_every_mode_and_the_speed_up(capsys):
    bench.main(["--model", "tiny-random", "--task", "synthetic", "--population", "4", "--prompts", "2",
                "--max-new-tokens", "4", "--members-per-forward", "2", "--timed-members", "2",
                "--modes", "paper@float32,default@float32,lowrank@bfloat16"])
    out = capsys.readouterr().out
    assert "| paper | float32 |" in out and "| default | float32 |" in out and "| lowrank | bfloat16 |" in out
    assert "speed-up of default@float32 over paper@float32" in out
    assert "speed-up of lowrank@bfloat16 over paper@float32" in out


def test_bench_rejects_bad_modes_and_member_counts():
    with pytest.raises(SystemExit, match="not one of"):
        bench.main(["--model", "tiny-random", "--task", "synthetic", "--modes", "fast"])
    with pytest.raises(SystemExit, match="timed-members"):
        bench.main(["--model", "tiny-random", "--task", "synthetic", "--population", "4", "--timed-members", "3",
                    "--members-per-forward", "2", "--modes", "lowrank"])
