"""`labkit ui`: a real MLflow server on a fresh lab's store, bound to 127.0.0.1, stopped through a
parent-death signal when `labkit ui` itself is SIGKILLed; a busy or invalid port is refused before anything
starts (RELIABILITY.md cases 40, 41).

The checks of the bind and of the process tree are tests/ui_checks.py's. The other way `labkit ui` ends — a
signal it handles (SIGHUP here; SIGTERM and SIGINT take the same path) — is the last test of
tests/test_browser.py, on the demo lab's `labkit ui` that the browser tests used: one `mlflow server` start
(~10 CPU-s on 2 cores) instead of a second one here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from mlflow_server import free_port
from processes import still_alive
from ui_checks import check_bound_to_localhost, check_links, get_status, listening, socket_inodes


def test_the_socket_table_reader_sees_a_known_bind():
    """The reader itself: a socket bound to 127.0.0.1 is 0100007F in tcp, one on 0.0.0.0 is 00000000."""
    for host, expected in (("127.0.0.1", "0100007F"), ("0.0.0.0", "00000000")):
        with socket.socket() as s:
            s.bind((host, 0))
            s.listen()
            port = s.getsockname()[1]
            ((table, address, inode),) = listening(port)
            assert (table, address) == ("tcp", expected)
            assert inode in socket_inodes(os.getpid())


# ------------------------------------------------------------------------ cases 40 and 41 (issue #13)


def _ui(root, *args: str, stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "labkit.cli", "ui", *args], cwd=root, stdout=stdout, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip


def test_ui_on_a_busy_port_is_one_line_and_no_link(tiny_lab):
    """Another program listens on the port: a link printed now would open that program (case 41)."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = _ui(tiny_lab.root, "--port", str(port))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert out == ""
    assert err == (
        f"cannot serve the MLflow UI on 127.0.0.1:{port}: Address already in use; "
        "another program listens on that port; choose another with --port\n"
    )
    assert not (tiny_lab.root / "results").exists()  # refused before the store was created


def test_ui_on_an_invalid_port_or_host_is_one_line_and_no_link(tiny_lab):
    cases = {
        ("--port", "0"): "--port: 0 is not a TCP port; give a number from 1 to 65535 (default 5000)",
        ("--port", "65536"): "--port: 65536 is not a TCP port; give a number from 1 to 65535 (default 5000)",
        ("--port", "-1"): "--port: -1 is not a TCP port; give a number from 1 to 65535 (default 5000)",
        ("--host", "no-such-host.invalid"): "--host: cannot use 'no-such-host.invalid': ",
    }
    for args, message in cases.items():
        proc = _ui(tiny_lab.root, *args)
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, out) == (1, ""), (args, out, err)
        assert err.startswith(message) and err.count("\n") == 1, (args, err)
    assert not (tiny_lab.root / "results").exists()


def _wait_for_links(proc: subprocess.Popen, out_path, timeout: float = 120) -> list[str]:
    """The lines `labkit ui` printed, once it printed its three (the links and the log's name)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = out_path.read_text().splitlines()
        if len(lines) >= 3:
            return lines
        assert proc.poll() is None, f"labkit ui exited with {proc.returncode}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "labkit ui printed no link within the timeout"
        time.sleep(0.1)


def test_ui_binds_localhost_and_its_server_ends_with_it_on_sigkill(tmp_path):
    """`labkit ui` on a lab with no store yet prints its links only once /health answers, and nothing of
    MLflow's own log reaches the terminal; it binds 127.0.0.1 only and refuses a foreign Host; a SIGKILL of
    `labkit ui` — no handler runs — leaves neither its `mlflow server` nor the uvicorn process under it
    running (case 40): the parent-death signal stops them."""
    import psutil

    from conftest import LAB_YAML

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "lab.yaml").write_text(LAB_YAML)
    port = free_port()
    with open(tmp_path / "stdout.txt", "w") as out:  # the child writes it
        proc = _ui(tmp_path, "--port", str(port), stdout=out)
    tree: list[int] = []
    try:
        check_links(_wait_for_links(proc, tmp_path / "stdout.txt"), "tiny-lab", "tiny-pilots", port)
        assert get_status(f"http://127.0.0.1:{port}/health") == 200  # answering when the link was printed
        assert "Uvicorn running" in (tmp_path / "results" / f"mlflow-ui-{port}.log").read_text()
        tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert len(tree) >= 2, "mlflow server and its uvicorn process"
        check_bound_to_localhost(proc, port)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        assert still_alive(tree, within_s=15) == [], "SIGKILL of labkit ui left its server running"
        assert proc.stderr.read() == ""  # nothing from MLflow, no traceback
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing serves the port any more
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in still_alive(tree, within_s=0):
            os.kill(pid, signal.SIGKILL)
