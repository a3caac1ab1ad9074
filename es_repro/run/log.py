"""A run directory's records: run.json (config, git commit, host, status, times) and append-only JSONL logs.

metrics.jsonl is the source of truth: one line per ES generation ({"kind": "train", ...}) and one per
evaluation ({"kind": "eval", ...}). Each line is written with one write() and fsync'd, so a killed run leaves
at most one torn last line, which readers drop. A mirror (wandb, when enabled: es_repro/run/mirrors.py) only copies these lines.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from es_repro.util.files import write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from es_repro.run.mirrors import Mirror

RUN_FILE, METRICS_FILE, SAMPLES_FILE = "run.json", "metrics.jsonl", "samples.jsonl"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def read_jsonl(path: Path) -> Iterator[dict]:
    """Complete records of a JSONL file; a torn final line (killed mid-write) is skipped."""
    if not path.is_file():
        return
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                return
            yield json.loads(line)


class RunLog:
    def __init__(self, run_dir: Path, mirror: Mirror | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mirror = mirror  # es_repro/run/mirrors.py: wandb, or nothing

    # run.json ---------------------------------------------------------------------------------------------
    def info(self) -> dict:
        path = self.dir / RUN_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def start(self, config: dict, kind: str, **extra: Any) -> None:
        info = self.info()
        info.update(config=config, kind=kind, git_commit=git_commit(), host=socket.gethostname(), status="running",
                    **extra)
        info.setdefault("started_at", time.time())
        info["launches"] = info.get("launches", 0) + 1
        write_json_atomic(self.dir / RUN_FILE, info)

    def finish(self, summary: dict) -> None:
        info = self.info()
        info.update(status="finished", finished_at=time.time(), summary=summary)
        write_json_atomic(self.dir / RUN_FILE, info)

    def finish_run(self, counts: dict, final_eval: dict, unit: str) -> dict:
        """The end of a run (ES or baseline): a summary of ``counts`` ({unit: n, "samples": m}), the last train
        reward and the final evaluation's eval_* numbers, into run.json (status finished) and the mirror."""
        train = self.records("train")
        summary = {**counts, "final_train_reward": train[-1]["reward_mean"] if train else None,
                   **{k: v for k, v in final_eval.items() if k.startswith("eval_")}}
        self.finish(summary)
        if self.mirror is not None:
            self.mirror.finish(summary)
        print(f"[es-repro] done: {counts[unit]} {unit}, {counts['samples']} sample evaluations, eval accuracy "
              f"{summary.get('eval_accuracy')}, eval reward {summary.get('eval_reward')}, run dir {self.dir}")
        return summary

    def fail(self, error: str) -> None:
        """status failed, the error, when, and the last step logged (a relaunch resumes from there)."""
        info = self.info()
        train = self.records("train")
        info.update(status="failed", error=error, failed_at=time.time(),
                    reached_step=train[-1].get("step") if train else 0)
        write_json_atomic(self.dir / RUN_FILE, info)

    def is_finished(self) -> bool:
        return self.info().get("status") == "finished"

    # JSONL logs -------------------------------------------------------------------------------------------
    def records(self, kind: str | None = None) -> list[dict]:
        return [r for r in read_jsonl(self.dir / METRICS_FILE) if kind is None or r.get("kind") == kind]

    def append(self, record: dict, file: str = METRICS_FILE) -> None:
        line = json.dumps(record, default=float) + "\n"
        with open(self.dir / file, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        if self.mirror is not None and file == METRICS_FILE:
            step = record.get("generation", record.get("step"))
            self.mirror.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and v is not None}, step)

    def truncate_after(self, value: int, key: str = "generation", files: tuple[str, ...] = (METRICS_FILE,)) -> None:
        """Drop records whose ``key`` is past ``value`` (and any torn line) before a resumed run appends again;
        records without ``key`` are kept. ES truncates by generation, the RL baselines by step."""
        for name in files:
            path = self.dir / name
            if not path.is_file():
                continue
            keep = [r for r in read_jsonl(path) if r.get(key, value) <= value]
            write_text_atomic(path, "".join(json.dumps(r, default=float) + "\n" for r in keep))
