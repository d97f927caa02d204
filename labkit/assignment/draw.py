"""The keyed-hash draw of a pilot's cohort and arms (``method: keyed-hash-largest-remainder/1``).

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

The id checks (``check_ids``), the id as text (``id_key``) and the stratum label (``stratum_label``) are
shared with imported assignments (``labkit.assignment.imported``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from fractions import Fraction
from typing import TYPE_CHECKING

from labkit.assignment.store import cohort_start, iso, meta_head
from labkit.errors import AssignmentError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import ibis

    from labkit.data.sources import Engine
    from labkit.spec import Pilot

METHOD = "keyed-hash-largest-remainder/1"
US = "\x1f"
NULL_LABEL = "<null>"
HELPER = "__labkit_"  # prefix of helper columns, so they cannot collide with a source's own columns


def stratum_key(salt: str, pilot_id: str, smallest_id: str) -> str:
    """Step 5 of the module docstring: a stratum's key, from its bytewise-smallest id (engine-independent)."""
    return sha256_text("stratum" + US + salt + US + pilot_id + US + smallest_id)


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
                key=lambda a: (-(deficit[a] + rest[a]), sha256_text(key + US + a)),
            )
            chosen = set(candidates[:extra])
        counts = {}
        for a in arms:
            got = a in chosen
            counts[a] = base[a] + got
            deficit[a] += rest[a] - (denominator if got else 0)
        out[key] = counts
    return out


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def id_key(col) -> ibis.StringValue:
    """text(c): the id as text (strings as they are, integers in decimal)."""
    return col if col.type().is_string() else col.cast("string")


def sha256_expr(kind: str, *parts) -> ibis.StringValue:
    """sha256_hex of the parts concatenated, as the backend ``kind`` spells it (``labkit.data.backends``)."""
    import ibis

    from labkit.data.backends import sha256_hex

    text = None
    for part in parts:
        piece = ibis.literal(part, type="string") if isinstance(part, str) else part
        text = piece if text is None else text + piece
    return sha256_hex(kind, text)


def check_ids(engine: Engine, pilot: Pilot, table, source: str, column: str, what: str) -> None:
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
            f"{missing} {rows_word(missing)} of {what} have no id; every row needs one",
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


def rows_word(n: int) -> str:
    """``row`` or ``rows``, for n."""
    return "row" if n == 1 else "rows"


def drawn_table(engine: Engine, pilot: Pilot) -> tuple[ibis.Table, dict]:
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
    check_ids(engine, pilot, source_table, c.source, c.id_column, f"source '{c.source}'")
    pool = eligible(engine, pilot)
    S, P = pilot.salt, pilot.id
    ID, K, H, R, MK = (f"{HELPER}{name}" for name in ("id", "k", "h", "r", "mk"))
    strata = [f"{HELPER}s{i}" for i in range(len(c.stratify_by))]
    # Only the columns the draw needs travel through the sorts.
    t = pool.select(
        **{ID: pool[c.id_column], K: id_key(pool[c.id_column])},
        **{name: pool[col] for name, col in zip(strata, c.stratify_by)},
    )
    sizes = _strata_sizes(engine, t, strata)
    n_eligible = sum(n for n, _, _ in sizes)
    if n_eligible == 0:
        explain_empty(engine, pilot, source_table)
    capped = n_eligible > c.max_size
    if capped:
        cap = sha256_expr(engine.kind, "cap" + US + S + US + P + US, t[K])
        t = t.order_by([cap, sort_key(engine.kind, t[K])]).limit(c.max_size)
        sizes = _strata_sizes(engine, t, strata)
    weights = arm_weights(c.arms)
    names = sorted(weights)
    joined = {stratum_key(S, P, mk): raw for _, raw, mk in sizes}  # the engine's own value, to join on
    counts = allocate(weights, {stratum_key(S, P, mk): n for n, _, mk in sizes})
    # rank thresholds: arm names[i] takes the ranks below bounds[i] (and from the previous bound)
    bounds = {key: _bounds([counts[key][a] for a in names]) for key in counts}
    t = t.mutate(**{H: sha256_expr(engine.kind, S + US + P + US, t[K])})
    group = [t[name] for name in strata] or None
    t = t.mutate(**{R: ibis.row_number().over(group_by=group, order_by=[t[H], sort_key(engine.kind, t[K])])})
    B = [f"{HELPER}b{i}" for i in range(len(names) - 1)]
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
    start = cohort_start(pilot)
    out = t.select(
        customer_id=t[ID],
        arm=arm_expr.cast("string"),
        stratum=stratum_label(t, strata),
        assigned_at=ibis.literal(start, type="timestamp('UTC')"),
    )
    out = out.order_by(sort_key(engine.kind, out.customer_id))
    warnings = [
        f"{n_eligible - c.max_size} of {n_eligible} eligible customers were left out by the cap "
        f"(max_size {c.max_size}), at random"
    ]
    meta = drawn_meta(
        pilot,
        METHOD,
        source_table[c.id_column].type(),
        eligible=n_eligible,
        capped=capped,
        weights={a: weights[a] for a in names},
        warnings=warnings if capped else [],
    )
    return out, meta


def drawn_meta(
    pilot: Pilot,
    method: str,
    id_type,
    *,
    eligible: int,
    capped: bool,
    weights: Mapping[str, Fraction],
    warnings: list[str],
    extra: dict | None = None,
) -> dict:
    """The metadata of a drawn assignment (customers or clusters), before the rows are counted: the
    ``meta_head``, where the customers came from, the cap, the weights, ``extra`` (a cluster draw's
    ``clusters``) and the warnings, in this order."""
    c = pilot.spec.cohort
    meta = meta_head(pilot, method, id_type)
    meta.update(
        {
            "source": c.source,
            "id_column": c.id_column,
            "eligible": eligible,
            "max_size": c.max_size,
            "capped": capped,
            "cap_exceeded": False,
            "weights": {a: float(w) for a, w in weights.items()},
            "assigned_at": iso(cohort_start(pilot)),
            **(extra or {}),
            "warnings": warnings,
        }
    )
    return meta


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
    K = f"{HELPER}k"
    n, mk = t.count(), _smallest_id(engine.kind, t[K])
    agg = t.group_by(strata).aggregate(n=n, mk=mk) if strata else t.aggregate(n=n, mk=mk)
    rows = engine.con.to_pyarrow(agg.select("n", "mk")).to_pylist()
    return [(int(r["n"]), r["mk"], _id_text(engine.kind, r["mk"])) for r in rows if r["n"]]


def _smallest_id(kind: str, k, group=None):
    """The smallest text id in UTF-8 byte order (of each stratum, when ``group`` is given).

    DuckDB and Spark compare text bytewise. PostgreSQL compares text by the database's collation and has
    no min() of bytes, so there it is the smallest lowercase hex of the id's UTF-8 bytes — hex digits order
    alike in every collation, and hex text orders as its bytes do — read back by ``_id_text``."""
    from labkit.data.backends import POSTGRES, pg_functions

    if kind == POSTGRES:
        convert_to, _, encode = pg_functions()
        k = encode(convert_to(k, "UTF8"), "hex")
    key = k.min()
    return key.over(group_by=group) if group is not None else key


def _id_text(kind: str, value: str) -> str:
    """``_smallest_id``'s value as the id's text."""
    from labkit.data.backends import POSTGRES

    return bytes.fromhex(value).decode("utf-8") if kind == POSTGRES else value


def explain_empty(engine: Engine, pilot: Pilot, table) -> None:
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


def stratum_label(table, columns: list[str]):
    """Step 3's label: the columns' values as text joined by ``|`` (``<null>`` for a missing value), or
    ``all`` without columns (a drawn assignment's strata, an imported one's blocks)."""
    import ibis

    if not columns:
        return ibis.literal("all").cast("string")
    parts = [table[col].cast("string").fill_null(NULL_LABEL) for col in columns]
    label = parts[0]
    for part in parts[1:]:
        label = label + "|" + part
    return label.cast("string")
