"""`labkit` commands as processes forked from one interpreter that has already imported labkit.

A new interpreter pays ~3 CPU-s of imports (MLflow, SQLAlchemy, nbconvert, Ibis, pandas) before
``labkit run`` does anything; a module of the suite that starts ten of them pays that ten times, and on
two cores the suite is CPU-bound. Where a test's claim is about what a command does — its runs, its
store, its outputs, its exit code, how it meets a signal, a fault or a dead server — and not about the
interpreter starting, it runs the command here: a *fork server* has imported what the commands import,
and forks a child for each command. Under pytest-xdist the run has one, started by the controller before
the workers (tests/conftest.py) and shared by them through a Unix socket, so its imports are paid once;
a test process without it (``-n 0``, ``python -m pytest`` alone) starts one of its own. The child is a
process of its own (its pid, a new interpreter's signal dispositions — SIGINT raises KeyboardInterrupt,
SIGTERM and SIGHUP kill, SIGPIPE is ignored —, its working folder, environment, stdin from /dev/null,
stdout and stderr in files, its own sqlite connections, kernels and MLflow client) that runs
``labkit.cli.main(args)`` and exits as ``python -m labkit.cli`` does: through ``sys.exit`` (atexit
handlers, flushed streams), an uncaught exception printing its traceback and exiting 1. Nothing of labkit
is replaced; only the imports (and the HTML exporters, built once) are shared. ``labkit demo`` of the
session's demo lab (tests/demo_lab.py) is forked here too. tests/reliability/test_concurrency.py forks its
eight processes here (behind a barrier).

New interpreters stay where the start or the process's own state is the claim: the console script and
``python -m`` (tests/test_cli.py, which also checks that a forked command ends as a new interpreter does;
tests/test_cli_exit.py), one batch of tests/test_pipeline.py, the
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
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# What the commands import on their way (CLI, spec models, preflight, store, kernels, HTML export): imported
# once, before any fork. A child imports anything else itself, as a new interpreter would. The HTML exporters
# are built once too (labkit.runner.export keeps one of each kind per process; building them compiles
# nbconvert's Jinja templates, ~0.35 CPU-s of a forked `labkit run`'s ~0.9): the same warm-up `labkit run`
# itself starts in a thread. A process's first export from scratch stays proved where `labkit run` starts as a
# new interpreter (a batch of tests/test_pipeline.py) and by tests/runner/test_exporter.py.
# Then the heap is frozen: a child's garbage collections skip the imports' objects instead of touching (and
# so copying) every shared page.
PREIMPORTS = """\
import gc, json, os, select, signal, sys, threading
from pathlib import Path
import labkit.cli
with labkit.cli._without_pydantic_plugins():
    import labkit.spec  # noqa: F401 - as main() builds the models: without pydantic's plugin scan
import labkit.runner.lazy_iri
labkit.runner.lazy_iri.defer_iri_grammars()  # as `labkit run` does before nbformat is imported
import mlflow, papermill, labkit.pipeline, labkit.tracking, labkit.analysis  # noqa: F401
import alembic.command, duckdb, ibis.backends.duckdb, ipykernel.kernelspec, nbconvert.exporters.html  # noqa
import mlflow.store.tracking.sqlalchemy_store, rich.progress, rich.table  # noqa: F401
import labkit.runner.execute, labkit.runner.export, labkit.runner.warm, labkit.runner.exporter  # noqa: F401
import labkit.tracking.store, labkit.tracking.writer, labkit.assignment, labkit.data.query  # noqa: F401
import IPython.lib.lexers, bleach, mistune  # noqa: F401 - what the HTML export imports on first use
labkit.runner.export.warm_html_export()
gc.collect()
gc.freeze()
"""

# The server: ``python -c SERVER SOCKET``. It binds its Unix socket first, so that clients may connect (and
# queue requests) while it imports; every connection is a test process, every line on it a request: a
# command to fork. It answers on that connection, one JSON line each: the pid when forked, the exit code
# once reaped. It ends when its stdin closes (its owner ended).
SERVER = (
    """\
import socket, sys
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen(64)
"""
    + PREIMPORTS
    + """
def child(request, inherited):
    # in the forked child: the command's process, set up as subprocess.Popen would set up a new one
    for sock in inherited:  # the server's socket and its connections
        sock.close()
    for fd in list(pidfds):  # its watches of the other children
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

def answer(client, message):
    if client in clients:
        try:
            clients[client][0].sendall(json.dumps(message).encode() + b"\\n")
        except OSError:  # the test process is gone: its children run on, as orphans
            clients.pop(client)[0].close()

clients, pidfds = {}, {}  # connection fd: [socket, unread bytes]; pidfd: (pid, request id, connection fd)
while True:
    ready, _, _ = select.select([0, listener.fileno(), *clients, *pidfds], [], [])
    for fd in ready:
        if fd == 0:
            if not os.read(0, 65536):
                sys.exit(0)  # the owner ended: running children are left as orphans, like any process
        elif fd == listener.fileno():
            conn, _ = listener.accept()
            clients[conn.fileno()] = [conn, b""]
        elif fd in clients:
            conn, pending = clients[fd]
            chunk = conn.recv(65536)
            if not chunk:
                clients.pop(fd)[0].close()
                continue
            *lines, clients[fd][1] = (pending + chunk).split(b"\\n")
            for line in lines:
                request = json.loads(line)
                assert threading.active_count() == 1, "the server must fork from a single thread"
                pid = os.fork()
                if pid == 0:
                    child(request, [listener] + [c for c, _ in clients.values()])
                pidfds[os.pidfd_open(pid)] = (pid, request["id"], fd)
                answer(fd, {"id": request["id"], "pid": pid})
        elif fd in pidfds:
            pid, rid, client = pidfds.pop(fd)
            os.close(fd)
            _, status = os.waitpid(pid, 0)
            answer(client, {"id": rid, "code": os.waitstatus_to_exitcode(status)})
"""
)

# Under pytest-xdist the controller starts one server for the run (tests/conftest.py) and names its socket
# here; the workers' commands are all forked by it. Without it, a test process starts a server of its own.
SHARED_SOCKET = "TESTS_CLI_FORK_SOCKET"


def server_folder(prefix: str = "labkit-cli-fork-") -> Path:
    """A new private folder for a server's socket: in the temporary folder unless its path is long (a Unix
    socket's path must be under 108 bytes), then in /tmp."""
    base = tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base if len(base) <= 60 else "/tmp"))


def start_server(folder: Path) -> subprocess.Popen:
    """A fork server listening on ``folder/socket`` (its stderr in ``folder/server.err``); it ends when its
    stdin closes. Returns at once: clients may connect while it imports."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABKIT_", "MLFLOW_"))}
    with open(folder / "server.err", "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-c", SERVER, str(folder / "socket")], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=err, cwd=folder,
            env=env | {"MLFLOW_DISABLE_TELEMETRY": "true"},
        )  # fmt: skip


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Server:
    """This test process's connection to the fork server (the run's shared one, or its own)."""

    def __init__(self) -> None:
        self.dir = server_folder()  # the commands' stdout and stderr, and a server of its own's socket
        self.owned: subprocess.Popen | None = None
        path = os.environ.get(SHARED_SOCKET)
        if not path:
            self.owned = start_server(self.dir)
            path = str(self.dir / "socket")
        self.stderr = Path(path).parent / "server.err"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + 60
        while True:  # a server of its own binds its socket a moment after it starts
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline or (self.owned and self.owned.poll() is not None):
                    raise RuntimeError(f"the labkit fork server did not start: {self._log()}") from None
                time.sleep(0.05)
        self.alive = True
        self.lock = threading.Lock()
        self.next_id = 0
        self.waiting: dict[int, ForkedProcess] = {}
        threading.Thread(target=self._answers, name="labkit-cli-fork", daemon=True).start()

    def _log(self) -> str:
        try:
            return self.stderr.read_text()[-3000:]
        except OSError:
            return "(no server log)"

    def start(self, proc: ForkedProcess, request: dict) -> None:
        with self.lock:
            self.next_id += 1
            request["id"] = self.next_id
            self.waiting[self.next_id] = proc
            try:
                self.sock.sendall(json.dumps(request).encode() + b"\n")
            except OSError:
                pass  # the server is gone: the answers thread fails every waiting command
        if not proc._forked.wait(120) or proc.pid is None:
            raise RuntimeError(f"the labkit fork server did not fork: {self._log()}")

    def _answers(self) -> None:
        for line in self.sock.makefile("rb"):
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
            self.alive = False
            orphans, self.waiting = list(self.waiting.values()), {}
        for proc in orphans:
            proc._lost = self.stderr
            proc._forked.set(), proc._ended.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self.owned is not None:
            stop_server(self.owned)
        shutil.rmtree(self.dir, ignore_errors=True)


_SERVER: list[_Server] = []
_SERVER_LOCK = threading.Lock()


def _server() -> _Server:
    with _SERVER_LOCK:
        if not _SERVER or not _SERVER[0].alive:
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
