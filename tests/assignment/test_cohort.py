"""The eligibility grammar: each operator against a pandas expectation, type errors, hostile values."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labkit.cohort import apply_where, eligible
from labkit.data.sources import Engine
from labkit.errors import DataError, SpecErrors
from labkit.lab import load_lab
from labkit.spec import Filter, load_pilot

from conftest import CHURNED, pilot_yaml


def pilot_text(where: list[dict]) -> str:
    """The default pilot (tests/pilots.py) with this ``cohort.where``."""
    return pilot_yaml(**{"cohort.where": where, "metrics": [CHURNED]})


CANARY = Path("/tmp/labkit-canary-pwn")
HOSTILE = [
    "'; DROP TABLE customers;--",
    "x' OR '1'='1",
    "$(touch /tmp/labkit-canary-pwn)",
    "`touch /tmp/labkit-canary-pwn`",
    "a\nb",
    "consumer\u202e",
    "\u202econsumer",
    "%",
    "_",
    "*",
    "\\",
    '"); DROP TABLE customers; --',
]


def frame() -> pd.DataFrame:
    """Twelve customers with every column type the grammar handles, nulls included."""
    n = 12
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:02d}" for i in range(n)],
            "has_twitter": [True, False, None] * 4,
            "segment": ["consumer", "smb", "enterprise", None] * 3,
            "tenure": [0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144],
            "score": [0.5, float("nan"), None, 1.5, 2.5, -1.0, 0.0, 3.0, 0.25, 9.0, None, 4.0],
            "signup": [dt.date(2025, 1, 1) + dt.timedelta(days=30 * i) for i in range(n)],
            "last_seen": [dt.datetime(2026, 1, 1, 12) + dt.timedelta(hours=7 * i) for i in range(n)],
        }
    )


@pytest.fixture
def lab(tiny_lab):
    data = tiny_lab.root / "data"
    data.mkdir()
    f = frame()
    table = pa.table(
        {
            "customer_id": pa.array(f.customer_id),
            "has_twitter": pa.array([True, False, None] * 4, pa.bool_()),
            "segment": pa.array(["consumer", "smb", "enterprise", None] * 3, pa.string()),
            "tenure": pa.array(f.tenure, pa.int64()),
            # a real NaN (index 1) and a real null (2, 10): from_pandas=False keeps them apart
            "score": pa.array([None if i in (2, 10) else v for i, v in enumerate(f.score)], pa.float64()),
            "signup": pa.array(f.signup, pa.date32()),
            "last_seen": pa.array(f.last_seen, pa.timestamp("us")),
        }
    )
    pq.write_table(table, data / "customers.parquet")
    tiny_lab.frame = f
    tiny_lab.engine = None
    yield tiny_lab
    if tiny_lab.engine is not None:
        tiny_lab.engine.close()


def ids_where(lab, *filters: dict) -> list[str]:
    """The ids passing ``filters``, on one engine per test (opened on first use)."""
    if getattr(lab, "engine", None) is None:
        lab.engine = Engine.for_lab(load_lab(lab.root))
    engine = lab.engine
    t = apply_where(engine.table("customers"), [Filter(**f) for f in filters], source="customers")
    return sorted(engine.con.execute(t.select("customer_id")).customer_id)


def expect(lab, mask) -> list[str]:
    return sorted(lab.frame.customer_id[mask])


# --------------------------------------------------------------------------------------------------
# operators


@pytest.mark.parametrize(
    ("op", "value", "pandas"),
    [
        ("==", 13, lambda s: s == 13),
        ("!=", 13, lambda s: s != 13),
        ("<", 5, lambda s: s < 5),
        ("<=", 5, lambda s: s <= 5),
        (">", 34, lambda s: s > 34),
        (">=", 34, lambda s: s >= 34),
        ("<", 5.5, lambda s: s < 5.5),
        ("in", [1, 3, 144, 7], lambda s: s.isin([1, 3, 144, 7])),
        ("not_in", [1, 3, 144, 7], lambda s: ~s.isin([1, 3, 144, 7])),
    ],
)
def test_numeric_operators(lab, op, value, pandas):
    assert ids_where(lab, {"column": "tenure", "op": op, "value": value}) == expect(
        lab, pandas(lab.frame.tenure)
    )


def test_text_and_boolean_operators(lab):
    f = lab.frame
    assert ids_where(lab, {"column": "segment", "op": "==", "value": "smb"}) == expect(
        lab, f.segment == "smb"
    )
    assert ids_where(lab, {"column": "segment", "op": "in", "value": ["smb", "consumer"]}) == expect(
        lab, f.segment.isin(["smb", "consumer"])
    )
    assert ids_where(lab, {"column": "has_twitter", "op": "==", "value": True}) == expect(
        lab, f.has_twitter.eq(True)
    )
    # all conditions must hold (AND)
    assert ids_where(
        lab,
        {"column": "has_twitter", "op": "==", "value": True},
        {"column": "tenure", "op": ">=", "value": 5},
    ) == expect(lab, (f.has_twitter.eq(True)) & (f.tenure >= 5))


def test_a_missing_value_never_passes_a_comparison(lab):
    f = lab.frame
    known_segment = f.segment.notna()
    # != and not_in exclude customers whose value is missing: unknown is not eligible
    assert ids_where(lab, {"column": "segment", "op": "!=", "value": "smb"}) == expect(
        lab, known_segment & (f.segment != "smb")
    )
    assert ids_where(lab, {"column": "segment", "op": "not_in", "value": ["smb"]}) == expect(
        lab, known_segment & (f.segment != "smb")
    )
    assert ids_where(lab, {"column": "has_twitter", "op": "!=", "value": False}) == expect(
        lab, f.has_twitter.eq(True)
    )
    # NaN is missing too (DuckDB sorts NaN above every number, which would let it pass '>')
    assert ids_where(lab, {"column": "score", "op": ">", "value": 1.0}) == ["C03", "C04", "C07", "C09", "C11"]
    assert ids_where(lab, {"column": "score", "op": "!=", "value": 0.5}) == [
        "C03", "C04", "C05", "C06", "C07", "C08", "C09", "C11",
    ]  # fmt: skip


def test_null_operators(lab):
    f = lab.frame
    assert ids_where(lab, {"column": "segment", "op": "is_null"}) == expect(lab, f.segment.isna())
    assert ids_where(lab, {"column": "segment", "op": "not_null"}) == expect(lab, f.segment.notna())
    assert ids_where(lab, {"column": "has_twitter", "op": "is_null"}) == expect(lab, f.has_twitter.isna())
    assert ids_where(lab, {"column": "score", "op": "is_null"}) == ["C02", "C10"]


def test_dates_and_timestamps_take_iso_text(lab):
    f = lab.frame
    assert ids_where(lab, {"column": "signup", "op": ">=", "value": "2025-06-01"}) == expect(
        lab, f.signup >= dt.date(2025, 6, 1)
    )
    assert ids_where(lab, {"column": "last_seen", "op": "<", "value": "2026-01-02T12:00:00"}) == expect(
        lab, f.last_seen < dt.datetime(2026, 1, 2, 12)
    )
    # an offset is converted to UTC (the column is naive UTC)
    assert ids_where(lab, {"column": "last_seen", "op": "<", "value": "2026-01-02T13:00:00+01:00"}) == expect(
        lab, f.last_seen < dt.datetime(2026, 1, 2, 12)
    )


def test_eligible_reads_the_pilots_where(lab):
    lab.pilot(
        pilot_text([{"column": "tenure", "op": ">", "value": 20}, {"column": "segment", "op": "not_null"}])
    )
    pilot = load_pilot("p")
    engine = Engine.for_lab(pilot.lab)
    try:
        got = sorted(engine.con.execute(eligible(engine, pilot)).customer_id)
    finally:
        engine.close()
    f = lab.frame
    assert got == expect(lab, (f.tenure > 20) & f.segment.notna())


# --------------------------------------------------------------------------------------------------
# errors


def test_a_missing_column_lists_the_columns(lab):
    with pytest.raises(DataError) as info:
        ids_where(lab, {"column": "tier", "op": "==", "value": "gold"})
    assert str(info.value) == (
        "source 'customers', column 'tier': no such column; columns: customer_id, has_twitter, segment, tenure, "
        "score, signup, last_seen"
    )
    assert info.value.column == "tier" and info.value.source == "customers"


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        (
            {"column": "has_twitter", "op": "==", "value": "yes"},
            'cohort.where[0] (has_twitter == "yes"): the column is boolean, which cannot be compared with '
            '"yes" (text); give true or false',
        ),
        (
            {"column": "tenure", "op": ">", "value": "12"},
            'cohort.where[0] (tenure > "12"): the column is int64, which cannot be compared with "12" (text); '
            "give a number",
        ),
        (
            {"column": "tenure", "op": "==", "value": True},
            "cohort.where[0] (tenure == true): the column is int64, which cannot be compared with true "
            "(true/false); give a number",
        ),
        (
            {"column": "segment", "op": "in", "value": ["smb", 3]},
            'cohort.where[0] (segment in ["smb", 3]): the column is string, which cannot be compared with 3 '
            "(a number); give text (quote it in YAML)",
        ),
        (
            {"column": "signup", "op": ">", "value": "last year"},
            'cohort.where[0] (signup > "last year"): the column is date, which cannot be compared with '
            '"last year" (text); give an ISO date as text, e.g. "2026-01-31"',
        ),
        (
            {"column": "has_twitter", "op": "<", "value": True},
            "cohort.where[0] (has_twitter < true): a true/false column has no order; use ==, !=, in or not_in",
        ),
    ],
)
def test_a_value_of_the_wrong_type_is_a_clear_error(lab, flt, message):
    with pytest.raises(DataError) as info:
        ids_where(lab, flt)
    assert str(info.value) == f"source 'customers', column '{flt['column']}': {message}"


def test_type_errors_name_the_filter_position(lab):
    with pytest.raises(DataError, match=r"cohort\.where\[1\] \(tenure < \"x\"\)"):
        ids_where(
            lab, {"column": "tenure", "op": ">", "value": 1}, {"column": "tenure", "op": "<", "value": "x"}
        )


# --------------------------------------------------------------------------------------------------
# hostile values are plain literals


@pytest.mark.parametrize("payload", HOSTILE)
def test_a_hostile_value_matches_nothing_and_harms_nothing(lab, payload):
    CANARY.unlink(missing_ok=True)
    source = lab.root / "data" / "customers.parquet"
    before = source.read_bytes()
    assert ids_where(lab, {"column": "segment", "op": "==", "value": payload}) == []
    assert ids_where(lab, {"column": "segment", "op": "in", "value": [payload, "nobody"]}) == []
    assert ids_where(lab, {"column": "segment", "op": "!=", "value": payload}) == expect(
        lab, lab.frame.segment.notna()
    )
    assert ids_where(lab, {"column": "customer_id", "op": ">=", "value": payload}) == expect(
        lab, lab.frame.customer_id >= payload
    )
    assert not CANARY.exists()
    assert source.read_bytes() == before
    assert len(ids_where(lab)) == 12  # the table is intact


def test_a_hostile_value_matches_exactly_the_customer_who_has_it(lab):
    # proof that the value is compared as text: a customer whose segment IS the payload is found, only them
    payload = "'; DROP TABLE customers;--"
    table = pq.read_table(lab.root / "data" / "customers.parquet")
    segments = table.column("segment").to_pylist()
    segments[4] = payload
    pq.write_table(
        table.set_column(2, "segment", pa.array(segments, pa.string())),
        lab.root / "data" / "customers.parquet",
    )
    assert ids_where(lab, {"column": "segment", "op": "==", "value": payload}) == ["C04"]


def test_hostile_values_from_a_pilot_file_are_literals(lab):
    CANARY.unlink(missing_ok=True)
    where = [
        {
            "column": "segment",
            "op": "not_in",
            "value": ["'; DROP TABLE customers;--", "$(touch /tmp/labkit-canary-pwn)"],
        },
        {"column": "customer_id", "op": "!=", "value": "a\nb\u202e"},
    ]
    lab.pilot(pilot_text(where))
    pilot = load_pilot("p")
    assert pilot.spec.cohort.where[1].value == "a\nb\u202e"
    engine = Engine.for_lab(pilot.lab)
    try:
        got = sorted(engine.con.execute(eligible(engine, pilot)).customer_id)
    finally:
        engine.close()
    assert got == expect(lab, lab.frame.segment.notna())
    assert not CANARY.exists()


def test_hostile_column_names_never_reach_the_engine(lab):
    lab.pilot(pilot_text([{"column": "x; DROP TABLE customers", "op": "is_null"}]))
    with pytest.raises(
        SpecErrors, match=r"cohort\.where\.0\.column: 'x; DROP TABLE customers' is not a plain column"
    ):
        load_pilot("p")
    # and a name built in code is only ever looked up among the table's columns
    with pytest.raises(DataError, match=r"column 'x\"; DROP TABLE customers; --': no such column"):
        ids_where(lab, {"column": 'x"; DROP TABLE customers; --', "op": "is_null"})
    assert len(ids_where(lab)) == 12


def test_numbers_out_of_range(lab):
    with pytest.raises(
        DataError,
        match=r"cannot be compared with 1000000000000000000000000000000 \(a number\); give a "
        r"number the engine can hold$",
    ):
        ids_where(lab, {"column": "tenure", "op": "==", "value": 10**30})
    assert ids_where(lab, {"column": "score", "op": "<", "value": -1e308}) == []
