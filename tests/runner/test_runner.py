"""labkit.runner against real ipykernel kernels: every way a notebook run ends (RELIABILITY 11, 21-27).

Fixture notebooks live in tests/notebooks/ (stored without outputs); each has a `parameters` cell
with `run_token = ""` and `output_dir = "."`. Runs shared by several tests execute once per module.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cli_fork
import nbformat
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from processes import gone

from labkit.errors import LabkitError
from labkit.runner import NotebookRun, cancel_all, check_notebook, check_parameters, execute

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
TOKEN = "run-7f3a9c"


def kernels() -> list[psutil.Process]:
    """ipykernel processes descended from this test process, zombies excluded."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "ipykernel_launcher" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def run(name: str, out: Path, params: dict | None = None, **kw) -> NotebookRun:
    kw.setdefault("cwd", out.parent)
    kw.setdefault("timeout_s", 60)
    return execute(NOTEBOOKS / f"{name}.ipynb", out, params or {}, run_token=TOKEN, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each fixture notebook executed once, on first use, in its own output folder."""
    done: dict[str, tuple[NotebookRun, float]] = {}

    def get(name: str) -> NotebookRun:
        if name not in done:
            began = time.monotonic()
            result = run(name, tmp_path_factory.mktemp(name) / "out")
            done[name] = (result, time.monotonic() - began)
        return done[name][0]

    return get


def executed_cells(result: NotebookRun) -> list[dict]:
    return json.loads(result.executed.read_text())["cells"]


def test_import_is_cheap():
    code = "import sys, labkit.runner; print(sorted(m for m in ('papermill', 'nbclient', 'nbformat', 'nbconvert', 'jupyter_client') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------ outcomes

# a kernel that lost its port to another kernel started at the same moment (KERNEL_START_ATTEMPTS)
PORT_CLASH = re.compile(
    r"(?:Traceback \(most recent call last\):\n(?:[ \t][^\n]*\n)+zmq\.error\.ZMQError: Address already in use.*\n)+"
)

# ipykernel 7.4's shutdown race, as a kernel log caught it once (a fresh clone's `make test`, 2026-12-06)
SHUTDOWN_NOISE = """\
ERROR:tornado.general:Uncaught exception in ZMQStream callback
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/zmq/eventloop/zmqstream.py", line 585, in _log_error
    f.result()
  File "/venv/lib/python3.11/site-packages/ipykernel/kernelbase.py", line 408, in process_control
    sys.stderr.flush()
  File "/venv/lib/python3.11/site-packages/ipykernel/iostream.py", line 343, in schedule
    self._event_pipe.send(b"")
  File "/venv/lib/python3.11/site-packages/zmq/sugar/socket.py", line 713, in send
    return super().send(data, flags=flags, copy=copy, track=track)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "zmq/backend/cython/_zmq.py", line 190, in zmq.backend.cython._zmq._check_rc
zmq.error.ZMQError: Socket operation on non-socket
"""


@pytest.mark.parametrize(
    ("at_exit", "kept"),
    [
        (SHUTDOWN_NOISE, None),
        (SHUTDOWN_NOISE + "the kernel's own last words\n", "the kernel's own last words\n"),
    ],
    ids=["only-the-race", "the-race-and-more"],
)
def test_ipykernels_shutdown_race_is_not_kept_as_the_kernels_output(tmp_path, at_exit, kept):
    """A real kernel writes the race's traceback to its stderr as it exits (an atexit handler): the run's
    kernel log drops it, and keeps anything else the kernel said."""
    nb = nbformat.read(NOTEBOOKS / "ok.ipynb", as_version=4)
    nb.cells[0].source += '\nat_exit = ""'
    nb.cells.append(
        nbformat.v4.new_code_cell("import atexit, os\natexit.register(os.write, 2, at_exit.encode())")
    )
    nbformat.write(nb, tmp_path / "ok.ipynb")
    result = execute(
        tmp_path / "ok.ipynb",
        tmp_path / "out",
        {"at_exit": at_exit},
        run_token=TOKEN,
        timeout_s=60,
        cwd=tmp_path,
    )
    assert result.status == "FINISHED", result.message
    log = result.output_dir / "ok.kernel.log"
    assert (log.read_text() if log.exists() else None) == kept


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (SHUTDOWN_NOISE * 2, ""),
        ("before\n" + SHUTDOWN_NOISE + "after\n", "before\nafter\n"),
        (SHUTDOWN_NOISE.rstrip("\n"), ""),  # the log's last line, unterminated
        # the same error without tornado's header, or another error under the header: the kernel's own
        (SHUTDOWN_NOISE.split("\n", 1)[1], SHUTDOWN_NOISE.split("\n", 1)[1]),
        (SHUTDOWN_NOISE.replace("Socket operation on non-socket", "Address in use"), None),
        ("", ""),
        # a large log: its end is read (the race comes at shutdown), all before it kept as it is
        (("x" * 99 + "\n") * 1000 + SHUTDOWN_NOISE, ("x" * 99 + "\n") * 1000),
    ],
)
def test_only_the_shutdown_race_traceback_is_dropped_from_a_kernel_log(tmp_path, text, kept):
    from labkit.runner.execute import _drop_shutdown_noise

    log = tmp_path / "k.kernel.log"
    log.write_text(text)
    _drop_shutdown_noise(log)
    assert log.read_text() == (text if kept is None else kept)


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).map(
            lambda t: t.replace("\n", " ") + "\n"
        ),
        max_size=6,
    ),
    at=st.lists(st.integers(0, 6), max_size=3),
)
def test_any_kernel_output_around_the_race_is_kept_byte_for_byte(tmp_path_factory, lines, at):
    """Whatever else the kernel printed, before, between or after any number of the race's tracebacks,
    is what the log keeps."""
    from labkit.runner.execute import _drop_shutdown_noise

    with_noise = list(lines)
    for k in sorted(at, reverse=True):
        with_noise.insert(min(k, len(with_noise)), SHUTDOWN_NOISE)
    log = tmp_path_factory.mktemp("log") / "k.kernel.log"
    log.write_bytes("".join(with_noise).encode())
    _drop_shutdown_noise(log)
    assert log.read_bytes() == "".join(lines).encode()


def test_a_kernel_is_not_interrupted_on_its_way_out(tmp_path):
    """jupyter_client sends a kernel SIGINT before its shutdown request; landing in ipykernel's handler of the
    last request, it logged "KeyboardInterrupt caught in kernel." into a FINISHED run's kernel log (4 runs in
    160, four at a time). labkit's manager sends no SIGINT at shutdown; an interrupt asked for still goes."""
    import asyncio
    import concurrent.futures

    from papermill.engines import papermill_engines

    from labkit.runner.kernels import register_engine

    register_engine()
    # ZeroMQ over Unix sockets in tmp_path: no free TCP port to draw, so no clash with another test's kernel
    manager = papermill_engines.get_engine("labkit").kernel_manager_class(
        kernel_name="python3", transport="ipc", ip=str(tmp_path / "kernel")
    )
    sent = []
    signal_kernel = manager._async_signal_kernel

    async def spy(signum):
        sent.append(signum)
        await signal_kernel(signum)

    manager._async_signal_kernel = spy

    async def life():
        await manager.start_kernel()
        client = manager.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=60)
            await manager.interrupt_kernel()
            await manager.shutdown_kernel()
        finally:
            client.stop_channels()

    # In a thread of its own: on the worker that ran the browser tests, the session's Playwright keeps its
    # event loop running in the main thread until the session ends (tests/chromium.py), and asyncio.run()
    # refuses to start inside a running loop (seen when one worker ran the whole suite).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, life()).result(timeout=120)
    assert sent == [signal.SIGINT]
    assert not kernels()
    assert not list(tmp_path.iterdir())  # the sockets went with the kernel


def test_ok_finishes_with_results_figure_and_html(runs):
    result = runs("ok")
    assert result.status == "FINISHED", result.message
    assert result.ok and result.message is None and result.cell is None and result.ename is None
    assert result.results == result.output_dir / "results.json"
    assert json.loads(result.results.read_text())["meta"]["run_token"] == TOKEN
    assert result.executed == result.output_dir / "ok.ipynb"
    assert result.html == result.output_dir / "ok.html"
    assert "hello from ok" in result.html.read_text()
    assert result.figures == [result.output_dir / "figure.png"]
    # removed when the kernel said nothing; only a start retried because another test's kernel drew the
    # same free port leaves a log, the dead kernel's traceback
    log = result.output_dir / "ok.kernel.log"
    assert not log.exists() or PORT_CLASH.fullmatch(log.read_text()), log.read_text()
    assert result.figures[0].read_bytes().startswith(b"\x89PNG")
    assert result.started_at < result.ended_at <= time.time()
    assert result.output_dir.is_absolute()
    assert not kernels()


def test_cell_that_raises_fails_naming_cell_and_error(runs):
    result = runs("raises")
    assert result.status == "FAILED"
    assert (result.cell, result.ename) == (2, "ValueError")
    assert result.message == (
        'cell 2 (raise ValueError("bad input: x must be positive")) raised ValueError: bad input: x must be positive'
    )
    assert result.results is None
    # the partial notebook is kept with papermill's banner; the cell after the failure never ran
    assert result.executed.is_file() and result.html.is_file()
    cells = executed_cells(result)
    assert "An Exception was encountered" in "".join(cells[0]["source"])
    assert cells[-1]["execution_count"] is None
    assert "ValueError" in result.html.read_text()
    assert not (result.output_dir / "results.json").exists()


def test_sys_exit_0_is_caught_by_the_sentinel(runs):
    result = runs("exits_early")
    assert result.status == "FAILED"
    assert result.message.startswith("the notebook ended without writing results.json (a cell exited early?)")
    assert result.message.endswith("cell 2 (sys.exit(0)) raised SystemExit: 0")
    assert (result.cell, result.ename) == (2, "SystemExit")
    assert result.results is None and result.html.is_file()
    assert "labkit: this run FAILED" in "".join(executed_cells(result)[0]["source"])


def test_kernel_that_exits_is_a_dead_kernel(runs):
    result = runs("dies")
    assert result.status == "FAILED"
    assert (result.cell, result.ename) == (2, "DeadKernelError")
    assert result.message.startswith("the kernel died in cell 2 (os._exit(1))")
    assert result.executed.is_file() and result.html.is_file()
    banner = "".join(executed_cells(result)[0]["source"])
    assert "labkit: this run FAILED: the kernel died in cell 2" in banner
    assert not kernels()


def test_cell_timeout_fails_and_leaves_no_kernel(tmp_path):
    began = time.monotonic()
    result = run("sleeps", tmp_path / "out", timeout_s=2)
    elapsed = time.monotonic() - began
    assert result.status == "FAILED"
    assert (result.cell, result.ename) == (2, "CellTimeoutError")
    assert (
        result.message == "cell 2 (time.sleep(10**6)) ran longer than the 2 s cell timeout (CellTimeoutError)"
    )
    assert elapsed < 2 + 8, f"took {elapsed:.1f} s"  # kernel start + papermill import + kill + export
    assert result.executed.is_file() and result.html.is_file()
    assert not kernels()


def test_a_kernel_that_hangs_on_exit_gets_half_a_second_then_sigterm(tmp_path):
    """ipykernel 7.4 sometimes hangs ~2.5 s on its shutdown request (its control thread flushes through the
    IOPub thread already stopped); here a notebook's own atexit handler hangs for a minute. Once the last cell
    is done, the kernel gets KERNEL_SHUTDOWN_WAIT_S (1 s: 0.5 s, then SIGTERM) — not jupyter_client's 5 s
    (2.5 s, then SIGTERM). The kernel itself notes when its exit began and when SIGTERM came, so the grace
    measured is the kernel's, not the machine's load (a wall-clock bound on the whole run flaked at -n 4)."""
    marks = tmp_path / "marks"
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell('run_token = ""\noutput_dir = "."', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import atexit, os, signal, time\n"
            "def _hang():\n"
            f"    mark = open({str(marks)!r}, 'a')\n"
            "    def _term(*_):\n"
            "        mark.write(f'term {time.monotonic()}\\n'); mark.close(); os._exit(0)\n"
            "    signal.signal(signal.SIGTERM, _term)\n"
            "    mark.write(f'exit {time.monotonic()}\\n'); mark.flush()\n"
            "    time.sleep(60)\n"
            "atexit.register(_hang)"
        ),
        nbformat.v4.new_code_cell(
            "import json, pathlib\n"
            'pathlib.Path(output_dir, "results.json").write_text(json.dumps({"meta": {"run_token": run_token}}))'
        ),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "hangs_on_exit.ipynb"
    nbformat.write(nb, path)
    began = time.monotonic()
    result = execute(path, tmp_path / "out", {}, cwd=tmp_path, run_token=TOKEN, timeout_s=60)
    assert result.status == "FINISHED", result.message
    assert time.monotonic() - began < 30  # not the minute the handler sleeps
    seen = dict(line.split() for line in marks.read_text().splitlines())
    assert set(seen) == {"exit", "term"}, seen  # the kernel was ended by SIGTERM, mid-hang
    grace = float(seen["term"]) - float(seen["exit"])
    assert 0.3 < grace < 1.5, f"{grace:.2f} s"  # 0.5 s here; jupyter_client's default gives 2.5 s
    assert not kernels()


def wait_for_sleep_cell(executed: Path, timeout_s: float = 30) -> None:
    """Until papermill has saved the notebook with the time.sleep cell marked running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            cells = json.loads(executed.read_text())["cells"]
        except (FileNotFoundError, ValueError):  # not written yet, or caught mid-write
            cells = []
        for cell in cells:
            if (
                "time.sleep" in "".join(cell["source"])
                and cell["metadata"].get("papermill", {}).get("status") == "running"
            ):
                return
        time.sleep(0.05)
    raise AssertionError("the sleep cell never started")


def test_sigkill_of_the_kernel_is_a_dead_kernel(tmp_path):
    out = tmp_path / "out"
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("run", run("sleeps", out)))
    worker.start()
    wait_for_sleep_cell(out / "sleeps.ipynb")
    (kernel,) = kernels()
    kernel.send_signal(signal.SIGKILL)
    worker.join(30)
    result = box["run"]
    assert result.status == "FAILED"
    assert (result.cell, result.ename) == (2, "DeadKernelError")
    assert result.executed.is_file() and result.html.is_file()


def test_cancel_all_kills_runs_in_worker_threads(tmp_path):
    out = tmp_path / "out"
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("run", run("sleeps", out)))
    worker.start()
    wait_for_sleep_cell(out / "sleeps.ipynb")
    pids = [k.pid for k in kernels()]
    assert cancel_all("SIGTERM") == 1
    worker.join(30)
    result = box["run"]
    assert (result.status, result.ename, result.cell) == ("KILLED", "SIGTERM", 2)
    assert result.message == "interrupted by SIGTERM in cell 2 (time.sleep(10**6))"
    assert result.executed.is_file() and result.html.is_file()
    assert gone(pids, within_s=5)


CHILD = """\
import json, sys
from pathlib import Path
from labkit.runner import execute
result = execute(Path(sys.argv[1]), Path(sys.argv[2]), {}, cwd=Path(sys.argv[2]).parent, run_token="t", timeout_s=120)
print(json.dumps(result.to_dict()), flush=True)
"""


# A child as CHILD that signals its own process from asyncio's Handle._run once the test creates FLAG: inside
# the next callback ("inside": a handler's exception there is logged and dropped by the loop unless it is a
# KeyboardInterrupt or SystemExit) or just before it ("before": in the loop's own frame, between callbacks).
CHILD_SIGNALLED_IN_THE_LOOP = """\
import asyncio.events, json, os, signal, sys
from pathlib import Path
from labkit.runner import execute
notebook, out, flag, signum, where = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
original = asyncio.events.Handle._run
def _run(self):
    if flag.exists():
        flag.unlink()
        if where == "before":
            os.kill(os.getpid(), signum)
        callback = self._callback
        def signalled(*args):
            os.kill(os.getpid(), signum)
            return callback(*args)
        if where == "inside":
            self._callback = signalled
    return original(self)
asyncio.events.Handle._run = _run
result = execute(notebook, out, {}, cwd=out.parent, run_token="t", timeout_s=120)
print(json.dumps(result.to_dict()), flush=True)
"""


@pytest.mark.parametrize(
    ("signum", "where"),
    [(signal.SIGINT, "inside"), (signal.SIGTERM, "inside"), (signal.SIGTERM, "before")],
    ids=["SIGINT-in-a-callback", "SIGTERM-in-a-callback", "SIGTERM-before-a-task-step"],
)
def test_a_signal_while_the_event_loop_runs_ends_the_run_killed(tmp_path, signum, where):
    """The signal lands while the main thread runs asyncio's event loop, in which nbclient waits on the
    kernel (on a loaded machine a Ctrl-C often lands there). An exception raised inside a callback was
    dropped by the loop — the run went on, its sleeping cell for ever (both "in-a-callback" cases hung on the
    code before); now the handler kills the kernel instead, and the run ends KILLED in its cell, with nothing
    logged."""
    out, flag = tmp_path / "out", tmp_path / "signal-now"
    args = [str(NOTEBOOKS / "sleeps.ipynb"), str(out), str(flag), str(int(signum)), where]
    child = cli_fork.python(CHILD_SIGNALLED_IN_THE_LOOP, args, tmp_path, dict(os.environ))
    try:
        wait_for_sleep_cell(out / "sleeps.ipynb")
        pids = [p.pid for p in psutil.Process(child.pid).children(recursive=True)]
        flag.touch()
        stdout, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert not flag.exists(), "no asyncio callback ran after the flag"
    assert child.returncode == 0, stderr
    assert stderr == "", stderr  # nothing logged by the loop, no task destroyed pending
    result = json.loads(stdout.strip().splitlines()[-1])
    name = signal.Signals(signum).name
    assert (result["status"], result["ename"], result["cell"]) == ("KILLED", name, 2)
    assert result["message"] == f"interrupted by {name} in cell 2 (time.sleep(10**6))"
    assert "labkit: this run KILLED" in Path(result["executed"]).read_text()
    assert gone(pids, within_s=5)


@pytest.mark.parametrize(
    ("signum", "times"),
    [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGINT, 3)],
    ids=["SIGINT", "SIGTERM", "SIGINT-x3"],
)
def test_signal_mid_cell_returns_killed_and_kills_the_kernel(tmp_path, signum, times):
    out = tmp_path / "out"
    # a process of its own with the signals of a new interpreter, forked with labkit imported (cli_fork.py)
    child = cli_fork.python(CHILD, [str(NOTEBOOKS / "sleeps.ipynb"), str(out)], tmp_path, dict(os.environ))
    try:
        wait_for_sleep_cell(out / "sleeps.ipynb")
        pids = [
            p.pid
            for p in psutil.Process(child.pid).children(recursive=True)
            if "ipykernel_launcher" in " ".join(p.cmdline())
        ]
        assert len(pids) == 1
        for _ in range(times):  # an impatient user: repeats must not break the cleanup
            child.send_signal(signum)
            time.sleep(0.05)
        stdout, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, stderr  # the run is returned, not raised: the caller picks 130/143
    assert stderr == ""  # no kernel log lines, no asyncio "Task was destroyed" noise in the terminal
    result = json.loads(stdout.strip().splitlines()[-1])
    name = signal.Signals(signum).name
    assert (result["status"], result["ename"], result["cell"]) == ("KILLED", name, 2)
    assert result["message"] == f"interrupted by {name} in cell 2 (time.sleep(10**6))"
    assert Path(result["executed"]).is_file() and Path(result["html"]).is_file()
    assert "labkit: this run KILLED" in Path(result["executed"]).read_text()
    assert gone(pids, within_s=5)


def test_sigkill_of_labkit_leaves_no_kernel_behind(tmp_path):
    """Nothing can run after SIGKILL: ipykernel's parent poller (JPY_PARENT_PID) ends the orphan. Nor is its
    connection file (ports, keys) left in the temporary folder: labkit removed it once the kernel was up."""
    out = tmp_path / "out"
    child = cli_fork.python(CHILD, [str(NOTEBOOKS / "sleeps.ipynb"), str(out)], tmp_path, dict(os.environ))
    try:
        wait_for_sleep_cell(out / "sleeps.ipynb")
        kernels = [
            p
            for p in psutil.Process(child.pid).children(recursive=True)
            if "ipykernel_launcher" in p.cmdline()
        ]
        argv = kernels[0].cmdline() if kernels else []
        child.kill()
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    assert len(kernels) == 1 and gone([k.pid for k in kernels], within_s=5)
    assert (out / "sleeps.ipynb").is_file()  # the partial notebook of the cells before the kill
    assert not Path(argv[argv.index("-f") + 1]).exists()  # it was there when the kernel started


def test_a_kernel_that_dies_while_starting_is_started_again(tmp_path, monkeypatch):
    """Kernels started at the same moment can draw the same free port; the loser dies before its first
    reply, having run nothing. Its first start fails here the way it does then; the run must finish."""
    spec = tmp_path / "jupyter" / "kernels" / "flaky"
    spec.mkdir(parents=True)
    marker = tmp_path / "first-start-failed"
    launcher = (
        "import pathlib, runpy, sys\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.touch()\n"
        '    sys.exit("zmq.error.ZMQError: Address already in use")\n'
        "sys.argv = ['ipykernel_launcher', '-f', sys.argv[1]]\n"
        "runpy.run_module('ipykernel_launcher', run_name='__main__')\n"
    )
    (spec / "kernel.json").write_text(
        json.dumps({"argv": [sys.executable, "-c", launcher, "{connection_file}"], "display_name": "flaky",
                    "language": "python"})
    )  # fmt: skip
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    result = run("ok", tmp_path / "out", kernel_name="flaky")
    assert marker.exists()  # the first start did die
    assert result.status == "FINISHED", result.message
    assert "Address already in use" in (tmp_path / "out" / "ok.kernel.log").read_text()


def test_a_kernel_that_never_answers_while_starting_is_started_again(tmp_path, monkeypatch):
    """The other face of a port drawn twice: no reply to kernel_info until the start timeout."""
    from labkit.runner import kernels

    monkeypatch.setattr(kernels, "KERNEL_START_TIMEOUT_S", 5)
    spec = tmp_path / "jupyter" / "kernels" / "mute"
    spec.mkdir(parents=True)
    marker = tmp_path / "first-start-hung"
    launcher = (
        "import pathlib, runpy, sys, time\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.touch()\n"
        "    time.sleep(600)\n"
        "sys.argv = ['ipykernel_launcher', '-f', sys.argv[1]]\n"
        "runpy.run_module('ipykernel_launcher', run_name='__main__')\n"
    )
    (spec / "kernel.json").write_text(
        json.dumps({"argv": [sys.executable, "-c", launcher, "{connection_file}"], "display_name": "mute",
                    "language": "python"})
    )  # fmt: skip
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    result = run("ok", tmp_path / "out", kernel_name="mute")
    assert marker.exists()  # the first start did hang
    assert result.status == "FINISHED", result.message


def test_kernel_that_cannot_start_fails_the_run(tmp_path, monkeypatch):
    spec = tmp_path / "jupyter" / "kernels" / "broken"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    sys.executable,
                    "-c",
                    "import sys; print('no kernel today', file=sys.stderr); sys.exit(3)",
                    "{connection_file}",
                ],
                "display_name": "broken",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    result = run("ok", tmp_path / "out", kernel_name="broken")
    assert result.status == "FAILED"
    assert result.message.startswith("the notebook could not run: RuntimeError: Kernel died before replying")
    assert result.cell is None and result.ename == "RuntimeError"
    assert "no kernel today" in (tmp_path / "out" / "ok.kernel.log").read_text()
    assert result.executed.is_file() and result.html.is_file()


# ------------------------------------------------------------------------------------ output cap


def test_output_is_capped_per_cell(tmp_path):
    result = run("prints_a_lot", tmp_path / "out", max_output_bytes=2**20)
    assert result.status == "FINISHED", result.message
    cells = executed_cells(result)
    flood = next(c for c in cells if "print(chunk)" in "".join(c["source"]))
    text = "".join("".join(o.get("text", "")) for o in flood["outputs"])
    assert 2**20 <= len(text) < 2**20 + 2**16
    assert "[labkit] this cell's output passed the 1.0 MB cap" in text
    after = next(c for c in cells if 'print("after the flood")' in "".join(c["source"]))
    assert after["outputs"][0]["text"] == ["after the flood\n"]  # the cap is per cell
    rich = next(c for c in cells if "display(HTML" in "".join(c["source"]))
    assert "text/html" not in json.dumps(rich["outputs"])  # 3 MB of HTML replaced by the note
    assert "2.9 MB dropped" in json.dumps(rich["outputs"])
    assert result.executed.stat().st_size < 3 * 2**20
    assert result.html.stat().st_size < 4 * 2**20


def test_printing_200_mb_keeps_labkit_memory_bounded(tmp_path):
    """RELIABILITY 25: without the cap, this run peaked at ~900 MB RSS and wrote a 210 MB notebook."""
    code = textwrap.dedent(
        """\
        import json, re, sys
        from pathlib import Path
        from labkit.runner import execute
        r = execute(Path(sys.argv[1]), Path(sys.argv[2]), {"mb": 200}, cwd=Path(sys.argv[2]).parent, run_token="t")
        # VmHWM is this address space's peak; ru_maxrss would include the forking pytest process's RSS
        # (Linux keeps the pre-exec high-water mark), which made this test fail late in big sessions
        hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
        print(json.dumps([r.status, r.message, hwm / 1024]))
        """
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(NOTEBOOKS / "prints_a_lot.ipynb"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    status, message, max_rss_mb = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status == "FINISHED", message
    assert max_rss_mb < 400, f"labkit peaked at {max_rss_mb:.0f} MB"
    assert (out / "prints_a_lot.ipynb").stat().st_size < 20 * 2**20  # 10 MB cap + the 3 MB display


# ------------------------------------------------------------------------------------ parameters


HOSTILE = {
    "quotes": 'it\'s "quoted" \'\'\'triple\'\'\' """too"""',
    "sql": "'; DROP TABLE x;--",
    "shell": "$(touch {canary})",
    "backticks": "`touch {canary}`",
    "newline": "a\nb = 1\nimport os",
    "crlf": "line\r\nnext",
    "rlo": "\u202eevil\u202c",
    "backslashes": 'C:\\new\\table\\\\ \\" \\u0041 \\x41',
    "nul": "before\x00after",
    "braces": "{run_token} {0} {pm}",
    "emoji": "\U0001f600 é ß 中",
    "empty": "",
    "html": "<script>alert(1)</script><img src=x onerror=alert(2)>",
    "nested": {"key\nwith'quote": ['"', "\\", {"deep": "$(id)"}], "n": 1.5, "none": None, "flag": True},
    "numbers": [0, -1, 2**63, 1e-300, 1.5e300],
}


def test_hostile_strings_arrive_exactly(tmp_path):
    canary = tmp_path / "pwned"
    params = json.loads(json.dumps(HOSTILE).replace("{canary}", str(canary)))
    result = run("params_echo", tmp_path / "out", params, cwd=tmp_path)
    assert result.status == "FINISHED", result.message
    payload = json.loads(result.results.read_text())
    for name, value in params.items():
        assert payload["received"][name] == value, name
    assert payload["received"]["run_token"] == TOKEN  # injected by execute
    assert payload["received"]["output_dir"] == str(result.output_dir)
    assert payload["cwd"] == str(tmp_path)  # the kernel's cwd; labkit's own is untouched
    assert os.getcwd() != str(tmp_path)
    assert not canary.exists()
    page = result.html.read_text()
    assert "alert(1)" in page and "<script>alert(1)" not in page and "<img src=x" not in page


def test_runner_values_win_over_caller_run_token_and_output_dir(tmp_path):
    result = run("params_echo", tmp_path / "out", {"run_token": "forged", "output_dir": "/elsewhere"})
    assert result.status == "FINISHED", result.message
    received = json.loads(result.results.read_text())["received"]
    assert (received["run_token"], received["output_dir"]) == (TOKEN, str(tmp_path / "out"))


@pytest.mark.parametrize("name", ["x\nimport os", "class", "None", "1x", "", "a-b", "x y", "é\n", 3, None])
def test_bad_parameter_names_are_refused(name):
    with pytest.raises(
        LabkitError, match=r"notebook parameter name .* is not allowed; a name must be a Python identifier"
    ):
        check_parameters({name: 1})


class Colour(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (dt.date(2026, 11, 1), r"parameter start: a date value is not allowed; pass it as an ISO string"),
        (
            dt.datetime(2026, 11, 1, 12),
            r"parameter start: a datetime value is not allowed; pass it as an ISO string",
        ),
        (b"bytes", r"parameter start: a bytes value is not allowed; decode it to a str first"),
        ((1, 2), r"parameter start: a tuple value is not allowed; pass a list"),
        ({1, 2}, r"parameter start: a set value is not allowed; pass a sorted list"),
        (frozenset(), r"parameter start: a frozenset value is not allowed"),
        (decimal.Decimal("1.5"), r"parameter start: a Decimal value is not allowed"),
        (float("nan"), r"parameter start: nan is not a JSON number"),
        (float("inf"), r"parameter start: inf is not a JSON number"),
        (object(), r"parameter start: a object value is not allowed; only str, int, float"),
        ([1, (2, 3)], r"parameter start\[1\]: a tuple value is not allowed"),
        ({"a": {"b": dt.date(2026, 1, 1)}}, r"parameter start\['a'\]\['b'\]: a date value"),
        ({1: "x"}, r"parameter start: dict key 1 is not a str"),
        ("\ud800", r"parameter start: not valid Unicode text"),
    ],
)
def test_non_json_values_are_refused(value, message):
    with pytest.raises(LabkitError, match=message):
        check_parameters({"start": value})


def test_cyclic_value_is_refused():
    loop: list = []
    loop.append(loop)
    with pytest.raises(LabkitError, match=r"parameter x\[0\]: the value contains itself"):
        check_parameters({"x": loop})


def test_check_parameters_returns_a_plain_json_copy():
    np = pytest.importorskip("numpy")
    params = {
        "alpha": np.float64(0.05),
        "arms": ["a", "b"],
        "colour": Colour.RED,
        "meta": {"k": None},
        "ok": True,
    }
    clean = check_parameters(params)
    assert clean == {"alpha": 0.05, "arms": ["a", "b"], "colour": 1, "meta": {"k": None}, "ok": True}
    assert type(clean["alpha"]) is float and type(clean["colour"]) is int
    assert clean["arms"] is not params["arms"]
    assert json.loads(json.dumps(clean)) == clean


def test_execute_refuses_bad_parameters_before_anything_runs(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(LabkitError, match="a date value is not allowed"):
        run("ok", out, {"start": dt.date(2026, 11, 1)})
    with pytest.raises(LabkitError, match="is not allowed; a name must be"):
        run("ok", out, {"x\nimport os; os.system('touch pwned')": 1})
    assert not out.exists()


# ------------------------------------------------------------------------------------ notebooks


def write_notebook(path: Path, *, tagged: bool = True, kernelspec: dict | None = None) -> Path:
    cell = nbformat.v4.new_code_cell('run_token = ""\noutput_dir = "."')
    if tagged:
        cell.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["kernelspec"] = kernelspec or {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


def test_check_notebook_accepts_the_fixtures():
    for name in ["ok", "raises", "exits_early", "dies", "sleeps", "params_echo", "prints_a_lot"]:
        check_notebook(NOTEBOOKS / f"{name}.ipynb")


def test_notebook_without_parameters_cell_is_refused(tmp_path):
    with pytest.raises(LabkitError, match=r"no_parameters\.ipynb: no code cell is tagged 'parameters'"):
        check_notebook(NOTEBOOKS / "no_parameters.ipynb")
    with pytest.raises(LabkitError, match="no code cell is tagged 'parameters'"):
        run("no_parameters", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"just some notes, not a notebook\n", r"not a notebook: invalid JSON at line 1 column 1"),
        (b'{"cells": [}', r"not a notebook: invalid JSON at line 1 column 12"),
        (b"[1, 2]", r"not a notebook: JSON without an 'nbformat' version"),
        (b"\xff\xfe{}", r"not a notebook: not valid UTF-8 \(byte 0\)"),
        (
            b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": "nope"}',
            r"not a valid nbformat v4 notebook: ",
        ),
        (
            b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "code"}]}',
            r"not a valid nbformat v4 notebook: ",
        ),
    ],
    ids=[
        "plain-text",
        "invalid-json",
        "json-not-notebook",
        "not-utf8",
        "cells-not-list",
        "cell-missing-fields",
    ],
)
@pytest.mark.filterwarnings("ignore::nbformat.warnings.MissingIDFieldWarning")  # nbformat on "cells": "nope"
def test_broken_notebook_files_are_refused(tmp_path, content, message):
    path = tmp_path / "not_a_notebook.ipynb"
    path.write_bytes(content)
    with pytest.raises(LabkitError, match=rf"not_a_notebook\.ipynb: {message}"):
        check_notebook(path)


def test_missing_path_and_directory_are_refused(tmp_path):
    with pytest.raises(LabkitError, match=r"missing\.ipynb: no such notebook"):
        check_notebook(tmp_path / "missing.ipynb")
    (tmp_path / "dir.ipynb").mkdir()
    with pytest.raises(LabkitError, match=r"dir\.ipynb: not a notebook file"):
        check_notebook(tmp_path / "dir.ipynb")


def test_unknown_kernel_is_refused_with_the_installed_ones(tmp_path):
    path = write_notebook(tmp_path / "nb.ipynb")
    with pytest.raises(LabkitError, match=r"kernel 'nope' is not installed; installed kernels: .*python3"):
        check_notebook(path, kernel_name="nope")
    with pytest.raises(LabkitError, match=r"kernel 'nope' is not installed"):
        execute(path, tmp_path / "out", {}, cwd=tmp_path, run_token=TOKEN, kernel_name="nope")


def test_notebook_in_another_language_is_refused(tmp_path):
    path = write_notebook(
        tmp_path / "nb.ipynb", kernelspec={"name": "ir", "display_name": "R", "language": "R"}
    )
    with pytest.raises(LabkitError, match=r"the notebook is written in R but kernel 'python3' runs python"):
        check_notebook(path)


def test_kernelspec_name_of_the_notebook_does_not_override_kernel_name(tmp_path):
    """A Python notebook saved under another kernel name runs with the kernel labkit is told to use."""
    path = write_notebook(
        tmp_path / "nb.ipynb",
        kernelspec={"name": "conda-env-old-py", "display_name": "old", "language": "python"},
    )
    check_notebook(path)


def test_output_dir_may_not_be_the_notebook_folder(tmp_path):
    path = write_notebook(tmp_path / "nb.ipynb")
    with pytest.raises(LabkitError, match="output_dir is the notebook's own folder"):
        execute(path, tmp_path, {}, cwd=tmp_path, run_token=TOKEN)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"run_token": ""}, "run_token must be a non-empty string"),
        ({"timeout_s": 0}, "timeout_s must be a positive whole number"),
        ({"timeout_s": 1.5}, "timeout_s must be a positive whole number"),
        ({"max_output_bytes": 10}, "max_output_bytes must be a whole number of at least 1024"),
        ({"cwd": Path("/nonexistent/labkit")}, "the notebook's working directory does not exist"),
    ],
)
def test_bad_execute_arguments_are_refused(tmp_path, kwargs, message):
    args = {"cwd": tmp_path, "run_token": TOKEN} | kwargs
    with pytest.raises(LabkitError, match=message):
        execute(NOTEBOOKS / "ok.ipynb", tmp_path / "out", {}, **args)


# ------------------------------------------------------------------------------------ sentinel, files


def test_stale_results_from_another_run_do_not_count(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"meta": {"run_token": "an-earlier-run"}}))
    (out / "old.png").write_bytes(b"\x89PNG old")
    result = run("exits_early", out)
    assert result.status == "FAILED" and result.results is None
    assert result.message.startswith("results.json was not written by this run")
    assert result.message.endswith("cell 2 (sys.exit(0)) raised SystemExit: 0")
    assert result.figures == []  # old.png was there before the run


def test_html_export_failure_does_not_hide_the_run_failure(tmp_path, monkeypatch):
    from nbconvert import HTMLExporter

    def broken(self, nb, resources=None, **kw):
        raise RuntimeError("template missing")

    monkeypatch.setattr(HTMLExporter, "from_notebook_node", broken)
    failed = run("raises", tmp_path / "a")
    assert failed.status == "FAILED" and failed.html is None
    assert failed.message.startswith("cell 2 (raise ValueError(")
    finished = run("ok", tmp_path / "b")
    assert finished.status == "FINISHED" and finished.html is None
    assert finished.message == "finished, but the html export failed: RuntimeError: template missing"
    assert not (tmp_path / "b" / "ok.html").exists()


def test_to_dict_is_json_ready(runs):
    data = runs("ok").to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["status"] == "FINISHED" and data["figures"][0].endswith("figure.png")


def test_runs_in_parallel_threads_do_not_mix(tmp_path):
    """The pipeline may run pilots in worker threads: no process-wide chdir, one event loop per thread."""
    names = ["ok", "raises", "exits_early", "params_echo"]
    results: dict[str, NotebookRun] = {}
    threads = [
        threading.Thread(target=lambda n=n: results.setdefault(n, run(n, tmp_path / n, cwd=tmp_path)))
        for n in names
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert {n: results[n].status for n in names} == {
        "ok": "FINISHED",
        "raises": "FAILED",
        "exits_early": "FAILED",
        "params_echo": "FINISHED",
    }
    assert (results["raises"].cell, results["exits_early"].cell) == (2, 2)
    assert json.loads(results["params_echo"].results.read_text())["received"]["output_dir"] == str(
        tmp_path / "params_echo"
    )
    assert not kernels()
