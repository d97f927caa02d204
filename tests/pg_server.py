"""A real PostgreSQL server on 127.0.0.1 for the test session, started with initdb + pg_ctl, stopped by pid.

Import the fixture into a test module (``from pg_server import postgres_server``). It yields a
``PgServer``: host, port, the superuser's name and password, ``url(...)`` to build connection URLs (also
with a wrong password, or for a database that does not exist) and ``connect()`` for an admin psycopg
connection. The cluster lives in a fresh folder under the system temp dir; the superuser authenticates
with a password (scram-sha-256) over TCP, so a wrong password is refused as it would be in production.

PostgreSQL refuses to run as root. Under root (CI runs as root) the cluster is created and started as the
``postgres`` user (made by Debian's package; ``nobody`` otherwise), which owns the folder. Missing server
binaries fail the session loudly with what to install: ``apt-get install -y postgresql`` (``make test``
does it); Debian puts them in ``/usr/lib/postgresql/<version>/bin``, which is searched too.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

START_TIMEOUT = 60.0  # seconds; ~1 s is typical
STOP_TIMEOUT = 15.0
SUPERUSER = "labkit_admin"
INSTALL_HINT = (
    "install PostgreSQL's server: `apt-get install -y postgresql` (as `make test` does, tools/system-deps)"
)


@dataclass
class PgServer:
    host: str
    port: int
    user: str
    password: str
    folder: Path
    pid: int

    def url(self, database: str = "postgres", *, user: str | None = None, password: str | None = None) -> str:
        who = quote(user or self.user, safe="")
        secret = quote(self.password if password is None else password, safe="")
        return f"postgresql://{who}:{secret}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        """An autocommit admin connection (psycopg 3)."""
        import psycopg

        return psycopg.connect(self.url(database), autocommit=True)

    def create_database(self, name: str) -> str:
        """A fresh, empty database; its URL."""
        with self.connect() as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}"')
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_binaries() -> Path:
    """The folder holding initdb, pg_ctl and postgres: on PATH, else Debian's newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name)
    )
    if versions:
        return Path(versions[-1]).parent
    pytest.fail(f"PostgreSQL server binaries (initdb, pg_ctl) not found; {INSTALL_HINT}", pytrace=False)


def _run_as() -> dict:
    """subprocess keyword arguments that drop root for the server (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    pytest.fail("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as", pytrace=False)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _stop(pid: int) -> None:
    """Fast shutdown (SIGINT to the postmaster), SIGKILL if it lingers."""
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_server() -> PgServer:
    bindir = server_binaries()
    as_user = _run_as()
    folder = Path(tempfile.mkdtemp(prefix="labkit-pg-"))
    data, sockets, log = folder / "data", folder / "sock", folder / "server.log"
    sockets.mkdir()
    password = "s3cret-" + os.urandom(6).hex()
    pwfile = folder / "pwfile"
    pwfile.write_text(password + "\n")
    if as_user:
        for path in (folder, sockets, pwfile):
            os.chown(path, as_user["user"], as_user["group"])
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    init = subprocess.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,
        **as_user,
    )
    if init.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}", pytrace=False)
    pwfile.unlink()
    last = ""
    for _attempt in range(3):  # the free port may be taken between choosing and binding it
        port = free_port()
        options = (
            f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c shared_buffers=32MB -c max_connections=30"
        )
        started = subprocess.run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
                "start",
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=folder,
            **as_user,
        )
        pid = _postmaster_pid(data)
        if started.returncode == 0 and pid:
            return PgServer("127.0.0.1", port, SUPERUSER, password, folder, pid)
        last = f"{started.stdout}\n{started.stderr}\n{_tail(log)}"
        if pid:
            _stop(pid)
    shutil.rmtree(folder, ignore_errors=True)
    pytest.fail(f"PostgreSQL did not start:\n{last}", pytrace=False)


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for the whole test session, stopped by its postmaster's pid at the end."""
    server = start_server()
    try:
        yield server
    finally:
        _stop(server.pid)
        shutil.rmtree(server.folder, ignore_errors=True)
