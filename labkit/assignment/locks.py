"""``results/<id>/assignment.lock``: one ``labkit assign`` of a pilot at a time; a dead one's lock reclaimed.

The lock file is created with ``O_CREAT|O_EXCL`` and holds its holder as JSON: ``pid``, ``started`` (the
process's start time, ``labkit._process.process_start``), ``host`` and ``taken_at``. A second
``labkit assign`` of the same pilot loses with a clear message. A lock whose process is gone — same host,
and no live process with that pid *and* that start time, so a pid the system has since given to another
process is not taken for the holder — is reclaimed under a flock on the folder, so two reclaimers cannot
both win, and said so on stderr. A lock written without ``started`` (by an older labkit) is judged by its
pid alone; an empty or torn lock is stale after ``TORN_SECONDS``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from labkit._process import FolderLock, pid_alive, process_start
from labkit.assignment.store import utc_now
from labkit.errors import AssignmentError

if TYPE_CHECKING:  # pragma: no cover
    from labkit.spec import Pilot

LOCK_FILE = "assignment.lock"
TORN_SECONDS = 10  # a holder writes its lock right after creating it; an empty one this old is dead


class Claim:
    """The pilot's assignment lock, held for a ``with`` block; the loser of a race gets an AssignmentError.

    ``reclaimed`` is the dead holder's ``{"pid", "taken_at"}`` when a stale lock was reclaimed (the
    metadata records it), else None."""

    def __init__(self, pilot: Pilot):
        self.pilot = pilot
        self.path = pilot.results_dir / LOCK_FILE
        self.reclaimed: dict | None = None
        self.token: bytes | None = None

    def __enter__(self) -> Claim:
        for _ in range(3):
            try:
                # 0666 less the umask: the usual mode of a new file (labkit._files.usual_file_mode)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder, raw, ino = _read(self.path)
                if raw is None:
                    continue  # released meanwhile: try again
                if _is_stale(holder, self.path):
                    self._reclaim(holder, raw, ino)
                    continue
                raise self._busy(holder) from None
            me = os.getpid()
            self.token = json.dumps(
                {"pid": me, "started": process_start(me), "host": socket.gethostname(), "taken_at": utc_now()}
            ).encode()
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.token)
                fh.flush()
                os.fsync(fh.fileno())
            return self
        raise self._busy(_read(self.path)[0])

    def __exit__(self, *exc) -> None:
        try:
            if self.path.read_bytes() == self.token:
                self.path.unlink()
        except OSError:
            pass

    def _busy(self, holder: dict) -> AssignmentError:
        who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('taken_at', '?')}"
        return AssignmentError(
            self.pilot.id,
            f"another `labkit assign {self.pilot.id}` ({who}) is drawing this assignment right now; "
            f"wait for it to finish and run again (if no labkit process is running, delete "
            f"{self.pilot.lab.display(self.path)})",
        )

    def _reclaim(self, holder: dict, raw: bytes, ino: int) -> None:
        """Remove a dead process's lock — under a lock on the folder, so two reclaimers cannot both win."""
        with FolderLock(self.path.parent):
            _, now, now_ino = _read(self.path)
            if now != raw or now_ino != ino:
                return  # someone else reclaimed it (or took it) first
            self.path.unlink()
        self.reclaimed = {"pid": holder.get("pid"), "taken_at": holder.get("taken_at")}
        sys.stderr.write(
            f"labkit: {self.pilot.id}: reclaimed the stale lock {self.pilot.lab.display(self.path)}: process "
            f"{holder.get('pid', '?')}, which took it at {holder.get('taken_at', '?')}, is no longer running\n"
        )


def _read(path: Path) -> tuple[dict, bytes | None, int | None]:
    """(holder, raw bytes, inode) of the lock file; ({}, None, None) when there is none."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(4096)
            ino = os.fstat(fh.fileno()).st_ino
    except FileNotFoundError:
        return {}, None, None
    try:
        holder = json.loads(raw.decode())
    except (ValueError, UnicodeDecodeError):
        holder = None  # torn: its holder died while writing it, or is writing it now
    return holder if isinstance(holder, dict) else {}, raw, ino


def _is_stale(holder: dict, path: Path) -> bool:
    """True when the lock's process is certainly gone (same host, no such live process)."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        # Empty or torn: the holder died between creating and writing it, unless that is happening right now.
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return False
        return age > TORN_SECONDS
    if holder.get("host") != socket.gethostname():
        return False  # another machine's process cannot be checked from here
    started = holder.get("started")
    return not pid_alive(pid, started if isinstance(started, str) else None)
