"""One CRM and one pilot, written as parquet files, loaded into PostgreSQL tables and read by Spark.

Shared by tests/data/test_postgres.py and tests/data/test_spark.py. ``crm_tables()`` builds a seeded synthetic CRM
as Arrow tables (customers, outcomes, events) with nulls, mixed-case and non-ASCII text ids, hostile
text and a pre-period; ``write_lab(root, kind, ...)`` writes a lab whose sources are that CRM as files
(``files``), as tables of a PostgreSQL database (``postgres``) or as Spark sources (``spark``); the
pilot file is the same text in every lab. The pilot has a proportion, a mean with a covariate, a CUPED
event metric, a ratio and a quantile, a where clause (with a hostile value), a cap and strata.
"""

from __future__ import annotations

import datetime as dt
import math
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labkit.analysis import analyze

from conftest import pilot_yaml

URL_ENV = "CRM_DATABASE_URL"
PILOT_ID = "crm-pilot"
N = 2400
START = dt.datetime(2026, 11, 1)
HOSTILE = "'; DROP TABLE customers;--"

PILOT = pilot_yaml(
    id=PILOT_ID, title="Fast replies on the CRM",
    **{
        "hypothesis.mde": {"relative": 0.2},
        "cohort.where": [
            {"column": "has_twitter", "op": "==", "value": True},
            {"column": "tenure", "op": ">=", "value": 1},
            {"column": "segment", "op": "not_in", "value": [HOSTILE, "a\\b"]},
        ],
        "cohort.max_size": 1200,
        "cohort.stratify_by": ["region"],
        "cohort.salt": "equivalence-2026",
    },
    metrics=[
        {"name": "churned", "type": "proportion", "source": "outcomes", "column": "churned"},
        {"name": "spend", "type": "mean", "source": "outcomes", "column": "spend", "covariate": "pre_spend"},
        {"name": "replies", "type": "mean", "source": "events", "event": {"column": "event_type", "equals": "reply"},
         "aggregate": "count", "window_days": 30, "cuped": True},
        {"name": "orders_per_visit", "type": "ratio", "numerator": {"source": "outcomes", "column": "orders"},
         "denominator": {"source": "outcomes", "column": "visits"}},
        {"name": "spend_p50", "type": "quantile", "quantile": 0.5, "source": "outcomes", "column": "spend"},
    ],
)  # fmt: skip

SOURCES = {
    "customers": None,
    "outcomes": None,
    "events": "ts",
}


def _ids(n: int) -> list[str]:
    """Text ids whose bytewise order differs from a locale's: mixed case, digits, one non-ASCII letter."""
    out = []
    for i in range(n):
        prefix = ("C", "c", "Z", "a", "é")[i % 5]
        out.append(f"{prefix}-{i * 7919 % 100003:05d}")
    return out


def crm_tables(seed: int = 2026) -> dict[str, pa.Table]:
    """The synthetic CRM as Arrow tables (the files, the PostgreSQL rows and Spark's input are these)."""
    rng = np.random.default_rng(seed)
    ids = _ids(N)
    order = rng.permutation(N)  # the source's rows are not in id order
    ids = [ids[i] for i in order]
    twitter = rng.random(N) < 0.7
    twitter_col = [None if i % 41 == 0 else bool(v) for i, v in enumerate(twitter)]
    segments = np.array(["smb", "consumer", "enterprise"])[rng.integers(0, 3, N)].tolist()
    segments[3] = HOSTILE  # a customer whose segment IS the hostile text is left out by not_in
    segments[5] = "a\\b"
    segments[8] = None
    customers = pa.table(
        {
            "customer_id": pa.array(ids, pa.string()),
            "segment": pa.array(segments, pa.string()),
            "region": pa.array(np.array(["north", "south", "east", "west"])[rng.integers(0, 4, N)].tolist()),
            "has_twitter": pa.array(twitter_col, pa.bool_()),
            "tenure": pa.array(rng.integers(0, 60, N), pa.int64()),
        }
    )
    kept = [i for i in range(N) if i % 13 != 0]  # some customers have no outcome row
    pre = rng.gamma(2.0, 40.0, N)
    treated_effect = rng.normal(0, 5, N)
    spend = pre * 0.8 + rng.gamma(2.0, 10.0, N) + treated_effect
    churned = (rng.random(N) < 0.12).astype("int64")
    outcomes = pa.table(
        {
            "customer_id": pa.array([ids[i] for i in kept], pa.string()),
            "churned": pa.array([None if i % 37 == 0 else int(churned[i]) for i in kept], pa.int64()),
            "spend": pa.array(
                [None if i % 29 == 0 else round(float(spend[i]), 2) for i in kept], pa.float64()
            ),
            "pre_spend": pa.array(
                [None if i % 31 == 0 else round(float(pre[i]), 2) for i in kept], pa.float64()
            ),
            "orders": pa.array([int(v) for v in rng.poisson(3, len(kept))], pa.int64()),
            "visits": pa.array([int(v) for v in rng.poisson(9, len(kept))], pa.int64()),
        }
    )
    n_events = 6 * N
    who = rng.integers(0, N, n_events)
    offset_s = rng.integers(-35 * 86400, 35 * 86400, n_events)
    stamps = [START + dt.timedelta(seconds=int(s)) for s in offset_s]
    events = pa.table(
        {
            "customer_id": pa.array([ids[i] for i in who], pa.string()),
            "ts": pa.array(stamps, pa.timestamp("us")),
            "event_type": pa.array(
                np.array(["reply", "like", "reply", "dm"])[rng.integers(0, 4, n_events)].tolist()
            ),
            "value": pa.array(rng.gamma(1.5, 2.0, n_events).round(3), pa.float64()),
        }
    )
    return {"customers": customers, "outcomes": outcomes, "events": events}


def write_lab(root: Path, kind: str, tables: dict[str, pa.Table]) -> Path:
    """A lab folder whose sources are ``tables`` as files, PostgreSQL tables or Spark sources."""
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "experiments").mkdir(exist_ok=True)
    lines = []
    for name, ts in SOURCES.items():
        extra = f", timestamp: {ts}" if ts else ""
        if kind == "files":
            lines.append(f"  {name}: {{format: parquet, path: data/{name}.parquet{extra}}}")
        elif kind == "spark":
            lines.append(f"  {name}: {{format: spark, path: data/{name}.parquet{extra}}}")
        else:
            lines.append(f"  {name}: {{format: postgres, url_env: {URL_ENV}, table: {name}{extra}}}")
    if kind in ("files", "spark"):
        (root / "data").mkdir(exist_ok=True)
        for name, table in tables.items():
            pq.write_table(table, root / "data" / f"{name}.parquet")
    lab = textwrap.dedent(
        """\
        lab: crm-{kind}
        functions: [service]
        channels: [twitter]
        stages: [retention]
        sources:
        {sources}
        """
    ).format(kind=kind, sources="\n".join(lines))
    (root / "configs" / "lab.yaml").write_text(lab)
    (root / "experiments" / f"{PILOT_ID}.yaml").write_text(PILOT)
    return root


_PG = {"string": "text", "int64": "bigint", "double": "double precision", "bool": "boolean"}


def load_postgres(con, tables: dict[str, pa.Table]) -> None:
    """Create the CRM tables in a PostgreSQL database (psycopg connection) and COPY the rows in.
    Event times become timestamptz (the usual CRM type); the engine reads them back as UTC."""
    from psycopg import sql

    for name, table in tables.items():
        cols = []
        for field in table.schema:
            pg = "timestamptz" if pa.types.is_timestamp(field.type) else _PG[str(field.type)]
            cols.append(sql.SQL("{} {}").format(sql.Identifier(field.name), sql.SQL(pg)))
        con.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
        con.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(name), sql.SQL(", ").join(cols)))
        rows = table.to_pylist()
        with con.cursor() as cur:
            names = sql.SQL(", ").join(sql.Identifier(f.name) for f in table.schema)
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(name), names)) as copy:
                for row in rows:
                    values = list(row.values())
                    copy.write_row(
                        [v.replace(tzinfo=dt.UTC) if isinstance(v, dt.datetime) else v for v in values]
                    )
        con.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(name)))


# --------------------------------------------------------------------------------------------------
# comparing engines


def analysis_numbers(pilot) -> dict:
    """The analysis as the --json contract, without meta (which holds each source's digest)."""
    data = analyze(pilot).to_dict()
    data.pop("meta")
    return data


def assert_same_numbers(got, want, path="analysis"):
    """Equal structure; floats equal to floating-point tolerance."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), path
        for key in want:
            assert_same_numbers(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_numbers(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, int | float), path
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12) or (math.isnan(got) and math.isnan(want)), path
    else:
        assert got == want, path


class Fetched:
    """Rows each query brought back to Python, recorded through the engine's guarded backend."""

    def __init__(self, monkeypatch):
        from labkit.data import backends

        self.rows: list[int] = []
        original = backends.Guarded.__getattr__
        fetched = self

        def spy(guarded, name):
            value = original(guarded, name)
            if name not in ("to_pyarrow", "execute") or not callable(value):
                return value

            def run(*args, **kwargs):
                result = value(*args, **kwargs)
                fetched.rows.append(
                    getattr(result, "num_rows", None) or (len(result) if hasattr(result, "__len__") else 1)
                )
                return result

            return run

        monkeypatch.setattr(backends.Guarded, "__getattr__", spy)
