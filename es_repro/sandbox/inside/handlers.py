"""Job handlers, run in a forked job child (model-derived input only ever reaches code here).

warm(specs) runs once in the worker before any fork, so imports and expensive set-up are paid once:
  {"import": "numpy"}                          import a module
  {"math": true}                               import math-verify and parse/verify once
  {"rg": "n_queens", "config": {...}}          build a reasoning-gym dataset object (its score_answer is used)
run(name, args) -> JSON-able value:
  probe   what a job can do: write where, connect to the host, see the training process and read its environment
  arc     exec a program, call its transform(grid) on each input grid; grids out (or None per failed grid)
  math    math-verify: is the answer equivalent to the gold answer (both LaTeX, boxed content)?
  rg      a reasoning-gym dataset's score_answer(answer, entry)
Scores that compare against hidden references (ARC test outputs) are computed by the caller, never here.
"""
from __future__ import annotations

# Imported before any fork: a job's uid may not be able to read the standard library's files (a Python under
# /root), so whatever a job needs must already be loaded. encodings.idna: socket encodes host names with it.
import encodings.idna  # noqa: F401
import errno
import hashlib
import importlib
import os
import socket
from typing import Any

_DATASETS: dict[str, Any] = {}
MATH_WARMUP = [("\\frac{3}{4}", "0.75"), ("3\\sqrt{3}", "\\sqrt{27}"), ("2\\pi", "6.28"), ("y^2-1", "(y-1)(y+1)"),
               ("(1, 5]", "(1,5]"), ("\\{4, 5\\}", "\\{5,4\\}"), ("-12", "12"), ("x=3", "3"), ("45^\\circ", "45"),
               ("\\text{(B)}", "B"), ("10\\%", "0.1"), ("\\dfrac{2}{3}", "\\frac23"), ("e^{2}", "7.389"),
               ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(1,2)"), ("\\infty", "1"), ("3.5", "\\frac{7}{2}")]
MAX_GRID_SIDE = 30  # ARC grids are at most 30x30


def _rg_key(name: str, config: dict) -> str:
    return name + repr(sorted(config.items()))


def warm(specs: list[dict]) -> None:
    for spec in specs:
        if "import" in spec:
            importlib.import_module(spec["import"])
        elif "math" in spec:
            # One pass over common answer shapes loads math-verify's grammar and sympy's lazily imported paths
            # here, once, instead of in every forked job (~10x faster jobs).
            for gold, answer in MATH_WARMUP:
                math_equal(gold, answer)
        elif "rg" in spec:
            import reasoning_gym

            config = spec.get("config") or {}
            _DATASETS[_rg_key(spec["rg"], config)] = reasoning_gym.create_dataset(spec["rg"], seed=0, size=1, **config)
        else:
            raise ValueError(f"unknown warm-up spec {spec!r}")


def run(name: str, args: dict) -> Any:
    return {"probe": probe, "arc": arc, "math": math_job, "rg": rg}[name](**args)


def probe(files: dict[str, str], port: int, training: dict) -> dict:
    """What a job can actually do, for the isolation record (the pool checks on the host which writes landed).
    files: {label: a new file to try creating}; port: a TCP port the training process listens on at 127.0.0.1;
    training: its pid, start time (/proc/<pid>/stat field 22) and the sha256 of its environment."""
    writes = {}
    for label, path in files.items():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            writes[label] = "written"
        except OSError as err:
            writes[label] = errno_name(err)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        network = "reached"
    except OSError as err:
        network = errno_name(err)
    pid = training["pid"]
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:  # the same pid number may be another process in a pid namespace
            stat = f.read()
        visible = stat[stat.rindex(b")") + 2:].split()[19].decode() == str(training["starttime"])
    except (OSError, ValueError, IndexError):
        visible = False
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = "read" if hashlib.sha256(f.read()).hexdigest() == training["environ_sha256"] else "other"
    except OSError as err:
        environ = errno_name(err)
    return {"uid": os.getuid(), "pid": os.getpid(), "interfaces": [n for _, n in socket.if_nameindex()],
            "env": sorted(os.environ), "cwd": os.getcwd(), "writes": writes, "network": network,
            "processes_visible": sum(name.isdigit() for name in os.listdir("/proc")),
            "training_process_visible": visible, "training_environ": environ}


def errno_name(err: OSError) -> str:
    return errno.errorcode.get(err.errno, str(err.errno)) if err.errno else type(err).__name__


# ----------------------------------------------------------------------------------------------- ARC
def _grid(value: Any) -> list[list[int]] | None:
    """A list of equal-length rows of ints 0-9 (numpy arrays and tuples accepted), at most 30x30; else None."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not 0 < len(value) <= MAX_GRID_SIDE:
        return None
    rows = []
    for row in value:
        if hasattr(row, "tolist"):
            row = row.tolist()
        if not isinstance(row, (list, tuple)) or not 0 < len(row) <= MAX_GRID_SIDE:
            return None
        cells = []
        for cell in row:
            if isinstance(cell, bool) or not isinstance(cell, int) or not 0 <= cell <= 9:
                return None
            cells.append(int(cell))
        rows.append(cells)
    return rows if len({len(r) for r in rows}) == 1 else None


def arc(code: str, inputs: list[list[list[int]]]) -> dict:
    """Run a model's program: exec it, then transform(copy of grid) per input. Per-grid failures are None."""
    namespace: dict[str, Any] = {"__name__": "__program__"}
    exec(compile(code, "<program>", "exec"), namespace)  # noqa: S102 - this is the sandboxed job
    transform = namespace.get("transform")
    if not callable(transform):
        return {"defined": False, "outputs": [None] * len(inputs)}
    outputs = []
    for grid in inputs:
        try:
            outputs.append(_grid(transform([list(row) for row in grid])))
        except Exception:
            outputs.append(None)
    return {"defined": True, "outputs": outputs}


# ----------------------------------------------------------------------------------------------- MATH
def math_equal(gold: str, answer: str) -> bool:
    """math-verify's verdict on two boxed answers. Its own signal-based timeouts are off: the worker's wall
    clock and CPU limits bound the job instead."""
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=True)]
    gold_parsed = parse("\\boxed{" + gold + "}", extraction_config=config, parsing_timeout=None)
    answer_parsed = parse("\\boxed{" + answer + "}", extraction_config=config, parsing_timeout=None)
    if not gold_parsed or not answer_parsed:
        return False
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=None))


def math_job(gold: str, answer: str) -> bool:
    return math_equal(gold, answer)


# ----------------------------------------------------------------------------------------------- reasoning-gym
def rg(dataset: str, config: dict, answer: str, entry: dict) -> float:
    return float(_DATASETS[_rg_key(dataset, config)].score_answer(answer, entry))
