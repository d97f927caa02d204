"""The effect over time as MLflow metric history (DESIGN.md, "Runs and MLflow"): results.json's ``over_time``
rows become points of ``over_time.<metric>.<arm>.<field>``, one per day, so the MLflow UI charts each
pilot's effect converging against the day since the start.

Pure: no MLflow here; the writer logs the points in its batches. The names follow the per-arm metrics of a
run (``<metric>.<arm>.<field>``, :func:`labkit.tracking.record.metrics_from_results`) under the
``over_time.`` prefix, so an over-time curve never shares a name with the analysis' own number. The step is
the day since the start; the timestamp is the day's look (``as_of``: midnight UTC of a date, or the moment
given), so a chart drawn against time shows the days and not when the run was recorded. A whole run's look
(``look_moment``, its ``labkit.look`` tag) is when its analysis looked at the data: labkit.latest goes to
the newest.
"""

from __future__ import annotations

import datetime as dt
import math

#: The prefix of every over-time metric, and the fields of a row logged per day.
OVER_TIME_PREFIX = "over_time"
OVER_TIME_FIELDS = ("effect", "ci_low", "ci_high")


def over_time_rows(results: dict) -> list[dict]:
    """The ``over_time`` rows of a results.json, ``[]`` when the analysis did not compute them.

    The block is a list of rows (DESIGN.md); a mapping that carries its rows under ``rows`` (with the
    interval's kind beside them) is read too."""
    block = results.get("over_time")
    if isinstance(block, dict):
        block = block.get("rows")
    return [row for row in block or [] if isinstance(row, dict)]


def day_ms(as_of: str | dt.date | dt.datetime) -> int:
    """A look's moment in epoch milliseconds: a date is midnight UTC of that day, a naive moment is UTC."""
    if isinstance(as_of, str):
        as_of = dt.datetime.fromisoformat(as_of)
    if not isinstance(as_of, dt.datetime):
        as_of = dt.datetime.combine(as_of, dt.time())
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=dt.UTC)
    return int(round(as_of.timestamp() * 1000))


def look_moment(as_of: str | None, started_at: float) -> dt.datetime:
    """When a run looked at the data, in UTC: its analysis's ``as_of`` (``meta.as_of``, naive UTC or with a
    zone) when it looked back, else its start. A look cannot see past its start: an ``as_of`` after it (a
    date still to come) is the start, so a mistyped year never holds ``labkit.latest`` against later runs."""
    start_ms = int(round(started_at * 1000))  # the run's start_time in the store (rules.ms): the same order
    start = dt.datetime.fromtimestamp(start_ms // 1000, dt.UTC) + dt.timedelta(milliseconds=start_ms % 1000)
    if not as_of:
        return start
    moment = dt.datetime.fromisoformat(as_of)
    moment = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
    return min(moment, start)


def look_stamp(as_of: str | None, started_at: float) -> str:
    """``look_moment`` as the text of the ``labkit.look`` tag, whose order is the moments' order (the store
    sorts tags as text): ``2026-11-15T00:00:00.000Z``, to the millisecond as the store keeps a start time
    (two runs that tie go to the store's next key, the start time)."""
    moment = look_moment(as_of, started_at)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def over_time_history(results: dict) -> list[dict]:
    """The over-time rows as metric-history points ``{"key", "value", "step", "timestamp"}``, ordered by
    key then day: ``over_time.<metric>.<arm>.effect`` / ``.ci_low`` / ``.ci_high`` at step = day.

    A value that is None or not finite is no point (a day on which an arm has no variance yet has its
    effect and no interval): a history has gaps, never a NaN or a stand-in number."""
    points = []
    for row in over_time_rows(results):
        step, stamp = int(row["day"]), day_ms(row["as_of"])
        for name in OVER_TIME_FIELDS:
            value = row.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                continue
            key = f"{OVER_TIME_PREFIX}.{row.get('metric')}.{row.get('arm')}.{name}"
            points.append({"key": key, "value": float(value), "step": step, "timestamp": stamp})
    return sorted(points, key=lambda p: (p["key"], p["step"]))
