"""Warm kernels for a batch: kernels forked from one process that imported their libraries once.

:func:`warm_kernels` starts :mod:`labkit.runner.forkserver` for the length of a batch; while it is
active, every kernel whose command is the standard ``<this python> -m ipykernel_launcher -f <file>`` is
forked by it (:class:`ForkProvisioner`) instead of started afresh, saving each kernel the ~3 s of CPU of
its imports. Anything else — another kernel, a server not ready within :data:`READY_WAIT_S`, a server
gone, a refusal (it has a thread, the environment differs) — starts a fresh kernel as before, so a warm
kernel is only ever a faster start of the same kernel. ``LABKIT_WARM_KERNELS=0`` turns it off; it is
Linux only.

A forked kernel is not labkit's child: :class:`ForkedKernel` stands in for its :class:`subprocess.Popen`
(poll, wait, signals), with the exit code the server reports when it reaps the kernel. The kernel leads
its own process group, as a fresh one does, so labkit's kill of the group is unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from labkit._process import pid_alive
from labkit.runner.forkserver import FIGURES, FOLDER_PREFIX
from labkit.runner.shared import Shared

log = logging.getLogger("labkit.runner")

READY_WAIT_S = 60  # the first kernel of a batch waits this long for the server's imports, then starts afresh
_SHARED: Shared[KernelServer] = Shared("warm kernels: the server", "fresh kernels")


def enabled() -> bool:
    """On by default on Linux; elsewhere a fork of a process that imported GUI-capable libraries (macOS) is
    not safe, and there is no fork (Windows)."""
    off = os.environ.get("LABKIT_WARM_KERNELS", "1").strip().lower() in ("0", "false", "no", "off")
    return sys.platform.startswith("linux") and not off


@contextmanager
def warm_kernels(notebooks: list[Path] = (), wanted: bool = True) -> Iterator[KernelServer | None]:
    """Kernels started inside this block are forked from one server that imported what ``notebooks`` import."""
    if not (wanted and enabled()):
        yield None
        return
    # a batch already running in this process shares its server: it ends with the last
    with _SHARED.use(lambda: KernelServer(imports_of(notebooks))) as server:
        yield server


def current() -> KernelServer | None:
    return _SHARED.current()


class KernelServer:
    """The forkserver process of one batch: started at once, ready after its imports."""

    def __init__(self, modules: list[str] = ()) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))  # mode 0700: only this user connects
        self.path = self.dir / "socket"
        self.log_path = self.dir / "server.log"
        self.ready = threading.Event()
        self.failed: str | None = None
        self.users = 0
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "labkit.runner.forkserver", str(self.path), *modules],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=self.dir,
                start_new_session=True,  # the terminal's Ctrl-C is labkit's, as for a fresh kernel
            )
        threading.Thread(target=self._await_ready, name="labkit-kernel-server", daemon=True).start()

    def _await_ready(self) -> None:
        line = self.proc.stdout.readline()
        if line.strip() == b"ready":
            self.ready.set()
        else:
            self.failed = f"the kernel server ended while importing (exit {self.proc.wait()})"
            self.ready.set()

    def usable(self) -> bool:
        if not self.ready.wait(READY_WAIT_S):
            self.failed = self.failed or f"the kernel server was not ready within {READY_WAIT_S} s"
        return self.failed is None and self.proc.poll() is None

    def launch(self, cmd: list[str], *, stdout, stderr, env: dict, cwd: str) -> ForkedKernel | None:
        """A kernel forked by the server, or None (then the caller starts a fresh one)."""
        if not _standard(cmd) or not self.usable():
            if self.failed:
                log.info("warm kernels: %s; starting a fresh kernel", self.failed)
            return None
        out = _fd(stdout, 1)
        err = out if stderr == subprocess.STDOUT else _fd(stderr, 2)
        body = json.dumps({"argv": cmd[3:], "env": env, "cwd": str(cwd)}).encode()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(30)
            sock.connect(str(self.path))
            socket.send_fds(sock, [struct.pack("!I", len(body)) + body], [out, err])
            kernel = ForkedKernel(sock, cmd)
        except (OSError, ValueError) as e:
            log.info("warm kernels: %s; starting a fresh kernel", e)
            sock.close()
            return None
        if kernel.pid is None:
            log.info("warm kernels: the server refused (%s); starting a fresh kernel", kernel.refusal)
            return None
        return kernel

    def close(self) -> None:
        """Stop the server at once and remove its folder: SIGTERM ends it mid-import (a refused batch pays no
        more of its imports), or, once it serves, makes it SIGKILL any kernel still alive and exit."""
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def imports_of(notebooks) -> list[str]:
    """The absolute imports in the code cells of ``notebooks``, in order; cells that do not parse are skipped."""
    import ast

    found: dict[str, None] = {}
    for path in notebooks:
        try:
            cells = json.loads(Path(path).read_text(encoding="utf-8")).get("cells", [])
        except (OSError, ValueError, AttributeError):
            continue  # not a notebook: the preflight refuses it in one line
        for cell in cells if isinstance(cells, list) else []:
            if not isinstance(cell, dict) or cell.get("cell_type") != "code":
                continue
            source = cell.get("source", "")
            source = "".join(map(str, source)) if isinstance(source, list) else str(source)
            # IPython's magics and shell escapes are not Python; `%matplotlib` imports pyplot and the backend
            lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
            if any(line.lstrip().startswith("%matplotlib") for line in source.splitlines()):
                found.update(dict.fromkeys(FIGURES))
            try:
                tree = ast.parse("\n".join(lines))
            except (SyntaxError, ValueError):  # ValueError: a NUL byte
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.update((alias.name, None) for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found[node.module] = None
    return list(found)


def _standard(cmd: list[str]) -> bool:
    """The native kernel of this interpreter, which the server can become."""
    return len(cmd) >= 5 and cmd[0] == sys.executable and cmd[1:3] == ["-m", "ipykernel_launcher"]


def _fd(stream, default: int) -> int:
    if stream is None:
        return default
    return stream if isinstance(stream, int) else stream.fileno()


class ForkedKernel:
    """The :class:`subprocess.Popen` of a kernel forked by the server: what jupyter_client and labkit use."""

    stdin = stdout = stderr = None

    def __init__(self, sock: socket.socket, args: list[str]) -> None:
        self.args = args
        self.returncode: int | None = None
        self.pid: int | None = None
        self.refusal: str | None = None
        self._sock = sock
        self._buf = b""
        self._eof = False
        self._lock = threading.RLock()
        first = self._line(timeout=30)
        if first is None or not first.startswith(("pid ", "no ")):
            sock.close()
            raise ValueError(f"the kernel server answered {first!r}")
        if first.startswith("no "):
            self.refusal = first[3:]
            sock.close()
            return
        self.pid = int(first[4:])

    def _line(self, timeout: float | None) -> str | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf and not self._eof:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._sock], [], [], left)[0]:
                return None
            try:
                data = self._sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                self._eof = True
            self._buf += data
        if b"\n" not in self._buf:
            return None
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def _update(self, timeout: float | None) -> None:
        with self._lock:
            if self.returncode is not None:
                return
            line = self._line(timeout)
            if line and line.startswith("exit "):
                self.returncode = int(line[5:])
                self._sock.close()
            elif self._eof and (self.pid is None or not pid_alive(self.pid)):
                self.returncode = -signal.SIGKILL  # the server ended without a word: it killed the kernel
                self._sock.close()

    def poll(self) -> int | None:
        self._update(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self._update(0.1 if left is None else min(left, 0.1))
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def provisioner_for(km):
    """A :class:`ForkProvisioner` for ``km`` when a batch's server is running, else None (jupyter_client's)."""
    if current() is None:
        return None
    import uuid

    from jupyter_client.provisioning import LocalProvisioner

    class ForkProvisioner(LocalProvisioner):
        async def launch_kernel(self, cmd, **kwargs):
            server = current()
            kernel = None
            if server is not None:
                env = kwargs.get("env")
                kernel = server.launch(
                    cmd,
                    stdout=kwargs.get("stdout"),
                    stderr=kwargs.get("stderr"),
                    env=dict(os.environ if env is None else env),
                    cwd=kwargs.get("cwd") or os.getcwd(),
                )
            if kernel is None:
                return await super().launch_kernel(cmd, **kwargs)
            self.process = kernel
            self.pid = self.pgid = kernel.pid  # the forked kernel leads its own session and group
            self.cwd = kwargs.get("cwd", Path.cwd())
            return self.connection_info

    km.kernel_id = km.kernel_id or str(uuid.uuid4())
    return ForkProvisioner(kernel_id=km.kernel_id, kernel_spec=km.kernel_spec, parent=km)
