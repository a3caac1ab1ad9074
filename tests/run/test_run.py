"""End-to-end ES runs on the tiny random model: logs, checkpoints, learning, resume after SIGKILL, replay."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from es_repro.run.checkpoint import latest_checkpoint
from es_repro.run.log import RunLog, read_jsonl
from es_repro.run.replay import main as replay_main
from es_repro.tasks import task_from_config
from es_repro.tasks.base import score
from es_repro.train import run_es
from tests.helpers import TINY, make_cfg

REPO = Path(__file__).resolve().parents[2]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(latest_checkpoint(run_dir) / "model.safetensors")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_writes_logs_checkpoint_and_skips_when_finished(tmp_path, capsys):
    """run.json, the train and eval lines of metrics.jsonl, the newest checkpoint (a plain HF directory), and
    samples.jsonl line by line: what a finished run leaves; a relaunch of it skips and writes nothing."""
    cfg = make_cfg(["eval.every=2", "checkpoint_every=3"])
    summary = run_es(cfg, tmp_path)
    log = RunLog(tmp_path)
    info = log.info()
    assert info["status"] == "finished" and info["config"]["es"]["population"] == 6 and "git_commit" in info
    train, evals = log.records("train"), log.records("eval")
    assert [r["generation"] for r in train] == [1, 2, 3, 4]
    assert [r["samples"] for r in train] == [24, 48, 72, 96]  # N=6 members x 4 prompts per generation
    assert [r["generation"] for r in evals] == [0, 2, 4]
    for r in train:
        assert len(r["seeds"]) == len(r["rewards"]) == len(r["coeffs"]) == 6
        assert r["reward_mean"] == pytest.approx(sum(r["rewards"]) / 6)
        assert {"time_generate", "time_perturb", "time_restore", "time_update", "time_reward"} <= r.keys()
    assert summary["eval_accuracy"] == evals[-1]["eval_accuracy"] and evals[-1]["eval_kl"] is not None
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.name == "gen-000004" and json.loads((ckpt / "state.json").read_text())["generation"] == 4
    # the checkpoint is a plain HF directory
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(ckpt).config.hidden_size == 32
    # samples.jsonl: per evaluation (generations 0, 2, 4) the first eval.samples_to_log = 4 eval rows, in order,
    # each with its completion and the reward the task gives that completion for that row
    samples = list(read_jsonl(tmp_path / "samples.jsonl"))
    task = task_from_config(cfg.task)
    assert cfg.eval.samples_to_log == len(task.eval_rows) == 4
    assert [(r["kind"], r["step"], r["generation"]) for r in samples] == [
        ("eval", g, g) for g in (0, 2, 4) for _ in range(4)]
    for k, r in enumerate(samples):
        row = task.eval_rows[k % 4]
        assert r["prompt"] == row["prompt"]  # task.prompt_format=raw
        assert r["reward"] == score(task.reward, [r["completion"]], [row])[0], r
    assert any(r["reward"] > 0 for r in samples)  # real completions, not empty ones scored 0
    for e in evals:  # the eval line's mean reward is these rows' (all 4 eval rows are logged)
        assert e["eval_reward"] == pytest.approx(sum(r["reward"] for r in samples if r["step"] == e["step"]) / 4)
    written = (tmp_path / "samples.jsonl").read_bytes()
    run_es(cfg, tmp_path)
    assert "already finished; skipping" in capsys.readouterr().out
    assert len(RunLog(tmp_path).records("train")) == 4
    assert (tmp_path / "samples.jsonl").read_bytes() == written  # the skipped launch logs nothing


def test_es_improves_reward_on_a_reachable_task(tmp_path):
    cfg = make_cfg(["es.generations=15", "es.population=16", "task.train_size=8", "task.max_new_tokens=4",
                    "eval.kl_samples=0", "eval.every=5"])
    run_es(cfg, tmp_path)
    evals = [r["eval_reward"] for r in RunLog(tmp_path).records("eval")]  # unperturbed model, held-out prompts
    assert len(evals) == 4 and evals[-1] > evals[0] + 0.3, evals
    train = RunLog(tmp_path).records("train")
    assert train[-1]["reward_mean"] > train[0]["reward_mean"]


@pytest.mark.parametrize("noise", ["iid", "correlated"])
def test_replay_from_log_reproduces_final_checkpoint(tmp_path, noise):
    run_dir = tmp_path / "run"
    run_es(make_cfg([f"es.noise={noise}", "es.antithetic=true", "es.decay=0.1", "eval.kl_samples=0"]), run_dir)
    replay_main([str(run_dir), "--out", str(tmp_path / "replayed")])
    assert_same_weights(load_file(tmp_path / "replayed" / "model.safetensors"), final_weights(run_dir))
    replay_main([str(run_dir), "--out", str(tmp_path / "half"), "--generations", "2"])
    half = load_file(tmp_path / "half" / "model.safetensors")
    assert any(not torch.equal(half[k], v) for k, v in final_weights(run_dir).items())


def _cli(run_root: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "es_repro", *TINY, f"out_root={run_root}", *extra]


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    extra = ["es.generations=60", "checkpoint_every=7", "eval.kl_samples=0", "task.train_size=8"]
    ref_root, killed_root = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cli(ref_root, extra), check=True, capture_output=True, timeout=600, cwd=REPO)
    (ref_dir,) = [p for p in (ref_root / "default").iterdir()]

    proc = subprocess.Popen(_cli(killed_root, extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    metrics = killed_root / "default" / ref_dir.name / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once a few generations past the first checkpoint are logged
        if metrics.is_file() and sum(1 for line in metrics.open() if '"train"' in line) >= 10:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_dir = metrics.parent
    logged = len(RunLog(killed_dir).records("train"))
    assert 10 <= logged < 60, "the run must be killed mid-way for this test to mean anything"
    assert json.loads((killed_dir / "run.json").read_text())["status"] == "running"

    subprocess.run(_cli(killed_root, extra), check=True, capture_output=True, timeout=600, cwd=REPO)
    assert_same_weights(final_weights(killed_dir), final_weights(ref_dir))
    train = RunLog(killed_dir).records("train")
    assert [r["generation"] for r in train] == list(range(1, 61))
    ref_train = RunLog(ref_dir).records("train")
    assert [r["rewards"] for r in train] == [r["rewards"] for r in ref_train]
    assert RunLog(killed_dir).info()["launches"] == 2


@pytest.mark.slow
def test_local_multirun_gives_one_finished_run_per_config(tmp_path):
    cmd = [sys.executable, "-m", "es_repro", "-m", *TINY, "es.generations=2", "eval.kl_samples=0", "seed=0,1",
           f"out_root={tmp_path}"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600, cwd=REPO)
    runs = sorted(p.name for p in (tmp_path / "default").iterdir() if (p / "run.json").is_file())
    # one directory per seed (a long override list is cut and hashed in the name, so read the seed from run.json)
    assert len(runs) == 2 and sorted(RunLog(tmp_path / "default" / r).info()["config"]["seed"] for r in runs) == [0, 1]
    seeds = [RunLog(tmp_path / "default" / r).records("train")[0]["seeds"] for r in runs]
    assert seeds[0] != seeds[1]  # the run seed drives the member seeds
    assert all(RunLog(tmp_path / "default" / r).is_finished() for r in runs)


def wandb_records(path: Path) -> list:
    """The protobuf Records of an offline .wandb file. Its format (wandb's LevelDB-style log, as its old
    datastore.py read it): a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each
    a 7-byte header (CRC-32 of type byte + data, length, type: 1 full, 2 first, 3 middle, 4 last) and its data; a
    block tail under 7 bytes is padding."""
    import struct
    import zlib

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    block, pos, parts, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:  # zero padding
            continue
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"bad checksum at byte {pos}"
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
    return records


def wandb_items(items) -> dict:
    """A history row or summary update as {key: value} (values are JSON; nested keys joined with '/')."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


@pytest.mark.slow
def test_wandb_offline_mirror(tmp_path, monkeypatch):
    """The offline wandb run holds what metrics.jsonl holds: one history row per generation with its logged
    rewards (the eval line's numbers joined to the step it was logged at) and the run's final summary."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    summary = run_es(make_cfg(["logger=wandb_offline", "es.generations=2", "eval.kl_samples=0"]), tmp_path)
    offline = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1
    log = RunLog(tmp_path)
    train, (final_eval,) = log.records("train"), log.records("eval")
    assert len(train) == 2  # the JSONL log stays the source of truth
    records = wandb_records(offline[0])
    history = [wandb_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["_step"] for h in history] == [1, 2]
    for h, t in zip(history, train):
        assert (h["generation"], h["samples"], h["tokens"]) == (t["generation"], t["samples"], t["tokens"])
        for key in ("reward_mean", "reward_std", "reward_min", "reward_max", "time_generate"):
            assert h[key] == pytest.approx(t[key], rel=1e-12), key
    assert history[-1]["eval_reward"] == pytest.approx(final_eval["eval_reward"], rel=1e-12)
    wandb_summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            wandb_summary.update(wandb_items(r.summary.update))
    assert wandb_summary["final_train_reward"] == pytest.approx(train[-1]["reward_mean"], rel=1e-12)
    for key in ("generations", "samples", "eval_reward", "eval_accuracy"):
        assert wandb_summary[key] == pytest.approx(summary[key], rel=1e-12), key


def test_a_prompt_baseline_run_shapes_the_prompt_normalised_rewards(tmp_path, monkeypatch):
    """es.fitness_baseline=prompt: the coefficients come from each member's prompt-normalised rewards (computed
    from what the engine scored per prompt), logged as "fitness" beside the plain mean "rewards"."""
    import numpy as np

    from es_repro.engines.hf.backend import HFBackend
    from es_repro.es import strategy as es

    scored = []
    real = HFBackend.member_rewards
    monkeypatch.setattr(HFBackend, "member_rewards", lambda self, *a, **k: scored.append(real(self, *a, **k)) or scored[-1])
    run_es(make_cfg(["es.fitness_baseline=prompt", "es.generations=2", "eval.every=0", "eval.kl_samples=0"]), tmp_path)
    train = RunLog(tmp_path).records("train")
    assert len(train) == len(scored) == 2
    for record, per_prompt in zip(train, scored):
        assert record["rewards"] == [float(np.mean(r)) for r in per_prompt]
        assert record["fitness"] == es.member_fitness("prompt", per_prompt, record["rewards"])
        members = [es.Member(s, g) for s, g in zip(record["seeds"], record["signs"])]
        assert record["coeffs"] == es.tell(members, record["fitness"], make_cfg().es.alpha)
        assert record["fitness"] != record["rewards"]
