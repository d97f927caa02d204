"""Drawing a pilot's cohort and arms by keyed hashing: written once, atomically, never silently redrawn.

The draw (``method: keyed-hash-largest-remainder/1``)
-----------------------------------------------------
Let P be the pilot id, S the salt (``cohort.salt``, or P when unset), US the unit separator ``"\\x1f"``,
and ``text(c)`` a customer id as text: a string as it is, an integer in decimal (ids must be text or
integers, present, and unique in the whole cohort source). ``sha256_hex`` is the lowercase hex SHA-256
of the UTF-8 bytes; hex digests and ids are compared as text, bytewise (by their UTF-8 bytes).

1. Eligible: the rows of ``cohort.source`` passing every ``cohort.where`` condition (``labkit.cohort``).
2. Cap: if more than ``max_size`` customers are eligible, keep the ``max_size`` with the smallest
   ``cap(c) = sha256_hex("cap" + US + S + US + P + US + text(c))`` (ties, which need a SHA-256
   collision, by ``text(c)``): a simple random sample, deterministic, proportional to the strata in
   expectation. The eligible count is recorded, so the cap is visible. Everything below is about the
   customers kept.
3. Strata: customers with equal values in every ``stratify_by`` column (a missing value equals a missing
   value) form one stratum; all customers form one stratum without ``stratify_by``. A stratum's label is
   its values as text joined by ``|`` (``<null>`` for a missing value), or ``all``.
4. Weights: the arms in name order (sorted, so reordering them in YAML changes nothing, as it changes
   nothing in the cohort's hash) with their weights normalised exactly, w_a = v_a / sum(v) over the
   exact values of the numbers written (``labkit.spec.arm_weights``: rational arithmetic, so 0.333 x 3,
   0.3333333333333333 x 3 and 1, 1, 1 are all exactly 1/3).
5. Stratum keys: a stratum's key is ``k = sha256_hex("stratum" + US + S + US + P + US + m)`` where m is
   its smallest ``text(c)``; the strata are allocated one after the other in order of k (a keyed random
   order that depends on no engine's text of the stratum values).
6. Counts (largest remainder, with a running deficit; ``allocate``): a stratum of n customers gets
   ``floor(w_a n)`` of each arm a, leaving ``L = n - sum_a floor(w_a n)`` extra customers and remainders
   ``rho_a = w_a n - floor(w_a n)``. Each arm carries a deficit D_a, 0 before the first stratum. The L
   extras go one each to the L arms with ``rho_a > 0`` that have the largest ``D_a + rho_a`` (ties: the
   smaller ``sha256_hex(k + US + a)``); then ``D_a += rho_a - 1`` for an arm that got one and
   ``D_a += rho_a`` for the others. All in exact arithmetic. Example: 0.499/0.501 over 1,000
   one-customer strata gives 499/501, where plain largest remainder would give all 1,000 to the 0.501
   arm (and a permuted block of 1,000 slots, the previous method, could give any split).
7. Arms, within each stratum: ``h(c) = sha256_hex(S + US + P + US + text(c))``; order the stratum's
   customers by h (ties by text(c)) and number them r = 0, 1, 2, ...; the first c_1 of them get the
   first arm in name order, the next c_2 the second, and so on (c_a the stratum's count of arm a).

So in every stratum each arm's count is ``floor(w_a n)`` or ``ceil(w_a n)`` — within one customer of its
share, as close as integers allow, and exactly the share when that is whole — and which customers take
which arm is a keyed random permutation. Over the strata, the deficit gives the extra customers to the
arms that are short so far, which keeps each arm's total near ``w_a N`` (within 2 in every case the
property tests try, tests/test_draw_property.py), so labkit's SRM check does not reject labkit's own
draw however many small strata there are. The draw depends on the set of eligible customers, S and P
only — not on the order of the source's rows. The engine computes the hashes, the window ``ROW_NUMBER``
and, per stratum, its size and smallest id; only those per-stratum rows come to Python, which allocates
the counts and joins each stratum's rank thresholds back (a small in-memory table), so ten million
customers never sit in Python's memory at once. The same draw runs on DuckDB (files), PostgreSQL and
Spark and writes the same file from the same customers:
SHA-256 is spelled per backend (``labkit.data.backends``: DuckDB ``sha256(x)``, PostgreSQL
``encode(sha256(convert_to(x, 'UTF8')), 'hex')``, Spark ``sha2(x, 256)``), and text order is bytewise
everywhere (PostgreSQL sorts text ids by their UTF-8 bytes, whatever the database's collation). A
stratum label is the engine's text of the value: the same everywhere for text, integer and true/false
columns; float and timestamp columns may read differently (the arms do not depend on the label).

An assignment is drawn once. New customers added to the source later, or rows reordered, leave the
written file as it is; a redraw (``force=True``) over a changed population ranks the customers anew,
so some of them may change arm — which is why labkit never redraws without being told to.

Imported assignments (``cohort.assignment``, ``method: imported/1``)
--------------------------------------------------------------------
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

Files, in ``results/<id>/``
---------------------------
``assignment.parquet``, one row per customer, sorted by ``customer_id``: ``customer_id`` (the source
id column's type), ``arm`` (text), ``stratum`` (text), ``assigned_at`` (timestamp, microseconds, UTC:
``cohort.start`` at 00:00 for drawn assignments).

``assignment.json``, the metadata::

    format            1
    pilot             the pilot id
    method            "keyed-hash-largest-remainder/1" | "imported/1" (earlier drawn assignments:
                      "keyed-hash-blocks/1", the permuted-block draw; they stay as written)
    salt              the salt used (it is in the pilot file anyway; it is not a secret — the
                      pseudonym key of labkit.privacy is, and is never stored here)
    cohort            the pilot's cohort section as validated (a redraw is refused when it changes)
    cohort_sha256     Pilot.cohort_sha256 of that section
    source, id_column, id_type     where the ids came from
    eligible          customers eligible (drawn) / in the imported source (imported)
    assigned          customers written
    max_size, capped  the cap, and whether it removed eligible customers
    cap_exceeded      imported only: more customers than max_size (the pilot is invalid)
    weights           {arm: w_a}, the normalised weights the draw allocated (drawn only)
    counts            {arm: customers}, every arm of the pilot
    strata            {stratum label: {arm: customers}}
    assigned_at       cohort.start at 00:00 UTC, ISO; imported with a column: null
    start             imported only: the start date (cohort.start, or the earliest assigned_at)
    imported          imported only: source, arm_column, id_column, assigned_at_column, arms (the
                      value map or null), strata, rows (in the source), arm_null (rows skipped for a
                      NULL arm), where_failed (customers failing cohort.where, including those absent
                      from the cohort source), not_in_cohort_source, max_size_default, start_default
    warnings          sentences for people
    created_at        UTC, ISO 8601
    labkit_version    the version that drew it
    parquet_sha256    sha256 of assignment.parquet, checked on every load
    reclaimed_lock    only when a stale lock was reclaimed: {"pid", "taken_at"}

Writing: a lock file ``assignment.lock`` is created with ``O_CREAT|O_EXCL`` (a second ``labkit assign``
of the same pilot loses with a clear message; a lock whose process is gone is reclaimed, and said so on
stderr). Both files are written to temporary files in the same folder and fsynced; the metadata is then
renamed into place, and the parquet last — the parquet's rename (``os.replace``) is the commit, so
Ctrl-C or SIGKILL leaves either no ``assignment.parquet`` or a complete one whose metadata is beside it.
``force=True`` first moves the old pair to ``archive/<UTC time>/`` (nothing is ever deleted).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from labkit.errors import AssignmentError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import pandas as pd

    from labkit.data.sources import Engine
    from labkit.spec import Pilot

METHOD = "keyed-hash-largest-remainder/1"
IMPORTED_METHOD = "imported/1"
FORMAT = 1
US = "\x1f"
ROW_GROUP = 1_000_000
NULL_LABEL = "<null>"
_P = "__labkit_"  # prefix of helper columns, so they cannot collide with a source's own columns


@dataclass(frozen=True)
class Assignment:
    """A pilot's written assignment: the parquet file, its metadata and the counts per arm."""

    path: Path
    meta: dict = field(repr=False)
    counts: dict[str, int]
    eligible: int
    assigned: int

    @property
    def meta_path(self) -> Path:
        return self.path.with_name("assignment.json")

    def frame(self) -> pd.DataFrame:
        """The assignment as a DataFrame: customer_id, arm, stratum, assigned_at."""
        import pandas as pd

        return pd.read_parquet(self.path)

    def changes(self, pilot: Pilot) -> list[str]:
        """What differs between the cohort this was drawn for and the pilot's cohort now (empty: current)."""
        if self.meta.get("cohort_sha256") == pilot.cohort_sha256:
            return []
        old = self.meta.get("cohort")
        new = pilot.spec.cohort.model_dump(mode="json")
        found = _diff(old, new, "cohort") if isinstance(old, dict) else []
        return found or ["the cohort definition changed (its hash differs)"]


def assignment_path(pilot: Pilot) -> Path:
    """``results/<id>/assignment.parquet``."""
    return pilot.results_dir / "assignment.parquet"


def metadata_path(pilot: Pilot) -> Path:
    """``results/<id>/assignment.json``."""
    return pilot.results_dir / "assignment.json"


def load_assignment(pilot: Pilot) -> Assignment:
    """The pilot's assignment as written by ``assign``; an AssignmentError when absent or tampered with."""
    path, meta_file = assignment_path(pilot), metadata_path(pilot)
    lab = pilot.lab
    if not path.is_file():
        raise AssignmentError(pilot.id, f"no assignment for {pilot.id}; run `labkit assign {pilot.id}` first")
    if not meta_file.is_file():
        raise AssignmentError(
            pilot.id,
            f"{lab.display(path)} has no {meta_file.name} beside it, so it was not written by `labkit assign`; "
            f"run `labkit assign {pilot.id} --force` to archive it and draw anew",
        )
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        counts = {str(k): int(v) for k, v in meta["counts"].items()}
        eligible, assigned, expected = (
            int(meta["eligible"]),
            int(meta["assigned"]),
            str(meta["parquet_sha256"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise AssignmentError(
            pilot.id,
            f"{lab.display(meta_file)} is not a labkit assignment's metadata (unreadable or incomplete)",
        ) from None
    from labkit.data.sources import file_digest

    if file_digest(path) != expected:
        raise AssignmentError(
            pilot.id,
            f"{lab.display(path)} does not match {meta_file.name} (its sha256 differs): the file was changed "
            f"after it was drawn; restore it from a backup or run `labkit assign {pilot.id} --force`",
        )
    return Assignment(path=path, meta=meta, counts=counts, eligible=eligible, assigned=assigned)


def assign(pilot: Pilot, *, force: bool = False, engine: Engine | None = None) -> Assignment:
    """Draw the pilot's cohort and arms and write them once; an existing, current assignment is returned as is.

    A cohort (or salt) changed since the draw is refused, naming what changed, unless ``force``: then the
    old assignment is archived under ``results/<id>/archive/<UTC time>/`` and the cohort is drawn anew.
    """
    if not force:
        existing = _existing(pilot)
        if existing is not None:
            return _unchanged(pilot, existing)
    folder = pilot.results_dir
    created = [d for d in (folder, *folder.parents) if not d.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _draw_and_write(pilot, force, engine)
    except BaseException:
        for d in created:  # a failed first draw leaves results/ as it found it
            try:
                d.rmdir()
            except OSError:
                break
        raise


def _draw_and_write(pilot: Pilot, force: bool, engine: Engine | None) -> Assignment:
    folder = pilot.results_dir
    with _Claim(pilot) as claim:
        if not force:
            existing = _existing(pilot)  # a racer may have finished between our check and our claim
            if existing is not None:
                return _unchanged(pilot, existing)
        _sweep_temporaries(folder)
        own = engine is None
        if own:
            from labkit.data.sources import Engine

            engine = Engine.for_lab(pilot.lab)
        temporaries: list[str] = []
        try:
            engine.bind(pilot)
            if pilot.spec.cohort.assignment is not None:
                expr, meta = _imported(engine, pilot)
            else:
                expr, meta = _drawn(engine, pilot)
            tmp_parquet, strata = _write_parquet(engine, expr, folder, temporaries)
            meta.update(_counted(pilot, strata))
            meta["created_at"] = _utc_now()
            from labkit import __version__

            meta["labkit_version"] = __version__
            from labkit.data.sources import file_digest

            meta["parquet_sha256"] = file_digest(Path(tmp_parquet))
            if claim.reclaimed is not None:
                meta["reclaimed_lock"] = claim.reclaimed
            tmp_json = _write_temp(
                folder, "assignment.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n"
            )
            temporaries.append(tmp_json)
            if force:
                _archive(pilot)
            os.replace(tmp_json, metadata_path(pilot))
            os.replace(tmp_parquet, assignment_path(pilot))  # the commit
            _fsync_dir(folder)
        finally:
            for tmp in temporaries:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            if own:
                engine.close()
    return load_assignment(pilot)


# --------------------------------------------------------------------------------------------------
# re-runs and changes


def _existing(pilot: Pilot) -> Assignment | None:
    """The written assignment, or None when there is none (a metadata file without parquet is a crashed draw)."""
    if not assignment_path(pilot).is_file():
        return None
    return load_assignment(pilot)


def _unchanged(pilot: Pilot, existing: Assignment) -> Assignment:
    changes = existing.changes(pilot)
    if not changes:
        return existing
    shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
    salt = any(c.startswith("cohort.salt ") for c in changes)
    why = " (a new salt would redraw every arm)" if salt else ""
    archive = pilot.lab.display(pilot.results_dir / "archive")
    raise AssignmentError(
        pilot.id,
        f"{shown} since the assignment was drawn on {existing.meta.get('created_at', '?')}{why}; "
        f"run `labkit assign {pilot.id} --force` to redraw (the old assignment is archived under {archive}/)",
    )


def _diff(old, new, path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in [*old, *(k for k in new if k not in old)]:
            sub = f"{path}.{key}"
            if key not in new:
                out.append(f"{sub} was removed (it was {_shown(old[key])})")
            elif key not in old:
                out.append(f"{sub} was added ({_shown(new[key])})")
            else:
                out += _diff(old[key], new[key], sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _diff(a, b, f"{path}[{i}]")]
    if old != new or type(old) is not type(new):
        if (
            isinstance(old, int | float)
            and isinstance(new, int | float)
            and not isinstance(old, bool)
            and old == new
        ):
            return []
        return [f"{path} changed from {_shown(old)} to {_shown(new)}"]
    return []


def _shown(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, str):
        return repr(value)
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


# --------------------------------------------------------------------------------------------------
# the draw, in the engine


def stratum_key(salt: str, pilot_id: str, smallest_id: str) -> str:
    """Step 5 of the module docstring: a stratum's key, from its bytewise-smallest id (engine-independent)."""
    return _sha256_text("stratum" + US + salt + US + pilot_id + US + smallest_id)


def allocate(weights: Mapping[str, Fraction], sizes: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Step 6 of the module docstring: each stratum's count per arm, {stratum key: {arm: count}}.

    ``weights`` are exact and sum to 1 (``labkit.spec.arm_weights``); ``sizes`` maps each stratum's key
    (``stratum_key``) to its number of customers. Strata are allocated in order of their keys; arms are in
    name order. Every count is ``floor(w * n)`` or ``ceil(w * n)`` of its stratum, by construction; the
    running deficit sends the extra customers of successive strata to the arms that are short so far.
    All arithmetic is in integers (weights over their common denominator), so there is no rounding.
    """
    arms = sorted(weights)
    if sum(weights.values()) != 1 or any(w <= 0 for w in weights.values()):
        raise ValueError(f"weights must be positive and sum to exactly 1, got {dict(weights)}")
    denominator = math.lcm(*(weights[a].denominator for a in arms))
    units = {a: weights[a].numerator * (denominator // weights[a].denominator) for a in arms}
    deficit = dict.fromkeys(arms, 0)  # D_a, in units of 1/denominator
    out: dict[str, dict[str, int]] = {}
    for key in sorted(sizes):
        n = sizes[key]
        base, rest = {}, {}
        for a in arms:
            base[a], rest[a] = divmod(units[a] * n, denominator)
        extra = n - sum(base.values())
        chosen: set[str] = set()
        if extra:
            candidates = sorted(
                (a for a in arms if rest[a] > 0),
                key=lambda a: (-(deficit[a] + rest[a]), _sha256_text(key + US + a)),
            )
            chosen = set(candidates[:extra])
        counts = {}
        for a in arms:
            got = a in chosen
            counts[a] = base[a] + got
            deficit[a] += rest[a] - (denominator if got else 0)
        out[key] = counts
    return out


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _key(col) -> ibis.StringValue:
    """text(c): the id as text (strings as they are, integers in decimal)."""
    return col if col.type().is_string() else col.cast("string")


def _sha256(kind: str, *parts) -> ibis.StringValue:
    """sha256_hex of the parts concatenated, as the backend ``kind`` spells it (``labkit.data.backends``)."""
    import ibis

    from labkit.data.backends import sha256_hex

    text = None
    for part in parts:
        piece = ibis.literal(part, type="string") if isinstance(part, str) else part
        text = piece if text is None else text + piece
    return sha256_hex(kind, text)


def _check_ids(engine: Engine, pilot: Pilot, table, source: str, column: str, what: str) -> None:
    """Ids must be text or integers, present, and unique; duplicates are shown as pseudonyms only."""
    dtype = table[column].type()
    if not (dtype.is_string() or dtype.is_integer()):
        raise DataError(
            source, f"type {dtype} cannot hold customer ids; ids must be text or integers", column=column
        )
    col = table[column]
    row = engine.con.to_pyarrow(
        table.aggregate(rows=table.count(), ids=col.count(), distinct=col.nunique())
    ).to_pylist()[0]
    rows, ids, distinct = int(row["rows"]), int(row["ids"]), int(row["distinct"])
    if rows != ids:
        missing = rows - ids
        raise DataError(
            source,
            f"{missing} {_rows(missing)} of {what} have no id; every row needs one",
            column=column,
            rows=missing,
        )
    if ids != distinct:
        dup = table.group_by(column).aggregate(n=table.count()).filter(lambda t: t.n > 1)
        stats = engine.con.to_pyarrow(dup.aggregate(ids=dup.count(), rows=dup.n.sum())).to_pylist()[0]
        examples = engine.con.to_pyarrow(dup.order_by(column).limit(3)[[column]]).column(0).to_pylist()
        from labkit.privacy import lab_key, pseudonym

        key = lab_key(pilot.lab)
        shown = ", ".join(pseudonym(v, key) for v in examples)
        n_ids, n_rows = int(stats["ids"]), int(stats["rows"])
        raise DataError(
            source,
            f"{n_ids} customer {'id appears' if n_ids == 1 else 'ids appear'} more than once ({n_rows} rows) "
            f"in {what}; each customer needs exactly one row. examples, as pseudonyms (labkit.privacy."
            f"pseudonym): {shown}",
            column=column,
            rows=n_rows,
        )


def _rows(n: int) -> str:
    return "row" if n == 1 else "rows"


def _drawn(engine: Engine, pilot: Pilot) -> tuple[ibis.Table, dict]:
    """The keyed-hash draw as one Ibis expression (customer_id, arm, stratum, assigned_at) and its metadata.

    The engine hashes and ranks every customer; only one row per stratum (its size and smallest id) comes
    to Python, which allocates the counts (``allocate``) and sends each stratum's rank thresholds back."""
    import ibis
    import pyarrow as pa

    from labkit.cohort import eligible
    from labkit.data.backends import sort_key
    from labkit.spec import arm_weights

    c = pilot.spec.cohort
    engine.require_columns(c.source, [c.id_column, *c.stratify_by])
    source_table = engine.table(c.source)
    _check_ids(engine, pilot, source_table, c.source, c.id_column, f"source '{c.source}'")
    pool = eligible(engine, pilot)
    S, P = pilot.salt, pilot.id
    ID, K, H, R, MK = (f"{_P}{name}" for name in ("id", "k", "h", "r", "mk"))
    strata = [f"{_P}s{i}" for i in range(len(c.stratify_by))]
    # Only the columns the draw needs travel through the sorts.
    t = pool.select(
        **{ID: pool[c.id_column], K: _key(pool[c.id_column])},
        **{name: pool[col] for name, col in zip(strata, c.stratify_by)},
    )
    sizes = _strata_sizes(engine, t, strata)
    n_eligible = sum(n for n, _, _ in sizes)
    if n_eligible == 0:
        _explain_empty(engine, pilot, source_table)
    capped = n_eligible > c.max_size
    if capped:
        cap = _sha256(engine.kind, "cap" + US + S + US + P + US, t[K])
        t = t.order_by([cap, sort_key(engine.kind, t[K])]).limit(c.max_size)
        sizes = _strata_sizes(engine, t, strata)
    weights = arm_weights(c.arms)
    names = sorted(weights)
    joined = {stratum_key(S, P, mk): raw for _, raw, mk in sizes}  # the engine's own value, to join on
    counts = allocate(weights, {stratum_key(S, P, mk): n for n, _, mk in sizes})
    # rank thresholds: arm names[i] takes the ranks below bounds[i] (and from the previous bound)
    bounds = {key: _bounds([counts[key][a] for a in names]) for key in counts}
    t = t.mutate(**{H: _sha256(engine.kind, S + US + P + US, t[K])})
    group = [t[name] for name in strata] or None
    t = t.mutate(**{R: ibis.row_number().over(group_by=group, order_by=[t[H], sort_key(engine.kind, t[K])])})
    B = [f"{_P}b{i}" for i in range(len(names) - 1)]
    if strata:
        t = t.mutate(**{MK: _smallest_id(engine.kind, t[K], group)})
        keys = sorted(bounds)
        table = pa.table(
            {
                f"{MK}2": pa.array([joined[k] for k in keys], pa.string()),
                **{b: pa.array([bounds[k][i] for k in keys], pa.int64()) for i, b in enumerate(B)},
            }
        )
        thresholds = ibis.memtable(table)
        t = t.join(thresholds, t[MK] == thresholds[f"{MK}2"])
        limits = [t[b] for b in B]
    else:
        (only,) = bounds.values()
        limits = [ibis.literal(v, type="int64") for v in only]
    branches = [(t[R] < limit, arm) for limit, arm in zip(limits, names)]
    arm_expr = ibis.cases(*branches, else_=names[-1])
    if strata:
        parts = [t[name].cast("string").fill_null(NULL_LABEL) for name in strata]
        label = parts[0]
        for part in parts[1:]:
            label = label + "|" + part
    else:
        label = ibis.literal("all")
    start = _start(pilot)
    out = t.select(
        customer_id=t[ID],
        arm=arm_expr.cast("string"),
        stratum=label.cast("string"),
        assigned_at=ibis.literal(start, type="timestamp('UTC')"),
    )
    out = out.order_by(sort_key(engine.kind, out.customer_id))
    meta = _meta_head(pilot, METHOD, source_table[c.id_column].type())
    meta.update(
        {
            "source": c.source,
            "id_column": c.id_column,
            "eligible": n_eligible,
            "max_size": c.max_size,
            "capped": capped,
            "cap_exceeded": False,
            "weights": {a: float(weights[a]) for a in names},
            "assigned_at": _iso(start),
            "warnings": (
                [
                    f"{n_eligible - c.max_size} of {n_eligible} eligible customers were left out by the cap "
                    f"(max_size {c.max_size}), at random"
                ]
                if capped
                else []
            ),
        }
    )
    return out, meta


def _bounds(counts: list[int]) -> list[int]:
    """Cumulative counts of all arms but the last: the rank below which each arm ends."""
    out, total = [], 0
    for n in counts[:-1]:
        total += n
        out.append(total)
    return out


def _strata_sizes(engine: Engine, t, strata: list[str]) -> list[tuple[int, str, str]]:
    """(customers, the engine's smallest-id value, the smallest text id) of every stratum of ``t``: one row
    per stratum comes to Python."""
    K = f"{_P}k"
    n, mk = t.count(), _smallest_id(engine.kind, t[K])
    agg = t.group_by(strata).aggregate(n=n, mk=mk) if strata else t.aggregate(n=n, mk=mk)
    rows = engine.con.to_pyarrow(agg.select("n", "mk")).to_pylist()
    return [(int(r["n"]), r["mk"], _id_text(engine.kind, r["mk"])) for r in rows if r["n"]]


def _smallest_id(kind: str, k, group=None):
    """The smallest text id in UTF-8 byte order (of each stratum, when ``group`` is given).

    DuckDB and Spark compare text bytewise. PostgreSQL compares text by the database's collation and has
    no min() of bytes, so there it is the smallest lowercase hex of the id's UTF-8 bytes — hex digits order
    alike in every collation, and hex text orders as its bytes do — read back by ``_id_text``."""
    from labkit.data.backends import POSTGRES, _pg_functions

    if kind == POSTGRES:
        convert_to, _, encode = _pg_functions()
        k = encode(convert_to(k, "UTF8"), "hex")
    key = k.min()
    return key.over(group_by=group) if group is not None else key


def _id_text(kind: str, value: str) -> str:
    """``_smallest_id``'s value as the id's text."""
    from labkit.data.backends import POSTGRES

    return bytes.fromhex(value).decode("utf-8") if kind == POSTGRES else value


def _explain_empty(engine: Engine, pilot: Pilot, table) -> None:
    """Raise the empty-cohort error, with how many rows each condition keeps on its own."""
    from labkit.cohort import condition, describe

    c = pilot.spec.cohort
    aggs = {"rows": table.count()}
    for i, f in enumerate(c.where):
        aggs[f"f{i}"] = condition(table, f, source=c.source, index=i).ifelse(1, 0).sum()
    row = engine.con.to_pyarrow(table.aggregate(**aggs)).to_pylist()[0]
    rows = int(row["rows"])
    if rows == 0:
        raise AssignmentError(pilot.id, f"no eligible customers: source '{c.source}' has no rows")
    keeps = "; ".join(
        f"where[{i}] {describe(f)} keeps {int(row[f'f{i}'] or 0)}" for i, f in enumerate(c.where)
    )
    raise AssignmentError(
        pilot.id,
        f"no eligible customers: none of the {rows} rows of source '{c.source}' passes all of cohort.where "
        f"(alone, {keeps})",
    )


def _imported(engine: Engine, pilot: Pilot) -> tuple[ibis.Table, dict]:
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
    raw = engine.table(a.source)
    rows = int(engine.con.execute(raw.count()))
    imp = raw.filter(raw[a.arm_column].notnull())
    n = int(engine.con.execute(imp.count()))
    arm_null = rows - n
    if n == 0:
        what = "has no rows" if rows == 0 else f"has no row with an arm ({rows} {_rows(rows)}, all NULL)"
        raise AssignmentError(
            pilot.id, f"the imported assignment '{a.source}' {what}; no customer to analyse"
        )
    _check_ids(engine, pilot, imp, a.source, idc, f"the imported assignment '{a.source}'")
    arm = _arm_of(imp[a.arm_column], a.arms, a.source, a.arm_column).name("arm")
    raw_value = imp[a.arm_column].cast("string").name("v")
    values = engine.con.to_pyarrow(
        imp.group_by(raw_value, arm).aggregate(n=imp.count()).order_by("v")
    ).to_pylist()
    unknown = [(r["v"], int(r["n"])) for r in values if r["arm"] not in pilot.arms]
    if unknown:
        shown = ", ".join(f"{v!r} ({m} {_rows(m)})" for v, m in unknown[:10])
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
                f"{missing} {_rows(missing)} have no assigned_at",
                column=a.assigned_at_column,
                rows=missing,
            )
        if start_date is None:
            earliest = engine.con.to_pyarrow(imp.aggregate(t=at.min())).to_pylist()[0]["t"]
            start_date = earliest.astimezone(dt.UTC).date()
    else:
        start = _start(pilot)
        at = ibis.literal(start, type="timestamp('UTC')")
        start_iso = _iso(start)
    # `where` is checked, not applied: count who fails it (or is absent from the cohort source).
    ik = imp.select(**{f"{_P}k": _key(imp[idc])})
    pool = eligible(engine, pilot)
    src = engine.table(c.source)
    ek = pool.select(**{f"{_P}k": _key(pool[c.id_column])})
    sk = src.select(**{f"{_P}k": _key(src[c.id_column])})
    where_failed = int(engine.con.execute(ik.anti_join(ek, f"{_P}k").count()))
    absent = int(engine.con.execute(ik.anti_join(sk, f"{_P}k").count()))
    out = imp.select(
        customer_id=imp[idc],
        arm=arm.cast("string"),
        stratum=_stratum_label(imp, a.strata),
        assigned_at=at,
    )
    out = out.order_by(sort_key(engine.kind, out.customer_id))
    warnings = []
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
    meta = _meta_head(pilot, IMPORTED_METHOD, imp[idc].type())
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
                "max_size_default": c.max_size is None,
                "start_default": c.start is None,
            },
            "warnings": warnings,
        }
    )
    return out, meta


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
    import math

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


def _stratum_label(table, columns: list[str]):
    """The blocks' values as text joined by ``|`` (``<null>`` for a missing value), or ``all``."""
    import ibis

    if not columns:
        return ibis.literal("all").cast("string")
    parts = [table[col].cast("string").fill_null(NULL_LABEL) for col in columns]
    label = parts[0]
    for part in parts[1:]:
        label = label + "|" + part
    return label.cast("string")


def _as_utc(col, source: str, column: str):
    """A timestamp or date column as UTC timestamps (the DuckDB session runs in UTC; naive means UTC)."""
    dtype = col.type()
    if dtype.is_date():
        col = col.cast("timestamp")
    elif not dtype.is_timestamp():
        raise DataError(source, f"type {dtype} is not a timestamp or date", column=column)
    return col.cast("timestamp('UTC')")


def _start(pilot: Pilot) -> dt.datetime:
    d = pilot.spec.cohort.start
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _meta_head(pilot: Pilot, method: str, id_type) -> dict:
    return {
        "format": FORMAT,
        "pilot": pilot.id,
        "method": method,
        "salt": pilot.salt,
        "cohort": pilot.spec.cohort.model_dump(mode="json"),
        "cohort_sha256": pilot.cohort_sha256,
        "id_type": str(id_type),
    }


def _counted(pilot: Pilot, strata: dict[tuple[str, str], int]) -> dict:
    arms = list(pilot.arms)
    counts = {a: 0 for a in arms}
    by_stratum: dict[str, dict[str, int]] = {}
    for (stratum, arm), n in sorted(strata.items()):
        counts[arm] = counts.get(arm, 0) + n
        by_stratum.setdefault(stratum, {a: 0 for a in arms})[arm] = n
    return {"assigned": sum(counts.values()), "counts": counts, "strata": by_stratum}


# --------------------------------------------------------------------------------------------------
# writing


def _arrow_batches(engine: Engine, expr, rows: int):
    """A streaming reader over the expression's rows (bounded memory)."""
    con = engine.con
    if getattr(con, "name", "") == "duckdb":
        # ibis 12's to_pyarrow_batches calls a cursor method DuckDB 2.0 no longer has; go through a relation
        # (registering the expression's memtables first, as ibis would: the draw's stratum thresholds).
        con._run_pre_execute_hooks(expr)
        return con.con.sql(con.compile(expr)).to_arrow_reader(rows)
    return con.to_pyarrow_batches(expr, chunk_size=rows)  # pragma: no cover - other backends


def _write_parquet(engine: Engine, expr, folder: Path, temporaries: list[str]) -> tuple[str, dict]:
    """Stream the sorted rows into a temporary parquet file (fixed row groups, fsynced); count (stratum, arm)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = _arrow_batches(engine, expr, 256_000)
    except Exception as exc:  # the engine's text may quote a row: one labkit line instead
        raise _engine_error(engine, exc) from None
    id_type = reader.schema.field("customer_id").type
    if pa.types.is_large_string(id_type) or pa.types.is_string_view(id_type):
        id_type = pa.string()
    schema = pa.schema(
        [
            ("customer_id", id_type),
            ("arm", pa.string()),
            ("stratum", pa.string()),
            ("assigned_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".assignment.parquet.", suffix=".tmp")
    temporaries.append(tmp)
    _usual_mode(fd)
    strata: dict[tuple[str, str], int] = {}
    pending: list[pa.Table] = []
    buffered = 0
    with os.fdopen(fd, "wb") as fh:
        # Fixed-size row groups make the bytes independent of how the engine happened to batch the rows.
        writer = pq.ParquetWriter(fh, schema, compression="zstd")
        try:
            for batch in _guarded_batches(engine, reader):
                part = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
                for row in part.group_by(["stratum", "arm"]).aggregate([("arm", "count")]).to_pylist():
                    k = (row["stratum"], row["arm"])
                    strata[k] = strata.get(k, 0) + int(row["arm_count"])
                pending.append(part)
                buffered += part.num_rows
                while buffered >= ROW_GROUP:
                    whole = pa.concat_tables(pending)
                    writer.write_table(whole.slice(0, ROW_GROUP), row_group_size=ROW_GROUP)
                    rest = whole.slice(ROW_GROUP)
                    pending, buffered = [rest], rest.num_rows
            if buffered:
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP)
        finally:
            writer.close()
        fh.flush()
        os.fsync(fh.fileno())
    return tmp, strata


def _guarded_batches(engine: Engine, reader):
    """The reader's batches; a failure while the engine produces one (a row that fails to convert) is
    labkit's one line, never the engine's text, which may quote the row. Writing errors are not caught."""
    batches = iter(reader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:
            raise _engine_error(engine, exc) from None
        yield batch


def _engine_error(engine: Engine, exc: Exception) -> Exception:
    """The engine's failure as labkit's one line (``Engine.error``); any other exception unchanged."""
    translated = engine.error(exc)
    if translated is exc:
        raise exc
    return translated


def _write_temp(folder: Path, name: str, text: str) -> str:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        _usual_mode(fd)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _usual_mode(fd: int) -> None:
    """Give a temporary file (created 0600) the mode any new file gets here, as the umask says."""
    mask = os.umask(0)
    os.umask(mask)
    try:
        os.fchmod(fd, 0o666 & ~mask)
    except (AttributeError, OSError):  # pragma: no cover - platforms without fchmod
        pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _sweep_temporaries(folder: Path) -> None:
    """Temporary files of a draw that was killed; only called while holding the lock."""
    for pattern in (".assignment.parquet.*.tmp", ".assignment.json.*.tmp"):
        for tmp in folder.glob(pattern):
            try:
                tmp.unlink()
            except OSError:
                pass


def _archive(pilot: Pilot) -> Path | None:
    """Move the current assignment (metadata first, parquet last) to ``archive/<UTC time>/``."""
    parquet, meta = assignment_path(pilot), metadata_path(pilot)
    if not parquet.exists() and not meta.exists():
        return None
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = pilot.results_dir / "archive" / stamp
    n = 1
    while target.exists():
        n += 1
        target = pilot.results_dir / "archive" / f"{stamp}-{n}"
    target.mkdir(parents=True)
    # Metadata first: a crash in between leaves a parquet without metadata, which is refused, never redrawn.
    for file in (meta, parquet):
        if file.exists():
            os.replace(file, target / file.name)
    _fsync_dir(target)
    _fsync_dir(pilot.results_dir)
    sys.stderr.write(f"labkit: {pilot.id}: archived the previous assignment in {pilot.lab.display(target)}\n")
    return target


# --------------------------------------------------------------------------------------------------
# the lock


class _Claim:
    """``results/<id>/assignment.lock``, created with O_CREAT|O_EXCL; the loser of a race gets an error."""

    def __init__(self, pilot: Pilot):
        self.pilot = pilot
        self.path = pilot.results_dir / "assignment.lock"
        self.reclaimed: dict | None = None
        self.token: bytes | None = None

    def __enter__(self) -> _Claim:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder, raw, ino = _read_lock(self.path)
                if raw is None:
                    continue  # released meanwhile: try again
                if _is_stale(holder, self.path):
                    self._reclaim(holder, raw, ino)
                    continue
                raise self._busy(holder) from None
            self.token = json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "taken_at": _utc_now()}
            ).encode()
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.token)
                fh.flush()
                os.fsync(fh.fileno())
            return self
        raise self._busy(_read_lock(self.path)[0])

    def __exit__(self, *exc) -> None:
        try:
            if self.path.read_bytes() == self.token:
                self.path.unlink()
        except OSError:
            pass

    def _busy(self, holder: dict) -> AssignmentError:
        who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('taken_at', '?')}"
        return AssignmentError(
            self.pilot.id,
            f"another `labkit assign {self.pilot.id}` ({who}) is drawing this assignment right now; "
            f"wait for it to finish and run again (if no labkit process is running, delete "
            f"{self.pilot.lab.display(self.path)})",
        )

    def _reclaim(self, holder: dict, raw: bytes, ino: int) -> None:
        """Remove a dead process's lock — under a lock on the folder, so two reclaimers cannot both win."""
        with _FolderLock(self.path.parent):
            _, now, now_ino = _read_lock(self.path)
            if now != raw or now_ino != ino:
                return  # someone else reclaimed it (or took it) first
            self.path.unlink()
        self.reclaimed = {"pid": holder.get("pid"), "taken_at": holder.get("taken_at")}
        sys.stderr.write(
            f"labkit: {self.pilot.id}: reclaimed the stale lock {self.pilot.lab.display(self.path)}: process "
            f"{holder.get('pid', '?')}, which took it at {holder.get('taken_at', '?')}, is no longer running\n"
        )


def _read_lock(path: Path) -> tuple[dict, bytes | None, int | None]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(4096)
            ino = os.fstat(fh.fileno()).st_ino
    except FileNotFoundError:
        return {}, None, None
    try:
        holder = json.loads(raw.decode())
        if not isinstance(holder, dict):
            holder = {}
    except (ValueError, UnicodeDecodeError):
        holder = {}
    return holder, raw, ino


def _is_stale(holder: dict, path: Path) -> bool:
    """True when the lock's process is certainly gone (same host, no such live process)."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        # Empty or torn: the holder died between creating and writing it, unless that is happening right now.
        try:
            age = dt.datetime.now().timestamp() - path.stat().st_mtime
        except OSError:
            return False
        return age > 10
    if holder.get("host") != socket.gethostname():
        return False  # another machine's process cannot be checked from here
    return not _alive(pid)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) holds its pid but is gone
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except (OSError, IndexError):
        return True


class _FolderLock:
    """An advisory lock (flock) on a folder, held only for the instant of reclaiming a stale lock."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.fd: int | None = None

    def __enter__(self) -> _FolderLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.fd = os.open(self.folder, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
