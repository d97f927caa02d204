"""`labkit ui`: a real MLflow server on the lab's store, bound to 127.0.0.1, stopped cleanly by SIGTERM.

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


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def test_ui_binds_localhost_refuses_foreign_hosts_and_stops_on_sigterm(tiny_lab):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "labkit.cli", "ui", "--port", str(port)],
        cwd=tiny_lab.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if _get(f"http://127.0.0.1:{port}/health") == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        else:
            raise AssertionError("the MLflow UI did not start within 90 s")
        assert _get(f"http://127.0.0.1:{port}/", host="evil.com") == 403
        # the kernel's view: one listening socket on the port, on 127.0.0.1, and it is the server's
        ((table, address, inode),) = listening(port)
        assert (table, address) == ("tcp", "0100007F")
        import psutil

        tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert any(inode in socket_inodes(pid) for pid in tree), "the socket is not the ui server's"
        # nothing listens on the machine's other addresses
        other = socket.gethostbyname(socket.gethostname())
        if not other.startswith("127."):
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((other, port)) != 0
        server = _children(proc.pid)
        assert server, "the ui command should run the server as its child"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    time.sleep(1)
    for pid in server:
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]
