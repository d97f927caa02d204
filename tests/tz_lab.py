"""A lab whose event times sit a few hours either side of the pilot's start and of its window's end.

Shared by tests/data/test_timezone.py and tests/data/test_spark.py (RELIABILITY.md case 36). A window shifted
by the host's (or a session's) UTC offset, up to ±14 h, counts other events here, so any local-time
conversion changes the numbers. The events come in several shapes, all the same instants: TIMESTAMPTZ
(UTC, and another zone), naive (meaning UTC), a CSV whose times carry mixed UTC offsets and a CSV of
naive times. ``write_lab(root, place)`` writes the lab as files (DuckDB), as PostgreSQL tables
(``load_postgres`` fills them) or as Spark sources; ``reference_counts`` is the per-arm mean number of
events in the window, counted in plain Python on UTC instants.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import DROP, pilot_yaml

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
WINDOW = dt.timedelta(days=30)
N = 120
URL_ENV = "TZ_CRM_URL"
# hours from the start (and from the window's end): within ±14 h, where a shifted window counts others
HOURS = (-20.0, -13.0, -6.5, -1.0, 0.5, 2.0, 7.0, 12.5, 15.0, 23.0)
OFFSETS = (dt.timedelta(hours=5, minutes=30), dt.timedelta(hours=-8), dt.timedelta(0), dt.timedelta(hours=13))
# event sources per place: parquet ones also go to PostgreSQL (TIMESTAMPTZ / TIMESTAMP) and Spark
FILE_SOURCES = ("ev_utc", "ev_zoned", "ev_naive", "ev_offset_csv", "ev_naive_csv")
TABLE_SOURCES = ("ev_utc", "ev_naive")

SPEND = {"name": "spend", "type": "mean", "source": "outcomes", "column": "spend"}


def pilot_text(metrics: list[dict]) -> str:
    """The default pilot (tests/pilots.py) on 200 customers: spend, then ``metrics``."""
    return pilot_yaml(
        title="Time zones", metrics=[SPEND, *metrics],
        hypothesis={"statement": "Replies rise.", "metric": "spend", "direction": "increase", "mde": {"relative": 0.2}},
        **{"cohort.where": DROP, "cohort.max_size": 200},
    )  # fmt: skip


def ids() -> list[str]:
    return [f"C-{i:04d}" for i in range(N)]


def events() -> list[tuple[str, dt.datetime, float]]:
    """(customer, UTC instant, value): an uneven number of events per customer near both edges."""
    out = []
    for i in range(N):
        for j, h in enumerate(HOURS):
            if (i >> (j % 7)) & 1 or (i * 7 + j) % 3 == 0:
                out.append((f"C-{i:04d}", START + dt.timedelta(hours=h), float((i * 3 + j) % 11)))
            if (i + j) % 4 == 0:  # near the window's end
                out.append((f"C-{i:04d}", START + WINDOW + dt.timedelta(hours=h), float(j)))
    return out


def tables() -> dict[str, pa.Table]:
    """customers, outcomes and the parquet-shaped event tables, as Arrow tables."""
    ev = events()
    who, at, value = [e[0] for e in ev], [e[1] for e in ev], [e[2] for e in ev]

    def table(stamps, type_):
        return pa.table(
            {
                "customer_id": who,
                "ts": pa.array(stamps, type_),
                "event_type": ["reply"] * len(ev),
                "value": value,
            }
        )

    return {
        "customers": pa.table({"customer_id": ids(), "has_twitter": [True] * N}),
        "outcomes": pa.table({"customer_id": ids(), "spend": [(i * 13) % 17 + 0.5 for i in range(N)]}),
        "ev_utc": table(at, pa.timestamp("us", tz="UTC")),
        "ev_zoned": table(at, pa.timestamp("us", tz="America/New_York")),  # the same instants
        "ev_naive": table([t.replace(tzinfo=None) for t in at], pa.timestamp("us")),
    }


def _csvs(data: Path) -> None:
    ev = events()
    offset = [
        t.astimezone(dt.timezone(OFFSETS[k % len(OFFSETS)])).isoformat() for k, (_, t, _) in enumerate(ev)
    ]
    naive = [t.replace(tzinfo=None).isoformat(sep=" ") for _, t, _ in ev]
    for name, stamps in (("ev_offset_csv", offset), ("ev_naive_csv", naive)):
        rows = "".join(f"{c},{t},reply,{v}\n" for (c, _, v), t in zip(ev, stamps))
        (data / f"{name}.csv").write_text("customer_id,ts,event_type,value\n" + rows)


def write_lab(root: Path, place: str = "files", events_: tuple[str, ...] | None = None) -> Path:
    """The lab at ``root`` with its sources as ``files``, ``postgres`` tables or ``spark`` parquet paths;
    the pilot ``p`` counts (window only) and sums (with CUPED: the pre-period too) each event source
    (``events_``: by default every one the place can hold)."""
    (root / "configs").mkdir(parents=True)
    (root / "experiments").mkdir()
    data = root / "data"
    data.mkdir()
    if events_ is None:
        events_ = FILE_SOURCES if place == "files" else TABLE_SOURCES
    lines = []
    for name, table in tables().items():
        if name.startswith("ev_") and name not in events_:
            continue
        ts = ", timestamp: ts" if name.startswith("ev_") else ""
        if place == "postgres":
            lines.append(f"  {name}: {{format: postgres, url_env: {URL_ENV}, table: {name}{ts}}}")
            continue
        pq.write_table(table, data / f"{name}.parquet")
        fmt = "spark" if place == "spark" else "parquet"
        lines.append(f"  {name}: {{format: {fmt}, path: data/{name}.parquet{ts}}}")
    if place == "files":
        _csvs(data)
        lines += [f"  {s}: {{format: csv, path: data/{s}.csv, timestamp: ts}}" for s in events_ if "csv" in s]
    (root / "configs" / "lab.yaml").write_text(
        "lab: tz\nfunctions: [service]\nchannels: [twitter]\nstages: [retention]\nsources:\n"
        + "\n".join(lines)
        + "\n"
    )
    reply = {"column": "event_type", "equals": "reply"}
    metrics = [
        metric
        for s in events_
        for metric in (
            {"name": f"{s}_count", "type": "mean", "source": s, "event": reply, "aggregate": "count",
             "window_days": 30},
            {"name": f"{s}_sum", "type": "mean", "source": s, "event": reply, "column": "value",
             "aggregate": "sum", "window_days": 30, "cuped": True},
        )
    ]  # fmt: skip
    (root / "experiments" / "p.yaml").write_text(pilot_text(metrics))
    return root


def load_postgres(con) -> None:
    """The tables into a PostgreSQL database (psycopg connection): ev_utc as TIMESTAMPTZ, ev_naive as
    TIMESTAMP WITHOUT TIME ZONE (the two types a CRM uses)."""
    types = {
        "customers": "customer_id text, has_twitter boolean",
        "outcomes": "customer_id text, spend double precision",
    }
    ev = "customer_id text, ts {}, event_type text, value double precision"
    types.update(ev_utc=ev.format("timestamptz"), ev_naive=ev.format("timestamp"))
    for name, table in tables().items():
        if name not in types:
            continue
        con.execute(f"CREATE TABLE {name} ({types[name]})")
        with con.cursor() as cur, cur.copy(f"COPY {name} FROM STDIN") as copy:
            for row in table.to_pylist():
                copy.write_row(list(row.values()))


def reference_counts(root: Path) -> dict[str, float]:
    """Per arm, the mean number of events in [start, start + 30 days), counted on UTC instants."""
    units = pq.read_table(root / "results" / "p" / "assignment.parquet").to_pylist()
    arm = {u["customer_id"]: u["arm"] for u in units}
    count = dict.fromkeys(arm, 0)
    for who, at, _ in events():
        if START <= at < START + WINDOW:
            count[who] += 1
    arms = sorted(set(arm.values()))
    return {a: sum(count[c] for c in arm if arm[c] == a) / list(arm.values()).count(a) for a in arms}
