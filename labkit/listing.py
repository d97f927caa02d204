"""`labkit list`: the lab's pilots at a glance, from files only (no MLflow import, so it stays instant)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from labkit.lab import Lab
from labkit.spec import Pilot, list_pilots, parse_pilot


@dataclass(frozen=True)
class Status:
    """Where a pilot stands, derived from its files and the date alone (no data source is read):

    - ``drafted``: a valid pilot file, no assignment yet, and no plan of this very pilot file;
    - ``planned``: `labkit plan` recorded a plan (``results/<id>/plan.json``) for the pilot file as it is now
      (same ``spec_sha256``); editing the pilot afterwards makes it ``drafted`` again, until planned anew;
    - ``assigned``: an assignment exists and the start (``cohort.start``) is in the future;
    - ``running``: day N of the outcome window, with the customers exposed (assigned) against the cap;
    - ``ready``: the outcome window has closed — ready to analyse;
    - ``decided``: a recorded run exists (``results/<id>/runs/*/results.json``) with its decision.

    The outcome window is the longest ``window_days`` of the pilot's metrics, counted from the start: the
    last customer's events are all in by then (0 days when no metric reads events: a per-customer table is
    read as it stands, so such a pilot is ready to analyse from its start). ``analyse_after`` is the last
    day of that window; ``line`` is the one line `labkit analyze` prints instead of a verdict before then.
    """

    pilot: str
    status: str  # drafted | planned | assigned | running | ready | decided
    line: str
    start: dt.date | None = None
    window_days: int = 0
    day: int | None = None
    analyse_after: dt.date | None = None
    exposed: int | None = None
    target: int | None = None
    decision: str | None = None

    @property
    def analysable(self) -> bool:
        """Whether `labkit analyze` gives a verdict: the outcome window has closed (or a run decided)."""
        return self.status in ("ready", "decided")

    @property
    def short(self) -> str:
        """The status as `labkit list` shows it: the state, and the day of the window while running."""
        if self.status == "running":
            return f"running (day {self.day} of {self.window_days})"
        return {"ready": "ready to analyse", "assigned": f"assigned (starts {self.start})"}.get(
            self.status, self.status
        )

    def to_dict(self) -> dict:
        return {
            "pilot": self.pilot,
            "status": self.status,
            "detail": self.line,
            "start": self.start.isoformat() if self.start else None,
            "window_days": self.window_days,
            "day": self.day,
            "analyse_after": self.analyse_after.isoformat() if self.analyse_after else None,
            "exposed": self.exposed,
            "target": self.target,
            "decision": self.decision,
        }


def today_utc() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def not_started(pilot: Pilot, now: dt.datetime | None = None) -> str | None:
    """Why the pilot has nothing to analyse yet — ``now`` is not after its start (``cohort.start``, midnight
    UTC; an imported assignment's earliest ``assigned_at``) — or None. Its per-customer tables can be read
    before then, as they are today, and gave a verdict (`labkit run` recorded it as the pilot's latest run,
    and leadership read "no-effect → stop" for a pilot that had not begun): `labkit run` and
    ``labkit.analyze`` refuse, as they refuse an ``--as-of`` on or before the start."""
    start = pilot.start
    now = now or dt.datetime.now(dt.UTC)
    if start is None or now > dt.datetime.combine(start, dt.time(), dt.UTC):
        return None
    return (
        f"the pilot starts {start.isoformat()} (UTC) and nothing of it has happened yet: no outcome to analyse; "
        f"analyse it after its start (`labkit list` shows its status)"
    )


def outcome_window(pilot: Pilot) -> int:
    """The longest ``window_days`` of the pilot's metrics (0 when none reads events)."""
    return max((m.window_days or 0 for m in pilot.spec.metrics), default=0)


def _folder_start(name: str) -> dt.datetime | None:
    """The UTC start that names a run folder (``20261208T013022792458Z``), or None for a name labkit did not
    give (its look is unknown: older than any)."""
    for form in ("%Y%m%dT%H%M%S%fZ", "%Y%m%dT%H%M%SZ"):
        with contextlib.suppress(ValueError):
            return dt.datetime.strptime(name, form).replace(tzinfo=dt.UTC)
    return None


def _latest_decision(results: Path) -> str | None:
    """The decision of the pilot's newest look among its kept runs, as ``labkit.latest`` is chosen
    (labkit.tracking.history.look_moment): the latest look — the ``meta.as_of`` of a run that looked back,
    else its start, the UTC stamp that names its folder — then the latest start. A look is never after its
    run's start, so folders are read newest first until one started before the best look found."""
    from labkit.tracking.history import look_moment

    oldest = dt.datetime.min.replace(tzinfo=dt.UTC)
    runs = sorted((results / "runs").glob("*/results.json"), reverse=True) if results.is_dir() else []
    best: tuple[dt.datetime, str] | None = None
    for path in runs:
        started = _folder_start(path.parent.name)
        if best is not None and (started or oldest) < best[0]:
            break
        look, decision = started or oldest, "?"
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            data = json.loads(path.read_text())
            decision = str(data.get("decision", "?"))
            if started is not None:  # else, or when as_of is unreadable, the look is the start
                look = look_moment((data.get("meta") or {}).get("as_of"), started.timestamp())
        if best is None or look > best[0]:
            best = (look, decision)
    return best[1] if best else None


def _assigned(pilot: Pilot) -> int | None:
    """Customers in the written assignment (its assignment.json), or None when there is none."""
    try:
        meta = json.loads((pilot.results_dir / "assignment.json").read_text(encoding="utf-8"))
        return int(meta["assigned"])
    except (OSError, ValueError, KeyError, TypeError):
        return None if not (pilot.results_dir / "assignment.parquet").is_file() else 0


PLAN_FILE = "plan.json"


def record_plan(pilot: Pilot, plan: dict) -> None:
    """Keep the plan `labkit plan` printed, with the hash of the pilot file it was made for: the status
    ``planned`` holds while the file is unchanged. Best effort: a plan that cannot be written is still
    printed (the status then stays ``drafted``)."""
    from labkit._files import write_atomic

    record = {
        "pilot": pilot.id,
        "spec_sha256": pilot.spec_sha256,
        "planned_at": today_utc().isoformat(),
        **plan,
    }
    try:
        pilot.results_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(pilot.results_dir / PLAN_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except OSError:
        pass


def recorded_plan(pilot: Pilot) -> dict | None:
    """The recorded plan of this very pilot file (same spec hash), else None."""
    try:
        record = json.loads((pilot.results_dir / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("spec_sha256") == pilot.spec_sha256 else None


def pilot_status(pilot: Pilot, today: dt.date | None = None) -> Status:
    """The pilot's status on ``today`` (default: today in UTC), from its files (see :class:`Status`)."""
    today = today or today_utc()
    window = outcome_window(pilot)
    decision = _latest_decision(pilot.results_dir)
    start = pilot.start
    base = dict(pilot=pilot.id, start=start, window_days=window, target=pilot.cap)
    if decision is not None:
        return Status(status="decided", line=f"decided: {decision}", decision=decision, **base)
    assigned = (pilot.results_dir / "assignment.parquet").is_file()
    if not assigned:
        planned = recorded_plan(pilot)
        if planned is not None:
            need = planned.get("required_per_arm")
            need = f"{need:,} customers per arm needed; " if isinstance(need, int) else ""
            return Status(status="planned", line=f"planned: {need}run `labkit assign {pilot.id}`", **base)
        line = f"drafted: not assigned yet; run `labkit assign {pilot.id}`"
        return Status(status="drafted", line=line, **base)
    exposed = _assigned(pilot)
    if start is None:  # an imported assignment without a start date: its data decides, nothing to wait for
        return Status(status="ready", line="ready to analyse", exposed=exposed, **base)
    last = start + dt.timedelta(days=max(window, 1) - 1)
    base.update(exposed=exposed, analyse_after=last if window else None)
    if today < start:
        return Status(status="assigned", line=f"starts {start}; no outcome data yet", **base)
    day = (today - start).days + 1
    if day <= window:
        target = f" of {pilot.cap:,}" if pilot.cap else ""
        shown = f"{exposed:,}" if exposed is not None else "?"
        line = f"running, day {day} of {window}; analyse after {last} ({shown}{target} customers exposed)"
        return Status(status="running", line=line, day=day, **base)
    return Status(status="ready", line="ready to analyse", **base)


def pilot_rows(lab: Lab) -> tuple[list[dict], list[str]]:
    rows, problems = [], []
    for path in list_pilots(lab):
        pilot, errors = parse_pilot(path, lab, display=lab.display(path))
        if pilot is None:
            problems.append(f"{lab.display(path)}: invalid ({len(errors)} problem(s)); run labkit validate")
            continue
        status = pilot_status(pilot)
        labels = {key: getattr(pilot.spec, key) for key in ("function", "channel", "stage", "owner")}
        rows.append(
            {"pilot": pilot.spec.id, **labels, "status": status.short, "decision": status.decision or "-"}
        )
    return rows, problems


COLUMNS = ("pilot", "function", "channel", "stage", "owner", "status", "decision")


def output_width() -> int | None:
    """The width to print at: COLUMNS when set, the terminal's when stdout is one; None when piped (no limit).

    The same rule as the rich console of `labkit.render`, without importing rich."""
    import os
    import shutil

    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def render_rows(rows: list[dict], out=None, width: int | None = None) -> None:
    """A plain aligned table: `labkit list` must answer instantly, and rich alone costs ~0.1 s to import.

    Below the table's width (``width``, else `output_width`) each pilot is a block of "key: value" lines
    instead, so no id, owner or status is cut or wrapped mid-word; piped, the table is printed whole."""
    out = out or sys.stdout
    width = output_width() if width is None else width
    cells = [list(COLUMNS)] + [[str(row[key]) for key in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if width is not None and max(len(line) for line in lines) > width:
        lines = _stacked(rows, width)
    out.write(f"{len(rows)} pilot(s)\n" + "\n".join(lines) + "\n")


def _stacked(rows: list[dict], width: int) -> list[str]:
    """Each pilot as its id, then one indented "key  value" line a field, wrapped at spaces only."""
    import textwrap

    keys = COLUMNS[1:]
    pad = 2 + max(len(k) for k in keys) + 2
    lines: list[str] = []
    for row in rows:
        lines.append(str(row["pilot"]))
        for key in keys:
            text = f"  {key.ljust(pad - 4)}  {row[key]}"
            lines += textwrap.wrap(
                text, max(width, pad + 1), subsequent_indent=" " * pad, break_long_words=False,
                break_on_hyphens=False,
            ) or [text]  # fmt: skip
    return lines
