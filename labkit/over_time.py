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
of type proportion or mean. A per-customer table is a snapshot with no event time; a ratio or a quantile
is not a mean of per-customer values: those say so instead.

A cluster-randomised pilot (``cohort.unit_column``) gets its curve from cluster totals, never from
customers (a customer-level interval would under-cover): the one query returns the daily deltas per
(cluster, arm) (``labkit.data.over_time.daily_cluster_totals``), and each day's totals go through the
analysis' own estimator (``labkit.clustered.cluster_estimate``: CR2 with Bell–McCaffrey df, CUPED on
cluster totals, a saturation design's direct effect, in sequential mode the confidence sequence with the
clusters as the sample size). So its last day is the analysis itself, CUPED included, and the rows and the
label are those of any pilot; ``method`` names the cluster test. (A saturation design also reads its
clusters' treated shares from the assignment: one small query, not per day.)

A look (``as_of``) shows no day after it: the days stop at the last midnight on or before the look (the
row of day d is the look at ``start + d days``), or at the day every window has closed if that is earlier.
"""

from __future__ import annotations

import datetime as dt
import textwrap
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
#: The title line's width: a longer one wraps.
TITLE_WIDTH = 80


@dataclass(frozen=True)
class OverTime:
    """The primary metric's effect per day (``rows``: ``labkit.stats.over_time.ROW_KEYS``), the kind of
    interval and the test (``welch-t``, or a cluster pilot's ``cluster-robust t (CR2)``, with ``+cuped``
    and ``+cs`` as its analysis has them); or, when it has none, ``note``: why, in one line."""

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
    sequential mode (the confidence sequence tuned to the cap, as ``labkit.methods.estimate``; a cluster
    pilot's to its clusters, as ``labkit.clustered``)."""
    from labkit.data.over_time import daily_moments
    from labkit.stats.over_time import effect_over_time

    metric = pilot.primary
    note = unavailable(pilot)
    if note is not None:
        return OverTime(metric.name, note=note)
    last = look_day(pilot.start, as_of)
    if last is not None and last < 1:
        return OverTime(metric.name, note=f"no over-time for '{metric.name}': the look is before day 1")
    if pilot.spec.cohort.unit_column is not None:
        return _cluster_over_time(engine, pilot, units, last)
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


def _cluster_over_time(engine: Engine, pilot: Pilot, units: ibis.Table, last: int | None) -> OverTime:
    """A cluster pilot's curve: each day's (cluster, arm) totals estimated as the analysis estimates them."""
    from labkit.clustered import cluster_estimate, of_totals
    from labkit.data.over_time import cluster_shares, daily_cluster_totals
    from labkit.stats.over_time import interval_kind, over_time_row

    metric, s = pilot.primary, pilot.settings
    unit = pilot.spec.cohort.unit_column
    daily = daily_cluster_totals(engine, pilot, metric, units, unit)
    if daily is None:  # pragma: no cover - unavailable() said it has a history
        return OverTime(metric.name, note=f"no over-time for '{metric.name}'")
    daily = daily.until(last)
    shares = cluster_shares(engine, units) if pilot.spec.cohort.saturation else None
    rows, methods = [], []
    for i, day in enumerate(daily.days):
        data = of_totals(pilot, daily.on(i), shares)
        for arm in pilot.treatments:
            est = cluster_estimate(pilot, data, arm, alpha=s.alpha)
            rows.append(over_time_row(day, daily.as_of[i], metric.name, arm, est))
            methods.append((est.reason is None, est.method))
    # the test of a day with an interval (a day without variance is not widened: its name lacks "+cs")
    method = max(methods, key=lambda m: m[0])[1] if methods else None
    return OverTime(metric.name, rows=tuple(rows), interval=interval_kind(s.sequential), method=method)


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
    title = f"effect over time: {block.metric} ({block.interval}, {block.method}{every})"
    lines = [
        # a long title (a cluster pilot's "cluster-robust t (CR2)+cuped+cs") wraps at 80 columns, indented
        *textwrap.wrap(title, TITLE_WIDTH, subsequent_indent="  ", break_long_words=False),
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
