"""`labkit` commands as processes forked from one interpreter that has already imported labkit.

A new interpreter pays ~3 CPU-s of imports (MLflow, SQLAlchemy, nbconvert, Ibis, pandas) before
``labkit run`` does anything; a module of the suite that starts ten of them pays that ten times, and on
two cores the suite is CPU-bound. Where a test's claim is about what a command does — its runs, its
store, its outputs, its exit code, how it meets a signal, a fault or a dead server — and not about the
interpreter starting, it runs the command here: one *fork server* per test process has imported what
the commands import, and forks a child for each command. The child is a process of its own (its pid, a new
interpreter's signal dispositions — SIGINT raises KeyboardInterrupt, SIGTERM and SIGHUP kill, SIGPIPE is
ignored —, its working folder, environment, stdin from /dev/null, stdout and stderr in files, its own sqlite
connections, kernels and MLflow client) that runs ``labkit.cli.main(args)``
and exits as ``python -m labkit.cli`` does: through ``sys.exit`` (atexit handlers, flushed streams), an
uncaught exception printing its traceback and exiting 1. Nothing of labkit is replaced; only the imports
are shared. tests/reliability/test_concurrency.py forks its eight processes the same way (with a barrier).

New interpreters stay where the start or the process's own state is the claim: the console script and
``python -m`` (tests/test_cli.py, which also checks that a forked command ends as a new interpreter does;
tests/test_cli_exit.py), `labkit demo` (tests/demo_lab.py), one batch of tests/test_pipeline.py, the
import-time budgets (tests/test_layers.py), the host time zone (tests/data/test_timezone.py), racers that
need their own hash seeds (tests/assignment/test_assign.py) and a child's peak memory (test_runner).

:func:`run` is ``subprocess.run(capture_output=True, text=True)`` and :func:`popen` a ``subprocess.Popen``
for the calls the tests make (``pid``, ``poll``, ``wait``, ``communicate``, ``send_signal``, ``kill``,
``returncode``), both for ``labkit ARGS`` in ``cwd`` with exactly ``env`` as the environment; :func:`python`
is that ``Popen`` for ``python -c CODE ARGS`` (a test's own script that calls labkit).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# What the commands import on their way (CLI, spec models, preflight, store, kernels, HTML export): imported
# once, before any fork (also by tests/reliability/test_concurrency.py's launcher). A child imports anything
# else itself, as a new interpreter would. Then the heap is frozen: a child's garbage collections skip the
# imports' objects instead of touching (and so copying) every shared page.
PREIMPORTS = """\
import gc, json, os, select, signal, sys, threading
from pathlib import Path
import labkit.cli
with labkit.cli._without_pydantic_plugins():
    import labkit.spec  # noqa: F401 - as main() builds the models: without pydantic's plugin scan
import mlflow, papermill, labkit.pipeline, labkit.tracking, labkit.analysis  # noqa: F401
import alembic.command, duckdb, ibis.backends.duckdb, ipykernel.kernelspec, nbconvert.exporters.html  # noqa
import mlflow.store.tracking.sqlalchemy_store, rich.progress, rich.table  # noqa: F401
import labkit.runner.execute, labkit.runner.export, labkit.runner.warm, labkit.runner.exporter  # noqa: F401
import labkit.tracking.store, labkit.tracking.writer, labkit.assignment, labkit.data.query  # noqa: F401
import IPython.lib.lexers, bleach, mistune  # noqa: F401 - what the HTML export imports on first use
gc.collect()
gc.freeze()
"""

SERVER = (
    PREIMPORTS
    + """
def child(request, inherited):
    # in the forked child: the command's process, set up as subprocess.Popen would set up a new one
    for fd in inherited:  # the server's watches of the other children
        os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a new interpreter starts (SIGPIPE: ignored)
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_TRUNC),
                            (2, request["stderr"], os.O_WRONLY | os.O_TRUNC)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if request.get("code") is not None:  # ``python -c CODE ARGS``: the code runs as __main__ does
        sys.argv = ["-c", *request["args"]]
        exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        sys.exit(0)
    sys.argv = [labkit.cli.__file__, *request["args"]]
    sys.exit(labkit.cli.main(request["args"]))  # unwinds to the top: the interpreter's own exit

os.write(1, b'{"ready": true}\\n')
pending, pidfds = b"", {}
while True:
    ready, _, _ = select.select([0, *pidfds], [], [])
    for fd in ready:
        if fd == 0:
            chunk = os.read(0, 65536)
            if not chunk:
                sys.exit(0)  # the test process ended: running children are left as orphans, like any process
            pending += chunk
            *lines, pending = pending.split(b"\\n")
            for line in lines:
                request = json.loads(line)
                assert threading.active_count() == 1, "the server must fork from a single thread"
                pid = os.fork()
                if pid == 0:
                    child(request, list(pidfds))
                pidfds[os.pidfd_open(pid)] = (pid, request["id"])
                os.write(1, json.dumps({"id": request["id"], "pid": pid}).encode() + b"\\n")
        else:
            pid, rid = pidfds.pop(fd)
            os.close(fd)
            _, status = os.waitpid(pid, 0)
            os.write(1, json.dumps({"id": rid, "code": os.waitstatus_to_exitcode(status)}).encode() + b"\\n")
"""
)


class _Server:
    """The fork server of this test process, started on first use, ended when the process exits."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="labkit-cli-fork-"))
        self.stderr = self.dir / "server.err"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABKIT_", "MLFLOW_"))}
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                cwd=self.dir, env=env | {"MLFLOW_DISABLE_TELEMETRY": "true"},
            )  # fmt: skip
        self.lock = threading.Lock()
        self.next_id = 0
        self.waiting: dict[int, ForkedProcess] = {}
        line = self.proc.stdout.readline()
        if json.loads(line or "{}").get("ready") is not True:
            raise RuntimeError(f"the labkit fork server did not start: {self.stderr.read_text()[-3000:]}")
        threading.Thread(target=self._answers, name="labkit-cli-fork", daemon=True).start()

    def start(self, proc: ForkedProcess, request: dict) -> None:
        with self.lock:
            self.next_id += 1
            request["id"] = self.next_id
            self.waiting[self.next_id] = proc
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        if not proc._forked.wait(60) or proc.pid is None:
            raise RuntimeError(f"the labkit fork server did not fork: {self.stderr.read_text()[-3000:]}")

    def _answers(self) -> None:
        for line in self.proc.stdout:
            answer = json.loads(line)
            with self.lock:
                proc = self.waiting[answer["id"]]
            if "pid" in answer:
                proc.pid = answer["pid"]
                proc._forked.set()
            else:
                with self.lock:
                    del self.waiting[answer["id"]]
                proc.returncode = answer["code"]
                proc._ended.set()
        # the server ended (killed, or this process is exiting): nobody will answer for its children
        with self.lock:
            orphans, self.waiting = list(self.waiting.values()), {}
        for proc in orphans:
            proc._lost = self.stderr
            proc._forked.set(), proc._ended.set()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


_SERVER: list[_Server] = []
_SERVER_LOCK = threading.Lock()


def _server() -> _Server:
    with _SERVER_LOCK:
        if not _SERVER or _SERVER[0].proc.poll() is not None:
            _SERVER[:] = [_Server()]
            atexit.register(_SERVER[0].close)
        return _SERVER[0]


class ForkedProcess:
    """``labkit ARGS`` forked by the server: the subset of ``subprocess.Popen`` the tests use (text mode)."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], code: str | None = None) -> None:
        self.args = ["labkit", *args] if code is None else ["python", "-c", code, *args]
        self.pid: int | None = None
        self.returncode: int | None = None
        self._forked, self._ended = threading.Event(), threading.Event()
        self._lost: Path | None = None  # the server's log, had it ended before this process
        server = _server()
        fd, out = tempfile.mkstemp(prefix="out-", dir=server.dir)
        os.close(fd)
        fd, err = tempfile.mkstemp(prefix="err-", dir=server.dir)
        os.close(fd)
        self._files = Path(out), Path(err)
        request = {"args": list(args), "cwd": str(cwd), "env": dict(env), "code": code}
        server.start(self, request | {"stdout": out, "stderr": err})

    def poll(self) -> int | None:
        return self.returncode if self._ended.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        if self.returncode is None:
            raise RuntimeError(f"the labkit fork server ended first: {self._lost.read_text()[-3000:]}")
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        out, err = self._files
        return out.read_text(errors="replace"), err.read_text(errors="replace")

    def send_signal(self, signum: int) -> None:
        if not self._ended.is_set():
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile: as Popen.send_signal
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def popen(args: list[str], cwd: Path, env: dict[str, str]) -> ForkedProcess:
    """``labkit ARGS`` started in ``cwd`` with ``env``, as ``subprocess.Popen`` would start it."""
    return ForkedProcess(args, cwd, env)


def python(code: str, args: list[str], cwd: Path, env: dict[str, str]) -> ForkedProcess:
    """``python -c CODE ARGS`` started in ``cwd`` with ``env``, forked with labkit and its stack imported."""
    return ForkedProcess(args, cwd, env, code=code)


def run(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300, code: str | None = None
) -> subprocess.CompletedProcess:
    """``labkit ARGS`` (or ``python -c CODE ARGS``) to its end, as ``subprocess.run(capture_output=True,
    text=True, timeout=...)``."""
    proc = ForkedProcess(args, cwd, env, code=code)
    began = time.monotonic()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(60)
        raise subprocess.TimeoutExpired(proc.args, time.monotonic() - began) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
