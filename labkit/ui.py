"""`labkit ui`: the MLflow UI on the lab's store, bound to 127.0.0.1 unless told otherwise.

The UI is `mlflow server` over the lab's tracking store, started with job execution off and one worker
(it starts in seconds and exits cleanly). It has no authentication: keep it on 127.0.0.1, or see the
README for a shared server with MLflow's basic-auth app behind TLS.

MLflow 3's UI opens in its "GenAI" view (traces, no runs table) unless told otherwise, so the command also
prints the address of the lab experiment's runs table in the "Model training" view.

What the command promises, and why (RELIABILITY.md cases 40, 41):

- **The port is checked first.** A port outside 1-65535, a host that does not resolve, or an address
  something else already listens on is one line and exit 1, before the store is touched: a printed link
  would otherwise open whatever program holds that port.
- **A link is printed only once the server answers** (``/health`` is polled): `mlflow server` takes
  10-40 s to start, and a link printed at once leads to "connection refused".
- **MLflow's own log goes to a file** (``results/mlflow-ui-<port>.log``, named in the output; one
  file per port, so two UIs of one lab do not write into one file), not the terminal:
  it is long, and some of its advice (bind 0.0.0.0) is wrong for a lab's unauthenticated UI.
- **The server never outlives the command.** It runs in its own process group, which SIGINT, SIGTERM and
  SIGHUP (a closed terminal) stop as a whole; and on Linux the kernel sends it SIGTERM when `labkit ui`
  dies however it dies, SIGKILL included (``prctl(PR_SET_PDEATHSIG)``) — `mlflow server` passes that
  signal on to the uvicorn process it runs, so both end.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from labkit.errors import SpecError, TrackingError
from labkit.lab import Lab
from labkit.tracking.view import runs_url

LOG_NAME = "mlflow-ui-{port}.log"  # in results/: MLflow's own output, kept out of the terminal; one per port
START_TIMEOUT_S = 180.0  # `mlflow server` took 36-49 s with its defaults on a loaded 2-core machine
_POLL_S = 0.2
_STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class _Stop(Exception):
    """A signal asked `labkit ui` to stop; carries the signal number for the exit code (128 + n)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def server_command(lab: Lab, *, host: str, port: int) -> list[str]:
    uri = lab.tracking_uri
    if uri.startswith(("http://", "https://")):
        from labkit.tracking import display_uri

        raise TrackingError(
            f"the lab records to a shared server ({display_uri(uri)}); open it in a browser instead"
        )
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def check_port(host: str, port: int) -> None:
    """Raise a one-line LabkitError unless ``host:port`` can be bound now (tested by binding it).

    The test socket sets SO_REUSEADDR as the server does, so a port left in TIME_WAIT by a stopped server
    counts as free, while any socket listening on it — on this address or on a wildcard — does not."""
    if not 1 <= port <= 65535:
        raise SpecError(
            "--port", None, "", f"{port} is not a TCP port; give a number from 1 to 65535 (default 5000)"
        )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid host name"
        raise SpecError("--host", None, "", f"cannot use '{host}': {reason}") from None
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            hint = "another program listens on that port; choose another with --port"
        elif exc.errno == errno.EADDRNOTAVAIL:
            hint = f"{host} is not an address of this machine; --host takes one of its own addresses"
        else:
            hint = "choose another --port or --host"
        raise TrackingError(f"cannot serve the MLflow UI on {where}: {exc.strerror or exc}; {hint}") from None


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"  # IPv6 goes in brackets


def _probe_url(host: str, port: int) -> str:
    """Where this machine reaches the server: a wildcard bind is asked on its loopback address."""
    local = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"{_base_url(local, port)}/health"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel send the child SIGTERM when this process dies (Linux only).

    libc is loaded here, in the parent, so the child runs nothing between fork and exec but a prctl call
    and a check that the parent did not die before it (a parent-death signal set too late never comes)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it has not ended within the stop timeout."""
    for signum, wait_s in ((signal.SIGTERM, _STOP_TIMEOUT_S), (signal.SIGKILL, _STOP_TIMEOUT_S)):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 4096))
            lines = fh.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip()[:200] if lines else ""


def serve(
    lab: Lab, *, host: str = "127.0.0.1", port: int = 5000, start_timeout: float = START_TIMEOUT_S
) -> int:
    """Serve the MLflow UI until a signal stops it; the exit code is 128 + the signal's number."""
    from labkit.tracking import Tracker

    command = server_command(lab, host=host, port=port)
    check_port(host, port)
    tracker = Tracker(lab)
    tracker.prepare()  # create the store once, so the server does not race a first run
    log_path = lab.results_dir / LOG_NAME.format(port=port)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}

    def stop(signum, frame):
        raise _Stop(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    proc = None
    try:
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(log_path, "wb")  # noqa: SIM115 -- the child holds it; closed below
        except OSError as exc:
            raise TrackingError(f"cannot write {lab.display(log_path)}: {exc.strerror or exc}") from None
        with log:
            proc = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent(),
            )  # fmt: skip
        shown_log = lab.display(log_path)
        _wait_until_answering(proc, _probe_url(host, port), start_timeout, log_path, shown_log)
        base = _base_url(host, port)
        print(f"MLflow UI for {lab.spec.lab}: {base}  (Ctrl-C stops it)", flush=True)
        print(
            f"runs of experiment '{lab.spec.mlflow_experiment}': {runs_url(base, tracker.experiment_id)}",
            flush=True,
        )
        print(f"MLflow's own log: {shown_log}", flush=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(
                "warning: the MLflow UI has no authentication; anyone who reaches this address sees every run",
                file=sys.stderr,
            )
        code = proc.wait()
        raise TrackingError(
            f"the MLflow server stopped (exit {code}); see {shown_log}: {_last_line(log_path)}"
        )
    except _Stop as stopped:
        return 128 + stopped.signum
    finally:
        # Whatever ended the command (a signal, an error, a server that never answered), the server ends too.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        if proc is not None:
            _stop_group(proc)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait_until_answering(
    proc: subprocess.Popen, url: str, timeout: float, log_path: Path, shown_log: str
) -> None:
    """Return once the server answers ``url``; raise a one-line LabkitError if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while not _answers(url):
        code = proc.poll()
        if code is not None:
            raise TrackingError(
                f"the MLflow server stopped before it answered (exit {code}); see {shown_log}: "
                f"{_last_line(log_path)}"
            )
        if time.monotonic() > deadline:
            raise TrackingError(f"the MLflow server did not answer within {timeout:.0f} s; see {shown_log}")
        time.sleep(_POLL_S)
