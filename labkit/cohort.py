"""Eligibility: ``cohort.where`` compiled to an Ibis filter over the cohort source.

The grammar is a list of conditions that must all hold (AND)::

    {column: C, op: "==" | "!=" | "<" | "<=" | ">" | ">=", value: V}
    {column: C, op: in | not_in, value: [V, ...]}
    {column: C, op: is_null | not_null}

Each value becomes an Ibis literal of the column's type — never SQL text, never ``eval`` — so a value
such as ``'; DROP TABLE customers;--`` or ``$(touch /tmp/pwn)`` is just text that no customer has.
Values must match the column's type: ``true``/``false`` for a boolean column, a number for a numeric
one, text for a text one; a date or timestamp column takes ISO text (``"2026-01-31"``,
``"2026-01-31T12:00:00"``; a timestamp without an offset is UTC). Anything else is a ``DataError``
naming the source, the column and the condition.

Nulls: a comparison (``==``, ``!=``, ``<``..., ``in``, ``not_in``) never holds for a customer whose value
is missing (null, or NaN in a float column) — someone whose consent is unknown is not eligible, even
under ``consent != false``. Only ``is_null`` selects missing values (it selects nulls, not NaN).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING

from labkit.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import ibis

    from labkit.data.sources import Engine
    from labkit.spec import Filter, Pilot

ORDERED_OPS = ("<", "<=", ">", ">=")


def eligible(engine: Engine, pilot: Pilot) -> ibis.Table:
    """The rows of the cohort source that pass every ``cohort.where`` condition (an unexecuted Ibis table)."""
    cohort = pilot.spec.cohort
    table = engine.table(cohort.source)
    return apply_where(table, cohort.where, source=cohort.source)


def apply_where(table: ibis.Table, filters: list[Filter], *, source: str) -> ibis.Table:
    """``table`` filtered by all ``filters``; the table itself when there are none."""
    if not filters:
        return table
    return table.filter([condition(table, f, source=source, index=i) for i, f in enumerate(filters)])


def condition(table: ibis.Table, f: Filter, *, source: str, index: int = 0) -> ibis.BooleanValue:
    """One condition as a boolean Ibis expression that is never null (a missing value fails it)."""
    if f.column not in table.columns:
        raise DataError(source, f"no such column; columns: {', '.join(table.columns)}", column=f.column)
    col = table[f.column]
    if f.op == "is_null":
        return col.isnull()
    if f.op == "not_null":
        return col.notnull()
    dtype = col.type()
    if f.op in ("in", "not_in"):
        values = f.value if isinstance(f.value, list) else [f.value]
        literals = [_literal(v, dtype, f, source, index) for v in values]
        test = col.isin(literals) if f.op == "in" else col.notin(literals)
    else:
        if f.op in ORDERED_OPS and dtype.is_boolean():
            raise DataError(
                source,
                f"cohort.where[{index}] ({describe(f)}): a true/false column has no order; "
                "use ==, !=, in or not_in",
                column=f.column,
            )
        lit = _literal(f.value, dtype, f, source, index)
        test = {
            "==": col == lit,
            "!=": col != lit,
            "<": col < lit,
            "<=": col <= lit,
            ">": col > lit,
            ">=": col >= lit,
        }[f.op]
    known = col.notnull()
    if dtype.is_floating():
        known = known & ~col.isnan()  # NaN sorts above every number in DuckDB; it is a missing value here
    return known & test.fill_null(False)


def describe(f: Filter) -> str:
    """A condition as a person reads it: ``has_twitter == true``, ``segment in ['smb', 'consumer']``."""
    if f.op in ("is_null", "not_null"):
        return f"{f.column} {f.op}"
    return f"{f.column} {f.op} {_show(f.value)}"


def _show(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # quotes and escapes newlines and control characters
    return repr(value)


def _literal(value, dtype, f: Filter, source: str, index: int):
    """``value`` as an Ibis literal of the column's type, or a DataError saying what the column takes."""
    import ibis

    def refuse(takes: str) -> DataError:
        return DataError(
            source,
            f"cohort.where[{index}] ({describe(f)}): the column is {dtype}, which cannot be compared with "
            f"{_kind(value)}; give {takes}",
            column=f.column,
        )

    if dtype.is_boolean():
        if not isinstance(value, bool):
            raise refuse("true or false")
        return ibis.literal(value, type=dtype)
    if dtype.is_numeric():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise refuse("a number")
        try:
            return ibis.literal(value)
        except Exception:  # e.g. an integer wider than any column type
            raise refuse("a number the engine can hold") from None
    if dtype.is_string():
        if not isinstance(value, str):
            raise refuse("text (quote it in YAML)")
        return ibis.literal(value, type="string")
    if dtype.is_date():
        if not isinstance(value, str):
            raise refuse('an ISO date as text, e.g. "2026-01-31"')
        try:
            return ibis.literal(dt.date.fromisoformat(value), type="date")
        except ValueError:
            raise refuse('an ISO date as text, e.g. "2026-01-31"') from None
    if dtype.is_timestamp():
        if not isinstance(value, str):
            raise refuse('an ISO timestamp as text, e.g. "2026-01-31T12:00:00"')
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            raise refuse('an ISO timestamp as text, e.g. "2026-01-31T12:00:00"') from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)  # naive text is UTC, as everywhere in labkit
        if dtype.timezone is None:
            moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
        return ibis.literal(moment, type=dtype)
    raise DataError(
        source,
        f"cohort.where[{index}] ({describe(f)}): columns of type {dtype} cannot be filtered; "
        "filter on a text, number, true/false, date or timestamp column",
        column=f.column,
    )


def _kind(value) -> str:
    if isinstance(value, bool):
        return f"{_show(value)} (true/false)"
    if isinstance(value, int | float):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        return f"{_show(value)} (text)"
    return repr(value)
