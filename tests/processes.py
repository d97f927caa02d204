"""Whether processes a test started are gone: polled through psutil, zombies counting as gone (they run and
serve nothing; their parent may not have reaped them yet). Shared by the runner, pipeline and ui tests."""

from __future__ import annotations

import time

import psutil


def still_alive(pids: list[int], within_s: float) -> list[int]:
    """The pids still alive after ``within_s`` seconds (at once, as soon as none is)."""
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
        time.sleep(0.05)


def gone(pids: list[int], within_s: float) -> bool:
    """Whether every pid is gone within ``within_s`` seconds."""
    return not still_alive(pids, within_s)
