"""A real ``mlflow server`` on 127.0.0.1 for the test session, stopped by its process group.

Import the fixture into ``tests/conftest.py`` (``from mlflow_server import mlflow_server``) or into a test
module. It yields the server's http URI as a ``ServerURI``: a plain ``str`` that also carries the paths of
the server's sqlite store, artifact folder and log, so privacy tests can scan what the server stored.

Started as RELIABILITY.md recommends: ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` and ``--workers 1`` (the
defaults took 36–49 s to start and left job-runner processes alive after SIGTERM), a sqlite backend and
``--artifacts-destination`` under a temporary folder, telemetry off.

Under pytest-xdist the workers of one run share one server: the first worker that needs it starts it
under a file lock in the run's shared temporary folder and writes down its URI and pid; the others read
them. It outlives that worker and is stopped by its process group by the controller at the end of the run
(:func:`stop_shared_server`, from tests/conftest.py). Tests already treat the server as shared: each
records into an experiment of its own.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

START_TIMEOUT = 90.0  # seconds; ~11 s is typical on 2 cores, more under a loaded CI runner
STOP_TIMEOUT = 10.0


class ServerURI(str):
    """The server's http URI; ``db_path``, ``artifacts_dir``, ``log_path`` and ``pid`` ride along."""

    db_path: Path
    artifacts_dir: Path
    log_path: Path
    pid: int


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 (also used to get a closed port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_server(
    root: Path, *, port: int | None = None, args: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, ServerURI]:
    """Start ``mlflow server`` with its store and artifacts under ``root``; return once /health answers.

    ``port`` (default: a free one) restarts a server where it was; ``args`` are more server options
    (``--app-name basic-auth``); ``env`` more environment (the auth app's config and secret)."""
    root.mkdir(parents=True, exist_ok=True)
    db_path = root / "mlflow.db"
    artifacts = root / "artifacts"
    artifacts.mkdir(exist_ok=True)
    log_path = root / "server.log"
    if not db_path.exists():
        # The store the server would make itself (its Default experiment in mlflow-artifacts:/), made here
        # from labkit's cached empty store (labkit.tracking.schema): the server's own first start would run
        # MLflow's ~100 migrations, ~1.5 of its ~9 CPU-s, before it answers.
        from labkit.tracking.schema import build_sqlite_store

        build_sqlite_store(db_path, "mlflow-artifacts:/", lambda: None)
    port = port or free_port()
    env = {**os.environ, **(env or {})}
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{db_path}",
        "--artifacts-destination", str(artifacts), *args,
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        # A new session makes the server the leader of its own process group: stopping the group by
        # its id stops every worker it forked, and nothing else.
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=root,
            start_new_session=True,
        )  # fmt: skip
    uri = ServerURI(f"http://127.0.0.1:{port}")
    uri.db_path, uri.artifacts_dir, uri.log_path, uri.pid = db_path, artifacts, log_path, process.pid
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{_tail(log_path)}")
        if _healthy(uri):
            return process, uri
        time.sleep(0.25)
    stop_server(process)
    raise RuntimeError(
        f"mlflow server did not answer /health within {START_TIMEOUT:.0f} s:\n{_tail(log_path)}"
    )


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it has not exited within STOP_TIMEOUT."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    try:  # workers left behind in the group, or a leader that ignored SIGTERM
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait(timeout=STOP_TIMEOUT)


_shared: dict = {}  # one server per session, even when conftest.py and a test module both import the fixture
SHARED_STATE = "mlflow-server.json"  # in the run's shared folder under xdist: the server's URI, paths and pid


def _shared_folder(tmp_path_factory) -> Path | None:
    """Under xdist, the folder every worker of this run shares (the parent of each worker's base temp)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    return tmp_path_factory.getbasetemp().parent


def _server_of_the_run(folder: Path) -> ServerURI:
    """The run's server: started by the first worker that asks (under a lock), read by the others."""
    state = folder / SHARED_STATE
    with open(folder / "mlflow-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not state.exists():
            process, uri = start_server(folder / "mlflow-server")
            _shared["process"] = process  # kept: the controller stops it, after this worker has ended
            fields = {"uri": str(uri), "pid": uri.pid, "db_path": str(uri.db_path)}
            fields |= {"artifacts_dir": str(uri.artifacts_dir), "log_path": str(uri.log_path)}
            state.write_text(json.dumps(fields))
        fields = json.loads(state.read_text())
    uri = ServerURI(fields["uri"])
    uri.db_path, uri.artifacts_dir = Path(fields["db_path"]), Path(fields["artifacts_dir"])
    uri.log_path, uri.pid = Path(fields["log_path"]), fields["pid"]
    return uri


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_shared_server(folder: Path) -> None:
    """Stop the run's shared server (if a worker started one): SIGTERM to its process group, then SIGKILL."""
    state = folder / SHARED_STATE
    if not state.exists():
        return
    pid = json.loads(state.read_text())["pid"]
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, signum)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _alive(pid):
            break
    state.unlink()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> ServerURI:
    """A real ``mlflow server`` on 127.0.0.1 for the whole session; yields its http URI."""
    folder = _shared_folder(tmp_path_factory)
    if folder is not None:
        yield _server_of_the_run(folder)
        return
    if not _shared:
        process, uri = start_server(tmp_path_factory.mktemp("mlflow-server"))
        _shared.update(process=process, uri=uri, users=0)
    _shared["users"] += 1
    try:
        yield _shared["uri"]
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            stop_server(_shared.pop("process"))
            _shared.clear()
