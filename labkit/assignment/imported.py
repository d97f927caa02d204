"""Assignments a channel tool drew (``cohort.assignment``, ``method: imported/1``): checked and copied.

When a channel tool randomised, the cohort is exactly the customers of ``assignment.source`` whose arm is
not NULL (rows with a NULL arm are skipped, counted in ``imported.arm_null`` and warned about), with their
arm from ``arm_column`` (ids from ``id_column``, default ``cohort.id_column``) and ``assigned_at`` from
``assigned_at_column`` (converted to UTC; a naive timestamp is UTC, a date is its midnight) or
``cohort.start``. Every arm value must be one of the pilot's arms — or, with a value map
``assignment.arms: {'0': control, '1': voucher}``, a key of the map, compared in the column's type
(``'1'`` matches 1 and 1.0; ``'Joke'`` matches text exactly) — and every id present and unique.
``assignment.strata`` name the blocks the tool randomised within; they become the ``stratum`` label and
the analysis post-stratifies. ``cohort.where`` is checked, not applied: the customers failing it (or
absent from ``cohort.source``) are counted in the metadata with a warning. More customers than
``max_size`` are written, with ``cap_exceeded: true`` in the metadata: the analysis marks such a pilot
invalid, because the cap is a promise. Without ``max_size`` the cap is the imported count; without
``cohort.start`` the start is the earliest ``assigned_at`` (its UTC date), recorded as ``start``.
The ids are checked, and the blocks labelled, as for a drawn assignment (``labkit.assignment.draw``).
With ``cohort.unit_column`` (a cluster-randomised import) every cluster's customers must share one arm:
otherwise the import is refused with the count of mixed clusters (``labkit.data.clusters``); the file
then records each customer's ``cluster`` (text) as a drawn cluster assignment does, and customers without
one (absent from ``cohort.source``, or NULL there) are counted in a warning.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING

from labkit.assignment.draw import HELPER, check_ids, id_key, rows_word, stratum_label
from labkit.assignment.store import cohort_start, iso, meta_head
from labkit.errors import AssignmentError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import ibis

    from labkit.data.sources import Engine
    from labkit.spec import Pilot

IMPORTED_METHOD = "imported/1"


def imported_table(engine: Engine, pilot: Pilot) -> tuple[ibis.Table, dict]:
    """An assignment a channel tool drew: checked (ids, arms, where, cap) and copied.

    Rows whose arm is NULL are skipped (counted, with a warning): the tool did not assign them. The arm
    column's values are mapped through ``assignment.arms`` when given (``_arm_of``), else they must be the
    arm names. ``assignment.strata`` become the stratum label, as for a drawn stratified assignment. Without
    ``max_size`` the cap is the imported count; without ``start``, the earliest ``assigned_at`` (UTC date)."""
    import ibis

    from labkit.cohort import eligible
    from labkit.data.backends import sort_key

    c = pilot.spec.cohort
    a = c.assignment
    idc = a.id_column or c.id_column
    wanted = [idc, a.arm_column, *a.strata] + ([a.assigned_at_column] if a.assigned_at_column else [])
    engine.require_columns(a.source, wanted)
    engine.require_columns(c.source, [c.id_column])
    source_sha256 = _file_digest(engine, pilot, a.source)  # before any read: a later change cannot match it
    raw = engine.table(a.source)
    rows = int(engine.con.execute(raw.count()))
    imp = raw.filter(raw[a.arm_column].notnull())
    n = int(engine.con.execute(imp.count()))
    arm_null = rows - n
    if n == 0:
        what = "has no rows" if rows == 0 else f"has no row with an arm ({rows} {rows_word(rows)}, all NULL)"
        raise AssignmentError(
            pilot.id, f"the imported assignment '{a.source}' {what}; no customer to analyse"
        )
    check_ids(engine, pilot, imp, a.source, idc, f"the imported assignment '{a.source}'")
    arm = _arm_of(imp[a.arm_column], a.arms, a.source, a.arm_column).name("arm")
    raw_value = imp[a.arm_column].cast("string").name("v")
    values = engine.con.to_pyarrow(
        imp.group_by(raw_value, arm).aggregate(n=imp.count()).order_by("v")
    ).to_pylist()
    unknown = [(r["v"], int(r["n"])) for r in values if r["arm"] not in pilot.arms]
    if unknown:
        shown = ", ".join(f"{v!r} ({m} {rows_word(m)})" for v, m in unknown[:10])
        hint = (
            "add them to cohort.assignment.arms"
            if a.arms is not None
            else "map the column's values to arms with cohort.assignment.arms, e.g. arms: {'0': control, "
            "'1': treatment}"
        )
        raise DataError(
            a.source,
            f"arm value(s) that are not arms of the pilot: {shown}; arms: {', '.join(pilot.arms)}; {hint}",
            column=a.arm_column,
            rows=sum(m for _, m in unknown),
        )
    start_iso, start_date = None, c.start
    if a.assigned_at_column:
        at = _as_utc(imp[a.assigned_at_column], a.source, a.assigned_at_column)
        missing = int(engine.con.execute(imp.filter(at.isnull()).count()))
        if missing:
            raise DataError(
                a.source,
                f"{missing} {rows_word(missing)} have no assigned_at",
                column=a.assigned_at_column,
                rows=missing,
            )
        if start_date is None:
            earliest = engine.con.to_pyarrow(imp.aggregate(t=at.min())).to_pylist()[0]["t"]
            start_date = earliest.astimezone(dt.UTC).date()
    else:
        start = cohort_start(pilot)
        at = ibis.literal(start, type="timestamp('UTC')")
        start_iso = iso(start)
    # `where` is checked, not applied: count who fails it (or is absent from the cohort source).
    ik = imp.select(**{f"{HELPER}k": id_key(imp[idc])})
    pool = eligible(engine, pilot)
    src = engine.table(c.source)
    ek = pool.select(**{f"{HELPER}k": id_key(pool[c.id_column])})
    sk = src.select(**{f"{HELPER}k": id_key(src[c.id_column])})
    where_failed = int(engine.con.execute(ik.anti_join(ek, f"{HELPER}k").count()))
    absent = int(engine.con.execute(ik.anti_join(sk, f"{HELPER}k").count()))
    out = imp.select(
        customer_id=imp[idc],
        arm=arm.cast("string"),
        stratum=stratum_label(imp, a.strata),
        assigned_at=at,
    )
    warnings = []
    if c.unit_column is not None:  # a cluster-randomised import: every cluster in one arm
        from labkit.data.clusters import mixed_clusters, raise_on_mixed_clusters

        raise_on_mixed_clusters(pilot, mixed_clusters(engine, pilot, out, c.unit_column), c.unit_column)
        out, no_cluster = _with_clusters(engine, pilot, out)
        if no_cluster:
            warnings.append(
                f"{no_cluster} of {n} imported customers have no {c.unit_column} in source '{c.source}'; "
                "a cluster-randomised analysis cannot place them"
            )
    out = out.order_by(sort_key(engine.kind, out.customer_id))
    if arm_null:
        warnings.append(
            f"{arm_null} of {rows} rows of the imported assignment '{a.source}' have no arm "
            f"(NULL {a.arm_column}); they are skipped, not analysed"
        )
    if where_failed:
        warnings.append(
            f"{where_failed} of {n} imported customers fail cohort.where"
            + (f" ({absent} of them are not in source '{c.source}')" if absent else "")
            + "; they are analysed in their arms (intent-to-treat)"
        )
    cap = c.max_size if c.max_size is not None else n
    cap_exceeded = n > cap
    if cap_exceeded:
        warnings.append(
            f"the imported assignment holds {n} customers, more than max_size {cap}: the cap is a "
            "promise, so the pilot is invalid"
        )
    meta = meta_head(pilot, IMPORTED_METHOD, imp[idc].type())
    meta.update(
        {
            "source": a.source,
            "id_column": idc,
            "eligible": n,
            "max_size": cap,
            "capped": False,
            "cap_exceeded": cap_exceeded,
            "assigned_at": start_iso,
            "start": start_date.isoformat(),
            "imported": {
                "source": a.source,
                "arm_column": a.arm_column,
                "id_column": idc,
                "assigned_at_column": a.assigned_at_column,
                "arms": dict(a.arms) if a.arms is not None else None,
                "strata": list(a.strata),
                "rows": rows,
                "arm_null": arm_null,
                "where_failed": where_failed,
                "not_in_cohort_source": absent,
                "source_sha256": source_sha256,
                "max_size_default": c.max_size is None,
                "start_default": c.start is None,
            },
            "warnings": warnings,
        }
    )
    return out, meta


def _with_clusters(engine: Engine, pilot: Pilot, out) -> tuple[ibis.Table, int]:
    """The imported rows with each customer's ``cluster`` (``cohort.unit_column`` of the cohort source, as
    text; NULL when absent or NULL there), and how many have none. The cohort source's ids must then be
    unique, as for a draw."""
    from labkit.assignment.clusters import check_cluster_type

    c = pilot.spec.cohort
    engine.require_columns(c.source, [c.id_column, c.unit_column])
    src = engine.table(c.source)
    check_ids(engine, pilot, src, c.source, c.id_column, f"source '{c.source}'")
    check_cluster_type(src, c.source, c.unit_column)
    K, G = f"{HELPER}k", f"{HELPER}g"
    side = src.select(**{f"{K}2": id_key(src[c.id_column]), G: id_key(src[c.unit_column])})
    keyed = out.mutate(**{K: id_key(out.customer_id)})
    j = keyed.left_join(side, keyed[K] == side[f"{K}2"])
    out = j.select(*(j[name] for name in out.columns), cluster=j[G].cast("string"))
    missing = int(engine.con.execute(out.filter(out.cluster.isnull()).count()))
    return out, missing


def _file_digest(engine: Engine, pilot: Pilot, source: str) -> str | None:
    """sha256 of a file source (csv, parquet) as the import reads it, or None for a database table. The
    analysis groups the file by its arm column in place, without joining the copied assignment back,
    only while the file still has this digest (``labkit.data.aggregate``); remembered in the digest cache
    so that analysis does not hash the file again."""
    if pilot.lab.source(source).format not in ("csv", "parquet"):
        return None
    from labkit.data.sources import DigestCache

    cache = DigestCache.load(pilot.lab)
    digest = engine.digest(source, cache)
    cache.save()
    return digest


def _arm_of(col, mapping: dict[str, str] | None, source: str, column: str):
    """The arm of each row: the column's value as text, or its image under the value map.

    Map keys are the column's values as text, compared in the column's own type, so ``'1'`` and ``'1.0'``
    both match the float 1.0 and the integer 1, ``'true'`` matches a boolean true, and text matches
    exactly (case included: ``'Joke'`` is not ``'joke'``). A value the map does not name has no arm
    (NULL), which the caller reports with the value."""
    import ibis

    if mapping is None:
        return col.cast("string")
    dtype = col.type()
    branches = []
    for key, arm in mapping.items():
        literal = _typed_key(key, dtype)
        if literal is None:
            raise DataError(
                source,
                f"cohort.assignment.arms key {key!r} cannot be a value of this {dtype} column",
                column=column,
            )
        branches.append((col == literal, arm))
    return ibis.cases(*branches, else_=ibis.null().cast("string"))


def _typed_key(key: str, dtype):
    """A value-map key read in the column's type; None when it cannot be such a value."""
    text = key.strip()
    if dtype.is_string():
        return key
    if dtype.is_boolean():
        return {"true": True, "false": False, "1": True, "0": False}.get(text.lower())
    if dtype.is_numeric():
        try:
            number = float(text)
        except ValueError:
            return None
        if not math.isfinite(number):
            return None
        if dtype.is_integer():
            return int(number) if number.is_integer() else None
        return number
    return None


def _as_utc(col, source: str, column: str):
    """A timestamp or date column as UTC timestamps (the DuckDB session runs in UTC; naive means UTC)."""
    dtype = col.type()
    if dtype.is_date():
        col = col.cast("timestamp")
    elif not dtype.is_timestamp():
        raise DataError(source, f"type {dtype} is not a timestamp or date", column=column)
    return col.cast("timestamp('UTC')")
