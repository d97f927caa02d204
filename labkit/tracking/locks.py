"""The lock of a local MLflow store: an exclusive ``fcntl`` lock on ``results/.mlflow.lock``, re-entrant
within a thread and shared by the threads of a process (they queue on an in-process lock, processes
queue on the file). Creating a store, creating the experiment, logging datasets and settling
``labkit.latest`` happen under it (RELIABILITY.md, "Facts")."""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from pathlib import Path

from labkit.errors import TrackingError

LOCK_TIMEOUT = 120.0  # seconds to wait for another process holding the store lock
_LOCKS: dict[str, list] = {}  # lock path -> [RLock, depth, open file holding the flock]
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def store_lock(lock_path: Path):
    """Hold the exclusive lock on ``lock_path`` (re-entrant, thread-safe)."""
    key = str(lock_path.resolve())
    with _LOCKS_GUARD:
        local = _LOCKS.setdefault(key, [threading.RLock(), 0, None])
    with local[0]:  # threads of this process queue here; processes queue on the file lock
        if local[1] == 0:
            local[2] = _acquire_file_lock(lock_path)
        local[1] += 1
        try:
            yield
        finally:
            local[1] -= 1
            if local[1] == 0:
                handle, local[2] = local[2], None
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()


def _acquire_file_lock(lock_path: Path):
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+")  # noqa: SIM115 -- closed by store_lock
    except OSError as exc:
        raise TrackingError(f"cannot open the MLflow store lock {lock_path}: {exc.strerror}") from None
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise TrackingError(
                    f"another process has held the MLflow store lock {lock_path} for {LOCK_TIMEOUT:.0f} s"
                ) from None
            time.sleep(0.05)
