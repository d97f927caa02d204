"""The data checks that need the rows: a customer twice in a per-customer source, NaN or infinity, a
proportion's value other than 0/1. Each raises one ``DataError`` naming the source and column, with the
count of rows (never a customer's value; duplicate ids are shown only as pseudonyms).

The counts come with the per-arm rows of the query itself (``labkit.data.query.Check``); only a duplicate
costs more queries, and only when the joined rows and the units disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labkit.data.query import UNIT, id_match
from labkit.errors import AssignmentError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import ibis

    from labkit.data.query import Built, Check
    from labkit.data.sources import Engine
    from labkit.spec import Pilot


def raise_on_duplicates(
    engine: Engine, pilot: Pilot, built: Built, u: ibis.Table, rows: list[dict], *, units_n: int | None = None
) -> None:
    """Each per-customer source must hold an assigned customer at most once. Counted cheaply — the joined
    rows against the units — and only when they differ is each source grouped by id, to name it with a
    count of customers and example pseudonyms (never raw ids). Checked before anything else: with a
    duplicate the values are meaningless."""
    if not built.sources:
        return
    joined = sum(int(r["rows"]) for r in rows)
    units = (
        units_n
        if units_n is not None
        else int(engine.con.to_pyarrow(u.aggregate(n=u.count())).to_pylist()[0]["n"])
    )
    if joined == units:
        return
    idc = pilot.spec.cohort.id_column
    for source in built.sources:
        t = engine.table(source)
        mine = t.semi_join(u, id_match(t[idc], u[UNIT]))
        dup = mine.group_by(_lk_id=mine[idc]).aggregate(_lk_rows=mine.count())
        dup = dup.filter(dup["_lk_rows"] > 1)
        n = int(engine.con.to_pyarrow(dup.aggregate(ids=dup.count())).to_pylist()[0]["ids"])
        if not n:
            continue
        examples = (
            engine.con.to_pyarrow(dup.order_by("_lk_id").limit(3).select("_lk_id")).column(0).to_pylist()
        )
        from labkit.privacy import lab_key, pseudonym

        key = lab_key(pilot.lab)
        shown = ", ".join(pseudonym(v, key) for v in examples)
        raise DataError(
            source,
            f"{_plural(n, 'assigned customer')} {'has' if n == 1 else 'have'} more than one row; a per-customer "
            f"table needs one row per customer. examples, as pseudonyms (labkit.privacy.pseudonym): {shown}",
            column=idc,
            rows=n,
        )
    raise AssignmentError(
        pilot.id, f"the assignment's {units} customers matched {joined} rows; re-run `labkit assign`"
    )


def raise_on_checks(rows: list[dict], checks: list[Check]) -> None:
    """NaN/inf first, then non-0/1 proportions (duplicates are checked before, by raise_on_duplicates)."""
    order = {"nonfinite": 1, "not01": 2}
    for check in sorted(checks, key=lambda c: order[c.what]):
        bad = sum(int(row[check.name] or 0) for row in rows)
        if not bad:
            continue
        if check.what == "nonfinite":
            message = f"{_plural(bad, 'row')} of assigned customers {'holds' if bad == 1 else 'hold'} NaN or infinity"
        else:
            message = (
                f"{_plural(bad, 'row')} of assigned customers {'holds' if bad == 1 else 'hold'} a value "
                "other than 0/1; a proportion needs 0/1 or true/false"
            )
        raise DataError(check.source, message, column=check.column, rows=bad)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
