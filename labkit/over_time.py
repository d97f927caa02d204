"""The effect over time of an analysis, when asked (``labkit.analyze(pilot, over_time=True)``, `labkit analyze
--over-time`, the default notebook's ``over_time`` parameter): the primary metric's cumulative effect on each
day since the start, from one query (``labkit.data.over_time``) and the per-day statistics
(``labkit.stats.over_time``).

In the JSON the rows are DESIGN.md's ``over_time`` list, one per (day, treatment arm), and the kind of their
interval is ``over_time_interval`` beside it at the top level ("confidence sequence" in sequential mode,
"fixed-horizon" otherwise): the rows keep exactly the contract's keys, and the label, the same for every
row, is said once. Both keys are absent unless asked for, and absent too when the primary metric has no
history (:func:`unavailable`): the analysis then carries only the one-line reason (``OverTime.note``),
which the terminal prints — so a run of the default notebook writes the same results.json as `labkit
analyze --json` for a per-customer metric.

Which metrics have a history: an event metric with a window whose aggregate accumulates (count, sum, any),
of type proportion or mean, in a pilot randomised per customer. A per-customer table is a snapshot with no
event time; a ratio or a quantile is not a mean of per-customer values; a cluster pilot's interval needs
cluster totals per day (a customer-level curve would under-cover): those say so instead.

A look (``as_of``) shows no day after it: the days stop at the last midnight on or before the look (the
row of day d is the look at ``start + d days``), or at the day every window has closed if that is earlier.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import ibis

    from labkit.data.over_time import DailyMoments
    from labkit.data.sources import Engine
    from labkit.result import Analysis
    from labkit.spec import Pilot

__all__ = ["OverTime", "over_time", "over_time_lines", "unavailable", "with_over_time"]

#: The terminal shows every day up to this many days, else every 7th day and the last (the JSON has all).
ALL_DAYS_UP_TO = 14


@dataclass(frozen=True)
class OverTime:
    """The primary metric's effect per day (``rows``: ``labkit.stats.over_time.ROW_KEYS``), the kind of
    interval and the test; or, when it has none, ``note``: why, in one line."""

    metric: str
    rows: tuple[dict, ...] = ()
    interval: str | None = None
    method: str | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        """The JSON keys (``over_time`` and ``over_time_interval``), or {} when there is no over-time."""
        if self.note is not None:
            return {}
        return {"over_time": [dict(r) for r in self.rows], "over_time_interval": self.interval}


def unavailable(pilot: Pilot) -> str | None:
    """Why the pilot's primary metric has no over-time (one line, "no over-time for '<metric>': why"), or
    None when it has one (module docstring)."""
    m = pilot.primary
    head = f"no over-time for '{m.name}'"
    if pilot.spec.cohort.unit_column is not None:
        return f"{head}: a cluster pilot's daily intervals need cluster totals (not computed yet)"
    if m.type not in ("proportion", "mean"):
        return f"{head}: a {m.type} metric has no daily history (proportions and means have)"
    if m.event is None:
        return f"{head}: its per-customer table has no event time"
    from labkit.data.over_time import CUMULATIVE

    if m.aggregate not in CUMULATIVE:
        return (
            f"{head}: its '{m.aggregate}' aggregate does not add up day by day ({', '.join(CUMULATIVE)} do)"
        )
    if pilot.start is None:
        return f"{head}: the pilot has no start date to count days from"
    return None


def look_day(start: dt.date, as_of: dt.datetime | None) -> int | None:
    """The last day whose look (midnight UTC of ``start + day``) is on or before ``as_of``; None: no look."""
    if as_of is None:
        return None
    return (as_of - dt.datetime.combine(start, dt.time())) // dt.timedelta(days=1)


def over_time(
    engine: Engine, pilot: Pilot, units: ibis.Table, *, as_of: dt.datetime | None = None
) -> OverTime:
    """The primary metric's effect on each day since the start, at the pilot's alpha, sequential in
    sequential mode (the confidence sequence tuned to the cap, as ``labkit.methods.estimate``)."""
    from labkit.data.over_time import daily_moments
    from labkit.stats.over_time import effect_over_time

    metric = pilot.primary
    note = unavailable(pilot)
    if note is not None:
        return OverTime(metric.name, note=note)
    last = look_day(pilot.start, as_of)
    if last is not None and last < 1:
        return OverTime(metric.name, note=f"no over-time for '{metric.name}': the look is before day 1")
    daily = daily_moments(engine, pilot, metric, units)
    if daily is None:  # pragma: no cover - unavailable() said it has a history
        return OverTime(metric.name, note=f"no over-time for '{metric.name}'")
    daily = _until(daily, last)
    s = pilot.settings
    effect = effect_over_time(
        metric.name, daily.days, daily.as_of, daily.arms, control=pilot.control, alpha=s.alpha,
        sequential=s.sequential, n_tuning=pilot.cap,
    )  # fmt: skip
    return OverTime(metric.name, rows=effect.rows, interval=effect.interval, method=effect.method)


def _until(daily: DailyMoments, last: int | None) -> DailyMoments:
    """The days up to ``last`` (a look's day): a prefix of the series, as the moments are cumulative (the
    same as asking ``daily_moments`` for ``days=last``, without days after the windows have closed)."""
    if last is None or last >= len(daily.days):
        return daily
    arms = {arm: series[:last] for arm, series in daily.arms.items()}
    return replace(daily, days=daily.days[:last], as_of=daily.as_of[:last], arms=arms)


def with_over_time(
    result: Analysis, engine: Engine, pilot: Pilot, units: ibis.Table, *, as_of: dt.datetime | None = None
) -> Analysis:
    """The analysis carrying its over-time (``Analysis.over_time``); every other block unchanged."""
    return replace(result, over_time=over_time(engine, pilot, units, as_of=as_of))


def shown_days(days: list[int]) -> list[int]:
    """The days the terminal shows: all up to ``ALL_DAYS_UP_TO``, else day 1, every 7th day and the last."""
    if len(days) <= ALL_DAYS_UP_TO:
        return days
    return [d for d in days if d == 1 or d % 7 == 0 or d == days[-1]]


def _num(v, spec: str = ".4g") -> str:
    return "–" if v is None else format(v, spec)


def over_time_lines(block: OverTime) -> list[str]:
    """The terminal view: a title line, then one line per shown (day, arm), at most ~70 columns for arm
    names of up to 12 characters (a longer arm widens its column); or the note, in one line."""
    if block.note is not None:
        return [block.note]
    days = shown_days(sorted({int(r["day"]) for r in block.rows}))
    every = "" if len(days) == len({r["day"] for r in block.rows}) else "; every 7th day and the last"
    arm_w = max([len("arm"), *(len(str(r["arm"])) for r in block.rows)])
    lines = [
        f"effect over time: {block.metric} ({block.interval}, {block.method}{every})",
        f"{'day':>4}  {'as of':<10}  {'arm':<{arm_w}}  {'n ctrl':>6}  {'n trt':>6}  {'effect':>9}  interval",
    ]
    wanted = set(days)
    for r in block.rows:
        if int(r["day"]) not in wanted:
            continue
        interval = f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]" if r["ci_low"] is not None else "–"
        lines.append(
            f"{r['day']:>4}  {r['as_of']:<10}  {r['arm']:<{arm_w}}  {r['n_control']:>6}  {r['n_treatment']:>6}"
            f"  {_num(r['effect'], '+.4g'):>9}  {interval}"
        )
    return lines
