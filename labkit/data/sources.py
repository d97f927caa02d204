"""The lab's data sources as Ibis tables on one engine per command.

Files (CSV, Parquet) are queried in place by an embedded DuckDB that is sandboxed: it may read only the
lab root (and ``data_root``), write only under ``results/``, and its configuration is locked, so no
table expression built from a pilot file can reach ``/etc/passwd`` or the network. Every metric is an
Ibis expression over these tables, so the same definition compiles to PostgreSQL or Spark.

Where a source lives is its *place*: ``duckdb`` (csv, parquet), ``postgres:<url_env>`` (one database per
environment variable) or ``spark``. An engine works in one place per command, so every table of a query
is where the query runs: a lab whose sources all live in one place is bound to it from the start; in a
lab that mixes places the engine is bound by the first source opened (or by ``bind(pilot)``), and a
pilot whose sources live in different places is refused with a message naming them. The assignment
(``read_file``) goes to the data, not the other way round: DuckDB and Spark read the parquet in place;
PostgreSQL gets it as a TEMPORARY table (COPY), joined there with the CRM tables. What is specific to
each engine lives in its own module: ``labkit.data.duckdb_files`` (the sandbox, its errors),
``labkit.data.postgres`` and ``labkit.data.spark`` (connections, secrets, errors), and
``labkit.data.backends`` (the per-backend hash and the guard on every backend).

Every engine runs in UTC (DuckDB: ``SET GLOBAL TimeZone``, so its cursors too). A failure while a query
runs — on any engine, compiled, executed or while its rows are read — is one DataError built by
``Engine.error``, never the engine's own text where it may quote a row (DuckDB's CSV errors quote the
whole line): the source, and where known the column and the count of bad rows. A CSV file that is a
header and no rows is zero rows (``Engine.no_rows``). Files are read and hashed without an engine by
``labkit.data.rawfiles`` (the data digest and its cache).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from labkit.data import duckdb_files, postgres, spark
from labkit.data.backends import (
    DUCKDB,
    POSTGRES,
    SPARK,
    Guarded,
    engine_error,
    is_backend_error,
    is_interrupt,
    kind_of,
    table_digest,
)
from labkit.data.rawfiles import DigestCache, file_digest, files_digest, header_only
from labkit.errors import DataError, LabkitError
from labkit.lab import Lab

if TYPE_CHECKING:  # pragma: no cover
    import ibis

__all__ = [
    "DUCKDB",
    "POSTGRES",
    "SPARK",
    "DigestCache",
    "Engine",
    "file_digest",
    "pilot_sources",
    "preflight",
]


@dataclass
class Engine:
    """One connection to where the lab's data lives, with each source opened at most once."""

    lab: Lab
    _cons: dict = field(default_factory=dict, repr=False)  # place -> its backend, Guarded
    _place: str | None = field(default=None, repr=False)  # where this command's queries run
    _tables: dict = field(default_factory=dict, repr=False)
    _views: list = field(default_factory=list, repr=False)  # Spark temporary views to drop on close
    _token: str = field(default_factory=lambda: secrets.token_hex(4), repr=False)

    @classmethod
    def for_lab(cls, lab: Lab) -> Engine:
        engine = cls(lab=lab)
        places = {_place_of(spec) for spec in lab.spec.sources.values()} or {DUCKDB}
        if places == {DUCKDB}:  # a lab of files: DuckDB from the start, as always
            engine._cons[DUCKDB] = engine._connect_duckdb()
            engine._place = DUCKDB
        elif len(places) == 1:
            engine._place = places.pop()  # connected on first use
        return engine

    @property
    def con(self):
        """The Ibis backend this command's queries run on (bound to the lab's first place if unbound)."""
        if self._place is None:
            self._place = self._default_place()
        return self._connect(self._place)

    @property
    def kind(self) -> str:
        """``duckdb``, ``postgres`` or ``spark``: the backend the queries run on."""
        if self._place is None:
            self._place = self._default_place()
        return kind_of(self._place)

    def bind(self, pilot) -> None:
        """Work where the pilot's sources live; refuse a pilot whose sources live in different places."""
        places: dict[str, list[str]] = {}
        for name in sorted(pilot_sources(pilot)):
            places.setdefault(_place_of(self.lab.source(name)), []).append(name)
        if len(places) > 1:
            shown = "; ".join(f"{', '.join(names)} in {_describe(p)}" for p, names in places.items())
            raise engine_error(
                f"{pilot.id}: its sources live in different engines ({shown}); every source of one pilot "
                "must be files, or tables of one PostgreSQL database, or Spark"
            )
        if places:
            self._bind(next(iter(places)), next(iter(places.values()))[0])

    def table(self, name: str) -> ibis.Table:
        """The Ibis table of a lab source, opened on first use."""
        if name in self._tables:
            return self._tables[name]
        spec = self.lab.source(name)
        self._bind(_place_of(spec), name)
        if spec.format in ("csv", "parquet"):
            path = self.lab.source_path(name)
            if not path.exists():
                raise DataError(
                    name, f"file {self.lab.display(path)} does not exist (run `labkit demo` for the demo lab)"
                )
            try:
                if spec.format == "csv":
                    table = self.con.read_csv(duckdb_files.literal_path(path), table_name=f"src_{name}")
                else:
                    table = self.con.read_parquet(duckdb_files.literal_path(path), table_name=f"src_{name}")
            except Exception as exc:  # DuckDB's own errors: the sandbox, parse
                raise DataError(name, duckdb_files.unreadable(self.lab, path, exc)) from None
        elif spec.format == "postgres":
            table = postgres.open_table(self.con, name, spec)
        elif spec.format == "spark":
            table, view = spark.open_table(self.con, self.lab, name, spec, f"src_{name}_{self._token}")
            if view is not None:
                self._views.append(view)
        else:  # pragma: no cover - the lab file's schema allows no other format
            raise DataError(name, f"format '{spec.format}' is not supported by this engine")
        self._tables[name] = table
        return table

    def read_file(self, path: Path, name: str) -> ibis.Table:
        """A parquet file labkit wrote itself (e.g. an assignment) as a table, where the queries run."""
        key = f"file:{path}"
        if key in self._tables:
            return self._tables[key]
        if self._place is None:  # a lab of several places, not bound yet: a table any backend can take
            import ibis
            import pyarrow.parquet as pq

            table = ibis.memtable(pq.read_table(path))
        elif self.kind == DUCKDB:
            try:
                table = self.con.read_parquet(duckdb_files.literal_path(path), table_name=name)
            except Exception as exc:  # the sandbox (results/ leads out of the lab), a damaged file
                raise engine_error(duckdb_files.unreadable(self.lab, path, exc)) from None
        elif self.kind == POSTGRES:
            table = postgres.upload_file(self.con, path, name)
        else:
            view = f"_labkit_{name}_{self._token}"
            table = self.con.read_parquet(spark.literal_path(path), table_name=view)
            self._views.append(view)
        self._tables[key] = table
        return table

    def no_rows(self, name: str) -> bool:
        """True for a CSV source whose file is a header and nothing else (no events yet, say).

        Such a file means zero rows, not an error; but with no value to infer types from, every column
        comes out as text (DuckDB and Spark alike), so the metric that reads it declares the types it
        needs (``labkit.data.aggregate``): a column without values contradicts no type. Read from the
        file's first lines (no query); a compressed or missing file is not taken to be empty."""
        spec = self.lab.source(name)
        if spec.format not in ("csv", "spark") or not (spec.path or "").lower().endswith(".csv"):
            return False
        try:
            return header_only(self.lab.source_path(name))
        except OSError:
            return False

    def columns(self, name: str) -> dict[str, str]:
        """Column name -> type name of a source."""
        schema = self.table(name).schema()
        return {col: str(dtype) for col, dtype in schema.items()}

    def require_columns(self, name: str, columns: list[str]) -> None:
        """A clear error naming the missing column and listing the ones that exist."""
        have = self.columns(name)
        for col in columns:
            if col not in have:
                raise DataError(name, f"no such column; columns: {', '.join(have)}", column=col)

    def digest(self, name: str, cache: DigestCache | None = None) -> str:
        """sha256 of a file source's bytes (the whole file, not a sample; a Spark path: its files); for a
        table in PostgreSQL or Spark's catalog, sha256 of an order-independent summary of its rows,
        computed in the engine (``labkit.data.backends.table_digest``)."""
        spec = self.lab.source(name)
        if spec.format in ("csv", "parquet"):
            path = self.lab.source_path(name)
            return cache.digest(path) if cache is not None else file_digest(path)
        if spec.format == "spark" and spec.path:
            return files_digest(self.lab.source_path(name))
        table = self.table(name)
        row = table_digest(self.con, self.kind, table)
        described = {
            "format": spec.format,
            "table": spec.table,
            "path": spec.path,
            "schema": {c: str(t) for c, t in table.schema().items()},
            **{k: int(v or 0) for k, v in row.items()},
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()

    def close(self) -> None:
        for view in self._views:
            try:
                self._cons[SPARK].backend._session.catalog.dropTempView(view)
            except Exception:  # closing is best effort
                pass
        self._views.clear()
        for place, con in list(self._cons.items()):
            if kind_of(place) == SPARK:
                continue  # the process's session outlives its engines (labkit.data.backends)
            try:
                con.disconnect()
            except Exception:  # closing is best effort
                pass
        self._cons.clear()
        self._tables.clear()

    # ----------------------------------------------------------------------------------------------

    def _default_place(self) -> str:
        places = [_place_of(spec) for spec in self.lab.spec.sources.values()]
        return places[0] if places else DUCKDB

    def _bind(self, place: str, source: str) -> None:
        if self._place is None:
            self._place = place
        elif self._place != place:
            raise DataError(
                source,
                f"lives in {_describe(place)}, but this command already works in {_describe(self._place)}; "
                "every source of one pilot must live in one engine",
            )

    def _connect(self, place: str):
        if place not in self._cons:
            kind = kind_of(place)
            if kind == DUCKDB:
                self._cons[place] = self._connect_duckdb()
            elif kind == POSTGRES:
                url_env, source = place.split(":", 1)[1], self._first_source(place)
                backend = postgres.connect_postgres(source, url_env)
                self._cons[place] = Guarded(
                    backend, lambda exc: postgres.postgres_error(exc, source, url_env)
                )
            else:
                source = self._first_source(place)
                self._cons[place] = Guarded(
                    spark.connect_spark(), lambda exc: spark.spark_error(exc, source), lost=(ConnectionError,)
                )
        return self._cons[place]

    def _connect_duckdb(self) -> Guarded:
        """The sandboxed DuckDB, its queries guarded by ``error`` (opening files keeps its own messages)."""
        return Guarded(
            duckdb_files.connect_duckdb(self.lab),
            self.error,
            run=("execute", "to_pyarrow", "to_pandas"),
            oserror=True,
        )

    def error(self, exc: BaseException) -> BaseException:
        """A failure raised while a query ran (compiled, executed, or its rows fetched) as one LabkitError
        naming the source — and, where they can be known, the column and the number of bad rows — and
        never the engine's own text where it may quote a row: DuckDB's CSV errors quote the whole line
        (``Original Line: …``), and a customer id must not reach a terminal, a notebook or MLflow.
        An exception that is not the engine's is returned as it is."""
        if isinstance(exc, LabkitError):
            return exc
        if is_interrupt(exc):  # Ctrl-C during the query: an interrupt again, not a data error
            return KeyboardInterrupt()
        # DuckDB's arrow readers fail as pyarrow's OSError (e.g. "Invalid Error: ..."), quoting the same text
        if not (is_backend_error(exc) or (self.kind == DUCKDB and isinstance(exc, OSError))):
            return exc
        if self.kind != DUCKDB:
            return self.con.error(exc)
        return duckdb_files.explain(exc, self.lab, self._cons[DUCKDB].backend.con, self._tables)

    def _first_source(self, place: str) -> str:
        return next((n for n, s in self.lab.spec.sources.items() if _place_of(s) == place), place)


def preflight(pilot) -> None:
    """Connect to the pilot's PostgreSQL database and open its tables, so that a missing URL, a wrong
    password or a server that is down is one DataError before anything is run or recorded (a caller
    such as ``labkit run`` checks this before it starts a run). Files and Spark are left to the run."""
    names = sorted(n for n in pilot_sources(pilot) if pilot.lab.source(n).format == "postgres")
    if not names:
        return
    engine = Engine.for_lab(pilot.lab)
    try:
        engine.bind(pilot)
        for name in names:
            engine.table(name)
    finally:
        engine.close()


def pilot_sources(pilot) -> set[str]:
    """The lab sources a pilot reads: its cohort source, an imported assignment, its metrics' sources."""
    s = pilot.spec
    names = {s.cohort.source}
    if s.cohort.assignment:
        names.add(s.cohort.assignment.source)
    for m in s.metrics:
        for ref in (m, m.numerator, m.denominator):
            if ref is not None and getattr(ref, "source", None):
                names.add(ref.source)
    return names


def _place_of(spec) -> str:
    if spec.format == "postgres":
        return f"{POSTGRES}:{spec.url_env}"
    if spec.format == "spark":
        return SPARK
    return DUCKDB


def _describe(place: str) -> str:
    kind = kind_of(place)
    if kind == POSTGRES:
        return f"the PostgreSQL database of ${place.split(':', 1)[1]}"
    return "Spark" if kind == SPARK else "files (DuckDB)"
