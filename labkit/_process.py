"""Is that process still there? The one pid-liveness check of labkit (tracking's stale runs and
assignment's stale locks both ask it), and the folder lock used to reclaim a stale lock file.

A pid alone is not a process: pids are reused. A holder records its pid *and* its start time
(``process_start``); it is alive only when a process with that pid exists, is not a zombie, and
started at that time. Where the start time is unknown (no /proc, an old record), the pid's existence
is trusted.
"""

from __future__ import annotations

import os
from pathlib import Path


def process_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (Linux /proc), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def pid_alive(pid: int, started: str | None = None) -> bool:
    """Whether the process ``pid`` (started at ``started``, when known) still runs: it exists, is no
    zombie, and is not a reused pid."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: the pid exists, trust it
    if state in ("Z", "X"):
        return False  # killed, not yet reaped: it holds its pid but is gone
    return started is None or process_start(pid) == started


class FolderLock:
    """An advisory lock (flock) on a folder, held for the instant of reclaiming a stale lock file."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.fd: int | None = None

    def __enter__(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.fd = os.open(self.folder, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None
