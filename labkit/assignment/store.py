"""The assignment's files in ``results/<id>/``: written once, atomically; read back only when intact.

``assignment.parquet``, one row per customer, sorted by ``customer_id``: ``customer_id`` (the source
id column's type), ``arm`` (text), ``stratum`` (text), ``assigned_at`` (timestamp, microseconds, UTC:
``cohort.start`` at 00:00 for drawn assignments); a cluster draw (``cohort.unit_column``) adds ``cluster``
(the cluster value as text) and, with ``cohort.saturation``, ``saturation`` (the cluster's treated share).

``assignment.json``, the metadata::

    format            1
    pilot             the pilot id
    method            "keyed-hash-largest-remainder/1" | "keyed-hash-cluster-largest-remainder/1" (with
                      cohort.unit_column) | "imported/1" (earlier drawn assignments:
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
    clusters          cluster draws only: unit_column, eligible and assigned clusters, max_clusters,
                      no_cluster (eligible customers without a cluster value, left out), counts
                      ({arm: clusters}; with saturation {pure_control, saturated}) and saturation
                      ({share: clusters})
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

Writing (``write``), under the lock of ``labkit.assignment.locks``: both files are written to temporary
files in the same folder and fsynced (``labkit._files.write_atomic``); the metadata is then renamed into
place, and the parquet last — the parquet's rename (``os.replace``) is the commit, so Ctrl-C or SIGKILL
leaves either no ``assignment.parquet`` or a complete one whose metadata is beside it. ``force=True``
first moves the old pair to ``archive/<UTC time>/`` (nothing is ever deleted). An assignment that is
written is returned as it is while the pilot's cohort is unchanged, and refused, naming what changed,
when it is not (``current``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from labkit._files import write_atomic
from labkit.data.rawfiles import file_digest
from labkit.errors import AssignmentError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from labkit.data.sources import Engine
    from labkit.spec import Pilot

FORMAT = 1
ROW_GROUP = 1_000_000


def _cluster_columns():
    import pyarrow as pa

    return (("cluster", pa.string()), ("saturation", pa.float64()))


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
        """The assignment as a DataFrame: customer_id, arm, stratum, assigned_at (and a cluster draw's
        cluster, saturation)."""
        import pandas as pd

        return pd.read_parquet(self.path)

    def changes(self, pilot: Pilot) -> list[str]:
        """What differs between the cohort this was drawn for and the pilot's cohort now (empty: current)."""
        if self.meta.get("cohort_sha256") == pilot.cohort_sha256:
            return []
        from labkit.spec import cohort_dump

        old = self.meta.get("cohort")
        new = cohort_dump(pilot.spec.cohort)  # fields added later and unset are left out, as in the metadata
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
    if file_digest(path) != expected:
        raise AssignmentError(
            pilot.id,
            f"{lab.display(path)} does not match {meta_file.name} (its sha256 differs): the file was changed "
            f"after it was drawn; restore it from a backup or run `labkit assign {pilot.id} --force`",
        )
    return Assignment(path=path, meta=meta, counts=counts, eligible=eligible, assigned=assigned)


# --------------------------------------------------------------------------------------------------
# re-runs and changes


def current(pilot: Pilot) -> Assignment | None:
    """The written assignment while the pilot's cohort is unchanged; None when there is none (a metadata
    file without parquet is a crashed draw); an AssignmentError naming what changed otherwise."""
    if not assignment_path(pilot).is_file():
        return None
    existing = load_assignment(pilot)
    changes = existing.changes(pilot)
    if not changes:
        return existing
    shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
    salt = any(c.startswith("cohort.salt ") for c in changes)
    why = " (a new salt would redraw every arm)" if salt else ""
    archived = pilot.lab.display(pilot.results_dir / "archive")
    raise AssignmentError(
        pilot.id,
        f"{shown} since the assignment was drawn on {existing.meta.get('created_at', '?')}{why}; "
        f"run `labkit assign {pilot.id} --force` to redraw (the old assignment is archived under {archived}/)",
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
# the metadata


def cohort_start(pilot: Pilot) -> dt.datetime:
    """``cohort.start`` at 00:00 UTC: every drawn customer's ``assigned_at``."""
    d = pilot.spec.cohort.start
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC)


def iso(moment: dt.datetime) -> str:
    """A moment as the metadata writes it: UTC, to the second (``2026-01-01T00:00:00Z``)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now() -> str:
    """Now, UTC, to the microsecond: ``created_at`` and a lock's ``taken_at``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def meta_head(pilot: Pilot, method: str, id_type) -> dict:
    """The metadata's first fields, the same for drawn and imported assignments."""
    from labkit.spec import cohort_dump

    return {
        "format": FORMAT,
        "pilot": pilot.id,
        "method": method,
        "salt": pilot.salt,
        "cohort": cohort_dump(pilot.spec.cohort),
        "cohort_sha256": pilot.cohort_sha256,
        "id_type": str(id_type),
    }


def _counted(pilot: Pilot, strata: dict[tuple[str, str], int]) -> dict:
    """The metadata's counts from the written rows' (stratum, arm) counts: every arm of the pilot, even empty."""
    arms = list(pilot.arms)
    counts = {a: 0 for a in arms}
    by_stratum: dict[str, dict[str, int]] = {}
    for (stratum, arm), n in sorted(strata.items()):
        counts[arm] = counts.get(arm, 0) + n
        by_stratum.setdefault(stratum, {a: 0 for a in arms})[arm] = n
    return {"assigned": sum(counts.values()), "counts": counts, "strata": by_stratum}


# --------------------------------------------------------------------------------------------------
# writing


def write(pilot: Pilot, engine: Engine, expr, meta: dict, *, force: bool, reclaimed: dict | None) -> None:
    """Write the rows of ``expr`` and their metadata (``meta``, completed here) as the pilot's assignment.

    The parquet is streamed to its temporary file; then, still inside its writer, the metadata is written
    to its own, the old pair archived when ``force``, and the metadata renamed into place; the parquet's
    rename, last, is the commit."""

    def metadata(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if force:
            archive(pilot)

    def parquet(tmp: Path) -> None:
        from labkit import __version__

        meta.update(_counted(pilot, _write_parquet(engine, expr, tmp)))
        meta["created_at"] = utc_now()
        meta["labkit_version"] = __version__
        meta["parquet_sha256"] = file_digest(tmp)
        if reclaimed is not None:
            meta["reclaimed_lock"] = reclaimed
        write_atomic(metadata_path(pilot), metadata)

    write_atomic(assignment_path(pilot), parquet)
    _fsync_dir(pilot.results_dir)


def _arrow_batches(engine: Engine, expr, rows: int):
    """A streaming reader over the expression's rows (bounded memory)."""
    con = engine.con
    if getattr(con, "name", "") == "duckdb":
        # ibis 12's to_pyarrow_batches calls a cursor method DuckDB 2.0 no longer has; go through a relation
        # (registering the expression's memtables first, as ibis would: the draw's stratum thresholds).
        con._run_pre_execute_hooks(expr)
        return con.con.sql(con.compile(expr)).to_arrow_reader(rows)
    return con.to_pyarrow_batches(expr, chunk_size=rows)  # pragma: no cover - other backends


def _write_parquet(engine: Engine, expr, tmp: Path) -> dict[tuple[str, str], int]:
    """Stream the sorted rows into ``tmp`` (fixed row groups, fsynced); count (stratum, arm)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = _arrow_batches(engine, expr, 256_000)
    except Exception as exc:  # the engine's text may quote a row: one labkit line instead
        raise _engine_error(engine, exc) from None
    id_type = reader.schema.field("customer_id").type
    if pa.types.is_large_string(id_type) or pa.types.is_string_view(id_type):
        id_type = pa.string()
    fields = [
        ("customer_id", id_type),
        ("arm", pa.string()),
        ("stratum", pa.string()),
        ("assigned_at", pa.timestamp("us", tz="UTC")),
    ]
    # a cluster draw's own columns (labkit.assignment.clusters); other assignments have none of them
    fields += [(name, kind) for name, kind in _cluster_columns() if name in reader.schema.names]
    schema = pa.schema(fields)
    strata: dict[tuple[str, str], int] = {}
    pending: list[pa.Table] = []
    buffered = 0
    with open(tmp, "wb") as fh:
        # Fixed-size row groups, each written as one contiguous chunk, make the bytes independent of how
        # the engine happened to batch the rows: the writer gives up dictionary-encoding a column (1M
        # distinct ids overflow its 1 MB dictionary page) at a chunk's boundary, so chunks shaped by the
        # engine's batches gave Spark's 1M draw other bytes than DuckDB's, the same rows.
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
                    writer.write_table(whole.slice(0, ROW_GROUP).combine_chunks(), row_group_size=ROW_GROUP)
                    rest = whole.slice(ROW_GROUP)
                    pending, buffered = [rest], rest.num_rows
            if buffered:
                writer.write_table(pa.concat_tables(pending).combine_chunks(), row_group_size=ROW_GROUP)
        finally:
            writer.close()
        fh.flush()
        os.fsync(fh.fileno())
    return strata


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


def _fsync_dir(folder: Path) -> None:
    """Make a folder's renames durable (a power cut cannot undo the commit)."""
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


def sweep_temporaries(folder: Path) -> None:
    """Temporary files of a draw that was killed; only called while holding the lock."""
    for pattern in (".assignment.parquet.*.tmp", ".assignment.json.*.tmp"):
        for tmp in folder.glob(pattern):
            try:
                tmp.unlink()
            except OSError:
                pass


def archive(pilot: Pilot) -> Path | None:
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
