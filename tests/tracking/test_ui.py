"""`labkit ui`: a real MLflow server on the lab's store, bound to 127.0.0.1, stopped cleanly by SIGTERM,
SIGHUP and — through a parent-death signal — a SIGKILL of `labkit ui` itself; a busy or invalid port is
refused before anything starts (RELIABILITY.md cases 40, 41).

The bind address is read from the kernel's socket tables (/proc/net/tcp and tcp6): the port's LISTEN
entries must be exactly one, on 127.0.0.1 (``0100007F``), held by the server that `labkit ui` started —
so the check holds on every machine, not only where the host name resolves to another address.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from mlflow_server import free_port


def _get(url: str, host: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def listening(port: int) -> list[tuple[str, str, int]]:
    """(table, local address as the kernel writes it, socket inode) of every LISTEN socket on ``port``."""
    found = []
    for table in ("tcp", "tcp6"):
        path = f"/proc/net/{table}"
        if table == "tcp6" and not os.path.exists(path):  # a kernel without IPv6
            continue
        with open(path) as fh:
            for line in fh.read().splitlines()[1:]:
                fields = line.split()
                address, hex_port = fields[1].rsplit(":", 1)
                if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: TCP_LISTEN
                    found.append((table, address, int(fields[9])))
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


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


def _gone(pids: list[int], within_s: float) -> list[int]:
    """The pids still alive (zombies count as gone: they serve nothing) after ``within_s`` seconds."""
    import psutil

    deadline = time.monotonic() + within_s
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _check_bound_to_localhost(proc: subprocess.Popen, port: int) -> None:
    """The server answers, refuses a foreign Host, and is the one listener on the port, on 127.0.0.1."""
    import psutil

    assert _get(f"http://127.0.0.1:{port}/", host="evil.com") == 403
    # the kernel's view: one listening socket on the port, on 127.0.0.1, and it is the server's
    ((table, address, inode),) = listening(port)
    assert (table, address) == ("tcp", "0100007F")
    tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    assert any(inode in socket_inodes(pid) for pid in tree), "the socket is not the ui server's"
    # nothing listens on the machine's other addresses
    other = socket.gethostbyname(socket.gethostname())
    if not other.startswith("127."):
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((other, port)) != 0


def test_ui_binds_localhost_and_its_server_ends_with_it_on_sighup_or_sigkill(tmp_path):
    """Two `labkit ui` at once (one server start's time). Each prints its links only once /health answers,
    and nothing of MLflow's own log reaches the terminal; the first is checked for its bind (127.0.0.1 only,
    a foreign Host refused) and then gets SIGHUP (a closed terminal), the second SIGKILL: neither leaves its
    `mlflow server`, nor the uvicorn process under it, running (case 40). SIGTERM and SIGINT take the same
    path as SIGHUP (tests/test_browser.py stops its `labkit ui` with SIGTERM)."""
    import psutil

    from conftest import LAB_YAML

    labs, procs, ports = [], [], []
    for name in ("hup", "kill"):
        root = tmp_path / name
        (root / "configs").mkdir(parents=True)
        (root / "configs" / "lab.yaml").write_text(LAB_YAML)
        port = free_port()
        out = open(root / "stdout.txt", "w")  # noqa: SIM115 -- the child writes it
        labs.append(root)
        ports.append(port)
        procs.append(_ui(root, "--port", str(port), stdout=out))
        out.close()
    trees = []
    try:
        for root, proc, port in zip(labs, procs, ports, strict=True):
            lines = _wait_for_links(proc, root / "stdout.txt")
            assert _get(f"http://127.0.0.1:{port}/health") == 200  # answering when the link was printed
            base = f"http://127.0.0.1:{port}"
            assert lines[0] == f"MLflow UI for tiny-lab: {base}  (Ctrl-C stops it)"
            assert lines[1].startswith(f"runs of experiment 'tiny-pilots': {base}/#/experiments/")
            assert lines[2] == f"MLflow's own log: results/mlflow-ui-{port}.log"
            assert len(lines) == 3
            assert "Uvicorn running" in (root / "results" / f"mlflow-ui-{port}.log").read_text()
            tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
            assert len(tree) >= 2, "mlflow server and its uvicorn process"
            trees.append(tree)
        _check_bound_to_localhost(procs[0], ports[0])
        procs[0].send_signal(signal.SIGHUP)
        procs[1].send_signal(signal.SIGKILL)
        assert procs[0].wait(timeout=30) == 128 + signal.SIGHUP
        assert procs[0].stderr.read() == ""  # nothing from MLflow, no traceback
        assert procs[1].wait(timeout=30) == -signal.SIGKILL
        assert _gone(trees[0], within_s=15) == [], "SIGHUP left the server running"
        assert _gone(trees[1], within_s=15) == [], "SIGKILL of labkit ui left its server running"
        for port in ports:
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing serves the port any more
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        for tree in trees:
            for pid in _gone(tree, within_s=0):
                os.kill(pid, signal.SIGKILL)
