"""Which process owns a RUNNING run, and whether it is gone: the stale-run rule shared by the sweep of
`labkit run` (``Tracker.sweep_stale``) and the "running" flag of `labkit compare` (``reader``)."""

from __future__ import annotations

import os
import socket

from labkit._process import pid_alive, process_start
from labkit.tracking.record import TAG_HOST, TAG_PID, TAG_PID_START, owner_tag

STALE_AFTER_HOURS = 24.0  # a RUNNING run of another host older than this is considered abandoned


def this_process() -> dict[str, str]:
    """The owner tags of a run this process records: its pid, start time (where known) and host."""
    tags = {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname()}
    started = process_start(os.getpid())
    if started is not None:
        tags[TAG_PID_START] = started
    return tags


def stale_reason(
    tags: dict[str, str], started_s: float, *, now: float, host: str, max_age_hours: float = STALE_AFTER_HOURS
) -> str | None:
    """Why a RUNNING run will never be finished, or None while its owner may still finish it.

    A run of this host is stale when its process is gone (or the pid now belongs to another process); a run
    of another host when it has been RUNNING for more than ``max_age_hours`` (only its age tells)."""
    if owner_tag(tags, TAG_HOST) == host:
        pid_text = owner_tag(tags, TAG_PID) or ""
        pid = int(pid_text) if pid_text.isdigit() else 0
        if pid != os.getpid() and not pid_alive(pid, owner_tag(tags, TAG_PID_START)):
            return f"process {pid} on {host} is gone"
        return None
    age_hours = (now - started_s) / 3600
    if age_hours > max_age_hours:
        return f"RUNNING for {age_hours:.1f} h on {owner_tag(tags, TAG_HOST) or 'an unknown host'}"
    return None
