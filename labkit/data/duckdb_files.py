"""The embedded DuckDB that reads the lab's files: its sandbox, and its errors told without a row.

Files (CSV, Parquet) are queried in place by an embedded DuckDB that is sandboxed (``connect_duckdb``): it
may read only the lab root (and ``data_root``), write only under ``results/``, and its configuration is
locked, so no table expression built from a pilot file can reach ``/etc/passwd`` or the network. It runs in
UTC (``SET GLOBAL TimeZone``, so its cursors too) with bounded memory.

A failure while a query runs is told by ``explain`` in one line, never in DuckDB's own text, which may quote
a row (its CSV errors quote the whole line): the source, and where known the column and the count of bad
rows (counted in the engine; no row leaves it). A file DuckDB cannot open is told by ``unreadable``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from labkit.data.backends import engine_error, first_line
from labkit.errors import DataError, LabkitError

if TYPE_CHECKING:  # pragma: no cover
    from labkit.lab import Lab


def quote(text: str) -> str:
    """A DuckDB string literal."""
    return "'" + text.replace("'", "''") + "'"


def ident(name: str) -> str:
    """A DuckDB quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal_path(path: Path | str) -> str:
    """A file's path as DuckDB's readers take it literally. They read ``*``, ``?`` and ``[`` as wildcards: a
    lab in a folder named ``pilots?2`` read its customers and those of ``pilots#2`` beside it as one table
    (or, sandboxed, was refused a file it does own). Each such character becomes a class of itself
    (``[?]``), which matches that character only (DuckDB has no other escape)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in str(path))


def connect_duckdb(lab: Lab):
    """An Ibis DuckDB backend sandboxed to the lab's folders, in UTC, with the lab's memory limit."""
    import ibis

    con = ibis.duckdb.connect()
    readable = [str(lab.root)]
    if lab.spec.data_root:
        readable.append(str(Path(lab.spec.data_root).resolve()))
    # A reader is given literal_path(file): the sandbox compares that text with these folders before it
    # expands the one-character classes, and the files they expand to after — so both forms are allowed.
    readable += [literal for d in readable if (literal := literal_path(d)) != d]
    dirs = ", ".join(quote(d) for d in readable)
    # A progress bar on long queries would be printed to stdout and corrupt --json output. Inside
    # Jupyter DuckDB refuses to change the setting without ipywidgets (and prints no bar there).
    try:
        con.raw_sql("SET enable_progress_bar=false")
    except Exception:  # noqa: BLE001 — duckdb.InvalidInputException, imported lazily
        pass
    # Bounded memory: past the limit DuckDB spills to the lab's results/ (it creates the folder only then,
    # one level deep, and removes its files when the query ends; a lab without results/ yet spills to the
    # system's temporary folder); the value was checked against lab.MEMORY.
    con.raw_sql(f"SET memory_limit={quote(lab.spec.duckdb.memory_limit)}")
    spill = lab.results_dir if lab.results_dir.is_dir() else Path(tempfile.gettempdir())
    con.raw_sql(f"SET temp_directory={quote(str(spill / '.duckdb-tmp'))}")
    # Every timestamp is UTC, whatever the host's TZ (DuckDB's default session zone is the host's): a
    # TIMESTAMPTZ cast to naive, a naive one cast to TIMESTAMPTZ and whole days added to a TIMESTAMPTZ all
    # depend on it. GLOBAL, so the cursors of aggregate._fetch (new sessions of this database) get it too;
    # Ibis sets only this connection's own session.
    con.raw_sql("SET GLOBAL TimeZone='UTC'")
    con.raw_sql("SET TimeZone='UTC'")
    # Order matters (all at once fails): allow the folders, cut external access, then lock.
    con.raw_sql(f"SET allowed_directories=[{dirs}]")
    con.raw_sql("SET enable_external_access=false")
    con.raw_sql("SET lock_configuration=true")
    return con


def unreadable(lab: Lab, path: Path, exc: Exception) -> str:
    """Why DuckDB could not read a file, in one line; its sandbox refusing a file gets the rule it enforces
    (DuckDB follows symlinks: a file of the lab that leads elsewhere is outside it)."""
    try:  # as the lab names it, before symlinks: results/p/assignment.parquet
        shown = str(Path(path).relative_to(lab.root))
    except ValueError:
        shown = lab.display(path)
    if type(exc).__name__ == "PermissionException":
        allowed = f"the lab ({lab.root})" + (
            f" and data_root ({Path(lab.spec.data_root).resolve()})" if lab.spec.data_root else ""
        )
        real = Path(path).resolve()
        where = f" it resolves to {real}," if str(real) != str(path) else ""
        return (
            f"cannot read {shown}:{where} outside the folders labkit's DuckDB may read: {allowed}; "
            "keep data and results/ inside them (not behind a symlink that leads elsewhere)"
        )
    return f"cannot read {shown}: {first_line(exc)}"


def explain(exc: BaseException, lab: Lab, raw, tables: dict) -> LabkitError:
    """A DuckDB failure while a query ran as one DataError naming the source — and, where they can be
    known, the column and the number of bad rows — never DuckDB's text (``Original Line: …`` quotes a
    customer's row). ``raw`` is the DuckDB connection, ``tables`` the engine's opened tables (a source's
    name, or ``file:<path>`` for a file labkit wrote). Explaining never fails worse than the failure."""
    try:
        return _explain(exc, lab, raw, tables)
    except LabkitError as error:
        return error
    except Exception:  # noqa: BLE001 - explaining must never fail worse than the failure
        return engine_error(f"files (DuckDB): the query failed: {type(exc).__name__}")


def _explain(exc: BaseException, lab: Lab, raw, tables: dict) -> LabkitError:
    import re

    text = str(exc)
    kind = type(exc).__name__
    paths = _paths(lab, tables)
    found = re.search(r"^\s*file = (.+?)\s*$", text, re.M)
    source = _source_of(paths, Path(found.group(1))) if found else None
    if source is not None:  # a CSV file: DuckDB names it, the line, and for a conversion the column
        path = lab.source_path(source)
        line = re.search(r"CSV Error on Line: (\d+)", text)
        where = f" (line {line.group(1)} of the file is one)" if line else ""  # DuckDB reads in parallel
        column = re.search(r'converting column "(.+?)"\. ', text)
        if column and column.group(1) in tables[source].columns:
            name = column.group(1)
            dtype = tables[source].schema()[name]
            bad = _bad_csv_values(raw, path, name, dtype)
            what = "a number" if dtype.is_numeric() else f"of type {dtype}"
            shown = "rows hold" if bad is None else ("1 row holds" if bad == 1 else f"{bad} rows hold")
            return DataError(
                source,
                f"{shown} a value that is not {what}{where}, past the first rows DuckDB reads to "
                "detect the column's type; correct or empty them (the values are not shown: they may "
                "be personal data)",
                column=name,
                rows=bad,
            )
        return DataError(
            source,
            f"{lab.display(path)} is malformed{where} ({kind}); the row is not shown, as it may "
            "hold personal data",
        )
    damaged = _damaged_parquet(raw, paths)
    if damaged is not None:
        source, path, column = damaged
        return DataError(
            source,
            f"{lab.display(path)} cannot be read: a page of the file is damaged ({kind}); "
            "write the file again",
            column=column,
        )
    if kind in ("OutOfMemoryException",):
        return engine_error(
            f"files (DuckDB): out of memory ({lab.spec.duckdb.memory_limit}, duckdb.memory_limit "
            "in the lab file); raise it, or free disk space under results/ for DuckDB to spill"
        )
    read = ", ".join(sorted(n for n in tables if not n.startswith("file:"))) or "the lab's files"
    return engine_error(
        f"files (DuckDB): a query over {read} failed ({kind}); its message is not shown, as it may "
        "quote a row"
    )


def _paths(lab: Lab, tables: dict) -> dict[str, Path]:
    """Each opened file source (and file labkit wrote, e.g. an assignment) -> its path."""
    out = {}
    for key in tables:
        if key.startswith("file:"):
            out[key] = Path(key[5:])
        elif lab.source(key).format in ("csv", "parquet"):
            out[key] = lab.source_path(key)
    return out


def _source_of(paths: dict[str, Path], path: Path) -> str | None:
    real = path.resolve()
    for name, known in paths.items():
        if known.resolve() == real and not name.startswith("file:"):
            return name
    return None


def _bad_csv_values(raw, path: Path, column: str, dtype) -> int | None:
    """How many rows of a CSV column are not of the type DuckDB detected from its first rows: a
    TRY_CAST count over the file read as text (counted in the engine; no row leaves it)."""
    from ibis.backends.sql.datatypes import DuckDBType

    col = ident(column)
    sql = (
        f"SELECT count(*) FROM read_csv({quote(literal_path(path))}, header=true, auto_detect=true, "
        f"all_varchar=true) WHERE {col} IS NOT NULL "
        f"AND TRY_CAST({col} AS {DuckDBType.to_string(dtype)}) IS NULL"
    )
    try:
        return int(raw.execute(sql).fetchone()[0])
    except Exception:  # noqa: BLE001 - the count is a courtesy; the error stands without it
        return None


def _damaged_parquet(raw, paths: dict[str, Path]) -> tuple[str, Path, str | None] | None:
    """The first opened parquet file that fails a scan of every value — (source, path, column) — after
    a DuckDB error that names no file (a damaged page): the cheap way to say which file it is."""
    for name, path in paths.items():
        if path.suffix.lower() != ".parquet":
            continue
        scan = f"read_parquet({quote(literal_path(path))})"
        columns = [r[0] for r in raw.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()]
        every = ", ".join(f"bit_xor(hash({ident(c)}))" for c in columns)  # every value decoded
        try:
            raw.execute(f"SELECT {every} FROM {scan}").fetchall()
            continue
        except Exception:  # noqa: BLE001 - this file is the damaged one; which column?
            pass
        column = None
        for c in columns:
            try:
                raw.execute(f"SELECT bit_xor(hash({ident(c)})) FROM {scan}").fetchall()
            except Exception:  # noqa: BLE001
                column = c
                break
        return ("assignment" if name.startswith("file:") else name), path, column
    return None
