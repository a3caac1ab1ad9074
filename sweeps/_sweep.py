"""What the sweep scripts share: grids of Hydra overrides, the status of their run directories, and launching
each grid as one Hydra multirun (`python -m es_repro -m ...`) on a chosen launcher.

A run's directory is results/<experiment>/<overrides>, fixed by its overrides, so a sweep knows which of its
runs are finished (run.json status), started (they resume) or missing before launching anything. A grid whose
runs are all finished is not launched again; in a relaunched grid, finished runs skip in seconds and unfinished
ones resume from their newest checkpoint. Grids are expanded exactly as Hydra's basic sweeper does (an
experiment preset's own `hydra.sweeper.params` first, then the command line), so the directories match.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


def _ensure_repo_python() -> None:
    """Re-run under the repository's virtual environment when started with a python that lacks Hydra."""
    try:
        import hydra  # noqa: F401
    except ImportError:
        venv = REPO / ".venv" / "bin" / "python"
        if venv.exists() and not os.environ.get("ES_REPRO_SWEEP_REEXEC"):
            os.environ["ES_REPRO_SWEEP_REEXEC"] = "1"  # once: no loop if that environment lacks Hydra too
            os.execv(str(venv), [str(venv), *sys.argv])
        raise SystemExit("hydra is not installed: run the sweeps with the project's environment (.venv/bin/python)")


_ensure_repo_python()
sys.path.insert(0, str(REPO))

# The paper's seven Table 1 models (conf/model/).
PAPER_MODELS = ["qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct", "qwen2.5-3b-instruct", "qwen2.5-7b-instruct",
                "llama-3.2-1b-instruct", "llama-3.2-3b-instruct", "llama-3.1-8b-instruct"]
LAUNCHERS = ("basic", "local", "slurm_cpu", "slurm_1gpu", "slurm_4gpu", "slurm_multinode")


def floats(*values: float) -> str:
    """A sweep list of floats written plainly: floats(5e-4, 1e-3) -> '0.0005,0.001'."""
    return ",".join(repr(float(v)) for v in values)


@dataclass
class Grid:
    name: str  # e.g. "ES sigma=0.001"
    overrides: list[str]  # Hydra overrides; "key=a,b" sweeps (cartesian product over keys)
    runs: list[tuple[list[str], Path]] = field(default_factory=list)  # (a run's overrides, its run dir): plan()
    error: str = ""  # why the grid cannot be composed, if it cannot


def plan(grids: list[Grid], extra: list[str]) -> None:
    """Expand each grid into its runs, as Hydra's basic sweeper will, and compose each run's directory."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from es_repro.config import compose

    task_extra = [o for o in extra if not o.lstrip("+~").startswith("hydra")]
    parser = OverridesParser.create()
    for grid in grids:
        overrides = grid.overrides + task_extra
        try:
            preset = compose([o for o in overrides if o.startswith("experiment=")], return_hydra_config=True)
            params = OmegaConf.select(preset, "hydra.sweeper.params") or {}
            ordered = [f"{k}={v}" for k, v in params.items()] + overrides  # the basic sweeper's order
            (jobs,) = BasicSweeper.split_arguments(parser.parse_overrides(ordered), None)
            # Compose the first run in full (it checks every key); the others differ only in swept values, so
            # their directory is the same hydra.run.dir with their own override_dirname.
            cfg = compose(jobs[0], return_hydra_config=True)
            naming = cfg.hydra.job.config.override_dirname
            swept = {o.split("=", 1)[0] for job in jobs for o in job if o not in jobs[0]}
            for job in jobs:
                if swept & {"out_root", "experiment"}:  # the directory's other parts vary too
                    cfg = compose(job, return_hydra_config=True)
                cfg.hydra.job.override_dirname = get_overrides_dirname(
                    parser.parse_overrides(job), list(naming.exclude_keys), naming.item_sep, naming.kv_sep)
                grid.runs.append((job, REPO / str(OmegaConf.select(cfg, "hydra.run.dir"))))
        except Exception as err:  # a preset or key this checkout does not have
            grid.error = f"{type(err).__name__}: {str(err).splitlines()[0]}"


def run_status(run_dir: Path) -> str:
    """finished | started (it resumes) | missing."""
    info = run_dir / "run.json"
    if not info.is_file():
        return "missing"
    return "finished" if json.loads(info.read_text()).get("status") == "finished" else "started"


def command(grid: Grid, launcher: str, extra: list[str]) -> list[str]:
    hydra_launcher = [] if launcher == "basic" else [f"hydra/launcher={launcher}"]
    return [sys.executable, "-m", "es_repro", "-m", *grid.overrides, *hydra_launcher, *extra]


def main(description: str, methods: list[str], grids_for: dict[str, Callable[[list[str]], list[Grid]]],
         default_launcher: dict[str, str], argv: list[str] | None = None) -> int:
    """``grids_for[profile](selected methods) -> grids``; print the plan, then launch the unfinished grids."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(grids_for), default="paper",
                    help="paper: the paper's settings (GPUs); cpu: a laptop-sized version on SmolLM2-135M")
    ap.add_argument("--launcher", choices=LAUNCHERS, default=None,
                    help=f"conf/hydra/launcher/ preset; basic = Hydra's default, one run after another here "
                         f"(default: {default_launcher})")
    ap.add_argument("--methods", default=",".join(methods), help=f"comma-separated subset of {','.join(methods)}")
    ap.add_argument("--status", action="store_true", help="list every run with its status; launch nothing")
    ap.add_argument("--dry-run", action="store_true", help="print the commands; launch nothing")
    ap.add_argument("overrides", nargs="*",
                    help="more Hydra overrides for every run, e.g. out_root=/scratch/results hydra.launcher.partition=gpu")
    args = ap.parse_args(argv)
    launcher = args.launcher or default_launcher[args.profile]
    selected = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not selected or set(selected) - set(methods):
        ap.error(f"--methods must name some of: {', '.join(methods)}")
    grids = grids_for[args.profile](selected)
    print(f"[sweep] composing the runs of {len(grids)} grid(s) to find their run directories ...", flush=True)
    plan(grids, args.overrides)

    todo: list[Grid] = []
    print(f"[sweep] profile {args.profile}, launcher {launcher}, methods {','.join(selected)}")
    for grid in grids:
        if grid.error:
            print(f"  {grid.name}: cannot be composed in this checkout, skipped ({grid.error})")
            continue
        states = [run_status(d) for _, d in grid.runs]
        n = {s: states.count(s) for s in ("finished", "started", "missing")}
        print(f"  {grid.name}: {len(states)} runs: {n['finished']} finished, {n['started']} started, {n['missing']} missing")
        if args.status:
            for (_, run_dir), state in zip(grid.runs, states):
                shown = run_dir.relative_to(REPO) if run_dir.is_relative_to(REPO) else run_dir
                print(f"    {state:8s} {shown}")
        if n["finished"] < len(states):
            todo.append(grid)
            if args.dry_run:
                print("    " + shlex.join(command(grid, launcher, args.overrides)))
    if not todo:
        print("[sweep] nothing to launch: every run is finished")
        return 0
    if args.status or args.dry_run:
        return 0

    # Under SLURM the launching process only submits and waits, so every grid goes at once; locally in turn.
    parallel = launcher.startswith("slurm")
    failures, running = 0, []
    for grid in todo:
        cmd = command(grid, launcher, args.overrides)
        print(f"[sweep] {grid.name}: {shlex.join(cmd)}", flush=True)
        started = (grid, subprocess.Popen(cmd, cwd=REPO), time.perf_counter())
        if parallel:
            running.append(started)
        else:
            failures += _wait(*started)
    for started in running:
        failures += _wait(*started)
    return 1 if failures else 0


def _wait(grid: Grid, proc: subprocess.Popen, t0: float) -> int:
    rc = proc.wait()
    outcome = "done" if rc == 0 else f"FAILED (exit {rc}); re-run this script to resume what is unfinished"
    print(f"[sweep] {grid.name}: {outcome} after {time.perf_counter() - t0:.0f}s", flush=True)
    return int(rc != 0)
