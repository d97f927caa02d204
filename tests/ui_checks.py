"""What `labkit ui` must show of its server, read from outside: the bind, the Host check, the process tree.

Shared by tests/tracking/test_ui.py (a fresh lab's `labkit ui`, SIGKILLed) and tests/test_browser.py (the
demo lab's `labkit ui`, which the browser tests use and then end with SIGHUP). The bind address is read
from the kernel's socket tables (/proc/net/tcp and tcp6): the port's LISTEN entries must be exactly one, on
127.0.0.1 (``0100007F``), held by the server that `labkit ui` started — so the check holds on every
machine, not only where the host name resolves to another address.
"""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.error
import urllib.request


def get_status(url: str, host: str | None = None) -> int:
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


def check_bound_to_localhost(proc: subprocess.Popen, port: int) -> None:
    """The server answers, refuses a foreign Host, and is the one listener on the port, on 127.0.0.1."""
    import psutil

    assert get_status(f"http://127.0.0.1:{port}/", host="evil.com") == 403
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


def check_links(lines: list[str], lab: str, experiment: str, port: int) -> None:
    """What `labkit ui` printed, and nothing else: the UI, the runs link and the name of MLflow's own log."""
    base = f"http://127.0.0.1:{port}"
    assert lines[0] == f"MLflow UI for {lab}: {base}  (Ctrl-C stops it)"
    assert lines[1].startswith(f"runs of experiment '{experiment}': {base}/#/experiments/")
    assert lines[2] == f"MLflow's own log: results/mlflow-ui-{port}.log"
    assert len(lines) == 3, lines
