"""Runs that never lie about their state (issue: reliability). Each test is one probe a user ran by hand:
concurrent launches, SIGTERM, NaN rewards, corrupt checkpoints, deleted logs, bad config and data, a 10 MB row,
an unwritable output directory, output piped to a file, flat rewards, and data paths in run names."""
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

from es_repro.config import ConfigError
from es_repro.config.run_dirs import run_name
from es_repro.run.checkpoint import latest_checkpoint
from es_repro.run.log import RunLog
from es_repro.run.state import RunState
from es_repro.train import run_es
from es_repro.util.errors import DataError, RunStateError
from tests.helpers import TINY, make_cfg

REPO = Path(__file__).resolve().parents[2]
SHORT = ["es.generations=4", "checkpoint_every=2", "keep_checkpoints=2", "eval.kl_samples=0", "eval.every=0"]


def cli(out_root: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "es_repro", *TINY, f"out_root={out_root}", *extra]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(latest_checkpoint(run_dir) / "model.safetensors")


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def as_crashed(run_dir: Path) -> None:
    """Mark a finished run as failed, as if it had died before its end: the next launch resumes it."""
    info = RunLog(run_dir).info()
    info["status"] = "failed"
    (run_dir / "run.json").write_text(json.dumps(info))


def wait_for_train_lines(root: Path, n: int, proc: subprocess.Popen, limit_s: float = 600) -> Path:
    """The run directory under ``root`` once its metrics.jsonl holds ``n`` train lines."""
    deadline = time.time() + limit_s
    while time.time() < deadline and proc.poll() is None:
        for metrics in root.glob("default/*/metrics.jsonl"):
            if sum('"train"' in line for line in metrics.open()) >= n:
                return metrics.parent
        time.sleep(0.05)
    raise AssertionError(f"no run under {root} reached {n} train lines (process exit code {proc.poll()})")


# 1, 2, 8: two launches, SIGTERM, relaunch; output piped to a file -------------------------------------------
@pytest.mark.slow
def test_second_launch_refused_sigterm_recorded_relaunch_resumes(tmp_path):
    # long enough (150 generations) that the first launch is still running when the second one starts
    extra = ["es.generations=150", "checkpoint_every=10", "eval.kl_samples=0", "task.train_size=2"]  # overrides TINY's 4
    first = subprocess.Popen(cli(tmp_path, extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, text=True)
    run_dir = wait_for_train_lines(tmp_path, 4, first)

    second = subprocess.run(cli(tmp_path, extra), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [second.stderr.strip()]  # one line
    assert second.stderr.startswith("run error: ") and f"pid {first.pid}" in second.stderr and "in use by host" in second.stderr

    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 128 + signal.SIGTERM
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == "SIGTERM" and info["reached_step"] >= 4
    assert "\r" not in out and "\x1b[" not in out  # piped: plain lines, no progress-bar redraws
    assert "[train] generation 1/150" in out

    third = subprocess.run(cli(tmp_path, extra), capture_output=True, text=True, cwd=REPO, timeout=900)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"resuming {run_dir} at generation" in third.stdout and "generations replayed from the log" in third.stdout
    log = RunLog(run_dir)
    assert log.info()["status"] == "finished" and log.info()["launches"] == 2
    assert [r["generation"] for r in log.records("train")] == list(range(1, 151))


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    """SIGKILL leaves the lock file behind; the kernel released the flock, so the relaunch runs."""
    from es_repro.run.lock import LOCK_FILE, run_lock

    holder = subprocess.Popen([sys.executable, "-c", f"from es_repro.run.lock import run_lock\nimport time\n"
                               f"with run_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == "held"
    from es_repro.run.lock import RunDirBusy

    with pytest.raises(RunDirBusy, match=f"pid {holder.pid}"):
        with run_lock(tmp_path):
            pass
    holder.kill()
    holder.wait()
    assert (tmp_path / LOCK_FILE).is_file()
    with run_lock(tmp_path):
        assert f"pid {os.getpid()}" in (tmp_path / LOCK_FILE).read_text()


# 2: a crash is recorded --------------------------------------------------------------------------------------
def test_nan_rewards_fail_the_run_before_any_update(tmp_path, monkeypatch):
    from es_repro.engines.hf import backend as hf_backend

    monkeypatch.setattr(hf_backend.HFBackend, "member_rewards",
                        lambda self, members, sigma, rows, *a, **k: [[float("nan")] * len(rows)] * len(members))
    with pytest.raises(RuntimeError, match="non-finite member rewards"):
        run_es(make_cfg(SHORT), tmp_path)
    info = RunLog(tmp_path).info()
    assert info["status"] == "failed" and "non-finite member rewards" in info["error"] and info["reached_step"] == 0
    assert RunLog(tmp_path).records("train") == []


# 3: corrupt checkpoints are caught and skipped ---------------------------------------------------------------
def _corrupt_tensor_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    start = 8 + header + 64  # inside the tensor data
    data[start : start + 4096] = b"\xff" * 4096
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("keep", [2, 1])
def test_corrupt_checkpoint_is_named_and_an_older_one_or_the_log_is_used(tmp_path, keep, capsys):
    overrides = SHORT + [f"keep_checkpoints={keep}", "model.dtype=bfloat16"]
    run_es(make_cfg([o for o in overrides if not o.startswith("es.generations")] + ["es.generations=6"]), tmp_path / "ref")
    run_es(make_cfg(overrides), tmp_path / "run")
    newest = latest_checkpoint(tmp_path / "run")
    assert newest.name == "gen-000004"
    _corrupt_tensor_bytes(newest / "master.safetensors")
    as_crashed(tmp_path / "run")
    run_es(make_cfg([o for o in overrides if not o.startswith("es.generations")] + ["es.generations=6"]), tmp_path / "run")
    out = capsys.readouterr().out
    assert f"{newest / 'master.safetensors'}: checksum mismatch" in out
    expected = "checkpoint gen-000002, 2 generations replayed" if keep == 2 else "the base weights, 4 generations replayed"
    assert expected in out
    assert_same(weights(tmp_path / "run"), weights(tmp_path / "ref"))


def test_unreadable_state_json_names_the_file_and_resumes_from_the_older_checkpoint(tmp_path, capsys):
    """A newest checkpoint (gen-000004) whose state.json does not parse is named, and the relaunch resumes from the
    older one (gen-000002, not the base weights) plus the 2 generations logged after it, then trains generation 5
    onto the weights an uninterrupted 5-generation run ends with."""
    run_es(make_cfg(SHORT[1:] + ["es.generations=5"]), tmp_path / "ref")
    run_dir = tmp_path / "run"
    run_es(make_cfg(SHORT), run_dir)
    ckpt = latest_checkpoint(run_dir)
    assert ckpt.name == "gen-000004"
    (ckpt / "state.json").write_text("{not json")
    (ckpt / "checksums.json").unlink()  # so the state.json check itself is what catches it
    as_crashed(run_dir)
    capsys.readouterr()
    run_es(make_cfg(SHORT[1:] + ["es.generations=5"]), run_dir)
    out = capsys.readouterr().out
    assert f"{ckpt / 'state.json'}: unreadable ES state" in out
    resumed = [line for line in out.splitlines() if line.startswith("[es-repro] resuming")]
    assert resumed == [f"[es-repro] resuming {run_dir} at generation 4: checkpoint gen-000002, "
                       f"2 generations replayed from the log"]
    assert RunLog(run_dir).info()["status"] == "finished"
    assert [r["generation"] for r in RunLog(run_dir).records("train")] == [1, 2, 3, 4, 5]
    assert_same(weights(run_dir), weights(tmp_path / "ref"))


def test_a_nonfinite_checkpoint_is_never_written(tmp_path):
    from es_repro.run import checkpoint

    run_es(make_cfg(SHORT), tmp_path)
    good = latest_checkpoint(tmp_path)
    with pytest.raises(RuntimeError, match="refusing to write checkpoint gen-000009.*NaN or inf"):
        checkpoint.save_checkpoint(tmp_path, _ExportFrom(good), RunState(generation=9), keep=1)
    assert latest_checkpoint(tmp_path) == good and good.is_dir()
    assert not (tmp_path / "checkpoints" / "gen-000009").exists()


class _ExportFrom:
    """A backend stand-in that exports a copy of a checkpoint with one NaN written into it."""

    def __init__(self, ckpt):
        self.ckpt = ckpt

    def export(self, path):
        import shutil

        from safetensors.torch import save_file

        shutil.copytree(self.ckpt, path)
        state = load_file(Path(path) / "model.safetensors")
        next(iter(state.values())).view(-1)[0] = float("nan")
        save_file(state, Path(path) / "model.safetensors")

    def save_state(self, path):
        pass


# 4: gaps in the log are refused ------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["deleted", "cut"])
def test_resume_refuses_a_log_that_does_not_reach_the_checkpoint(tmp_path, damage):
    run_es(make_cfg(SHORT + ["es.generations=3"]), tmp_path)  # checkpoints at 2 and 3 (the last), log to 3
    as_crashed(tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    if damage == "deleted":
        metrics.unlink()
    else:
        lines = metrics.read_text().splitlines(keepends=True)
        metrics.write_text("".join(l for l in lines if '"generation": 2' not in l and '"generation": 3' not in l))
    with pytest.raises(RunStateError, match=r"no train line for generation\(s\) (1-3|2-3) \(logged: (none|1-1)\b.*newest checkpoint: generation 3\).*Restore metrics.jsonl"):
        run_es(make_cfg(SHORT), tmp_path)


# 5, 6: validation and one-line errors ------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("es.sigma=nan", "es.sigma=nan is not allowed; it must be a finite number"),
    ("es.sigma=inf", "es.sigma=inf is not allowed; it must be a finite number"),
    ("es.alpha=nan", "es.alpha=nan is not allowed"),
    ("eval.kl_temperature=-inf", "eval.kl_temperature=-inf is not allowed"),
    ("+es.sigmaa=0.1", "es.sigmaa is not a setting; did you mean es.sigma"),
    ("+task.max_prompt_tokenz=9", "task.max_prompt_tokenz is not a setting; did you mean task.max_prompt_tokens"),
])
def test_non_finite_and_unknown_settings_are_refused(override, message):
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        make_cfg([override])


def _one_line_error(tmp_path, extra, prefix, *must_contain):
    proc = subprocess.run(cli(tmp_path / "out", extra), capture_output=True, text=True, cwd=REPO, timeout=600)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(prefix) and all(s in lines[0] for s in must_contain), lines[0]


@pytest.mark.slow
def test_user_errors_print_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"numbers": [1, 2, 3], "target": 6}\n{"numbers": [1, 2], "target": 3\n')
    _one_line_error(tmp_path, ["task=countdown", f"task.options.data_path={bad}"], "data error: ", f"{bad}:2", "not valid JSON")
    missing = tmp_path / "missing.jsonl"
    _one_line_error(tmp_path, ["task=countdown", f"task.options.data_path={missing}"], "data error: ", f"{missing}: no such file")
    _one_line_error(tmp_path, ["model=hf", f"model.path={tmp_path / 'no-model'}"], "config error: ", "model.path=", "neither a local directory")
    (tmp_path / "a-file").write_text("")
    proc = subprocess.run([sys.executable, "-m", "es_repro", *TINY, f"out_root={tmp_path / 'a-file' / 'x'}"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("config error: out_root=") and len(proc.stderr.strip().splitlines()) == 1


def test_bad_rows_and_options_are_config_or_data_errors(tmp_path):
    from es_repro.tasks import build_task

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"numbers": [1, 2, 3], "target": 6}\n{"target": 3}\n')
    with pytest.raises(DataError, match=f"{rows}:2: field 'numbers'"):
        build_task("countdown", 1, 1, 0, {"data_path": str(rows)})
    with pytest.raises(ConfigError, match="task.options.prefill='nope'"):
        build_task("countdown", 1, 1, 0, {"prefill": "nope"})


# 7: bounded input ---------------------------------------------------------------------------------------------
def test_a_10mb_row_is_refused_before_any_generation(tmp_path):
    data = tmp_path / "huge.jsonl"
    rows = [{"numbers": [1, 2, 3], "target": 6, "context": "x" * 10_000_000}] + \
           [{"numbers": [1, 2, n], "target": 3 + n, "context": f"Use 1, 2, {n}"} for n in range(3, 9)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    start = time.perf_counter()
    with pytest.raises(DataError, match=rf"{data}: (train|eval) row \d+: the prompt is 10,000,000 characters, more than task.max_prompt_tokens=2048"):
        run_es(make_cfg(["task=countdown", f"task.options.data_path={data}", "task.options.train_from_file=3", "task.train_size=2", "task.eval_size=4"]), tmp_path / "run")
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_prompt_token_limit_counts_tokens_between_the_cheap_bounds(tmp_path):
    with pytest.raises(DataError, match=r"task synthetic: train row 0: the prompt is \d+ tokens, more than task.max_prompt_tokens=5"):
        run_es(make_cfg(["task.max_prompt_tokens=5"]), tmp_path)


# 9: flat rewards warn ------------------------------------------------------------------------------------------
def test_identical_rewards_for_three_generations_warn_that_sigma_is_too_small(tmp_path, capsys):
    run_es(make_cfg(["es.sigma=1e-12", "es.generations=3", "eval.every=0", "eval.kl_samples=0"]), tmp_path)
    out = capsys.readouterr().out
    assert "all 6 members scored the same for 3 generations in a row" in out and "es.sigma=1e-12 is too small" in out


# 10: run directories from data paths ----------------------------------------------------------------------------
def test_data_paths_give_flat_content_keyed_run_names(tmp_path):
    a, b, c = tmp_path / "x" / "data.jsonl", tmp_path / "y" / "data.jsonl", tmp_path / "z" / "data.jsonl"
    for path, text in ((a, "same"), (b, "same"), (c, "other")):
        path.parent.mkdir()
        path.write_text(text)
    names = [run_name(f"seed=1,task.options.data_path={p},task.options.sizes=[3,4]") for p in (a, b, c)]
    assert all("/" not in n for n in names)
    assert names[0] == names[1] != names[2]  # keyed by the contents, not by where the file lies
    assert names[0].startswith("seed=1,task.options.data_path=data.jsonl-") and names[0].endswith(",task.options.sizes=[3,4]")
    assert run_name("model.path=Qwen/Qwen2.5-1.5B-Instruct").startswith("model.path=Qwen2.5-1.5B-Instruct-")
