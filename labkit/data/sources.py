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
PostgreSQL gets it as a TEMPORARY table (COPY), joined there with the CRM tables. PostgreSQL and Spark
specifics (connections, secrets, errors, the per-backend hash) live in ``labkit.data.backends``.

Every engine runs in UTC (DuckDB: ``SET GLOBAL TimeZone``, so its cursors too). A failure while a query
runs — on any engine, compiled, executed or while its rows are read — is one LabkitError built by
``Engine.error``, never the engine's own text where it may quote a row (DuckDB's CSV errors quote the
whole line): the source, and where known the column and the count of bad rows. A CSV file that is a
header and no rows is zero rows (``Engine.no_rows``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from labkit.data.backends import (
    DUCKDB,
    POSTGRES,
    SPARK,
    Guarded,
    connect_postgres,
    connect_spark,
    digest_expr,
    is_backend_error,
    kind_of,
    mask_values,
    upload,
)
from labkit.errors import DataError, LabkitError
from labkit.lab import Lab

if TYPE_CHECKING:  # pragma: no cover
    import ibis


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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
            raise LabkitError(
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
                    table = self.con.read_csv(str(path), table_name=f"src_{name}")
                else:
                    table = self.con.read_parquet(str(path), table_name=f"src_{name}")
            except Exception as exc:  # DuckDB's own errors: the sandbox, parse
                raise DataError(name, _unreadable(self.lab, path, exc)) from None
        elif spec.format == "postgres":
            table = self._postgres_table(name, spec)
        elif spec.format == "spark":
            table = self._spark_table(name, spec)
        else:  # pragma: no cover - the lab file's schema allows no other format
            raise LabkitError(f"source '{name}': format '{spec.format}' is not supported by this engine")
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
                table = self.con.read_parquet(str(path), table_name=name)
            except Exception as exc:  # the sandbox (results/ leads out of the lab), a damaged file
                raise LabkitError(_unreadable(self.lab, path, exc)) from None
        elif self.kind == POSTGRES:
            import pyarrow.parquet as pq

            temp = f"_labkit_{name}"
            if len(temp.encode()) > 63:  # PostgreSQL would cut a longer name short
                temp = f"{temp[:50]}_{hashlib.sha256(temp.encode()).hexdigest()[:12]}"
            with pq.ParquetFile(path) as pf:
                try:
                    upload(self.con.backend, temp, pf.schema_arrow, pf.iter_batches(batch_size=65_536))
                except LabkitError:
                    raise
                except Exception as exc:
                    if is_backend_error(exc):
                        raise self.con.error(exc) from None
                    raise
            table = self.con.table(temp)
        else:
            view = f"_labkit_{name}_{self._token}"
            table = self.con.read_parquet(str(path), table_name=view)
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
            return _header_only(self.lab.source_path(name))
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
        computed in the engine (``labkit.data.backends.digest_expr``)."""
        spec = self.lab.source(name)
        if spec.format in ("csv", "parquet"):
            path = self.lab.source_path(name)
            return cache.digest(path) if cache is not None else file_digest(path)
        if spec.format == "spark" and spec.path:
            return _files_digest(self.lab.source_path(name))
        table = self.table(name)
        row = self.con.to_pyarrow(digest_expr(self.kind, table)).to_pylist()[0]
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
                url_env = place.split(":", 1)[1]
                source = self._first_source(place)
                self._cons[place] = Guarded(connect_postgres(source, url_env), source, url_env)
            else:
                self._cons[place] = Guarded(connect_spark(), self._first_source(place))
        return self._cons[place]

    def _connect_duckdb(self) -> Guarded:
        """The sandboxed DuckDB, its queries guarded by ``error`` (opening files keeps its own messages)."""
        return Guarded(
            _connect_duckdb(self.lab),
            DUCKDB,
            on_error=self.error,
            run=("execute", "to_pyarrow", "to_pandas"),
        )

    def error(self, exc: BaseException) -> BaseException:
        """A failure raised while a query ran (compiled, executed, or its rows fetched) as one LabkitError
        naming the source — and, where they can be known, the column and the number of bad rows — and
        never the engine's own text where it may quote a row: DuckDB's CSV errors quote the whole line
        (``Original Line: …``), and a customer id must not reach a terminal, a notebook or MLflow.
        An exception that is not the engine's is returned as it is."""
        if isinstance(exc, LabkitError):
            return exc
        # DuckDB's arrow readers fail as pyarrow's OSError (e.g. "Invalid Error: ..."), quoting the same text
        if not (is_backend_error(exc) or (self.kind == DUCKDB and isinstance(exc, OSError))):
            return exc
        if self.kind != DUCKDB:
            return self.con.error(exc)
        try:
            return self._duckdb_error(exc)
        except LabkitError as error:
            return error
        except Exception:  # noqa: BLE001 - explaining must never fail worse than the failure
            return LabkitError(f"files (DuckDB): the query failed: {type(exc).__name__}")

    def _duckdb_error(self, exc: BaseException) -> LabkitError:
        import re

        text = str(exc)
        kind = type(exc).__name__
        found = re.search(r"^\s*file = (.+?)\s*$", text, re.M)
        source = self._source_of(Path(found.group(1))) if found else None
        if source is not None:  # a CSV file: DuckDB names it, the line, and for a conversion the column
            path = self.lab.source_path(source)
            line = re.search(r"CSV Error on Line: (\d+)", text)
            where = f" (line {line.group(1)} of the file is one)" if line else ""  # DuckDB reads in parallel
            column = re.search(r'converting column "(.+?)"\. ', text)
            if column and column.group(1) in self.table(source).columns:
                name = column.group(1)
                dtype = self.table(source).schema()[name]
                bad = self._bad_csv_values(path, name, dtype)
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
                f"{self.lab.display(path)} is malformed{where} ({kind}); the row is not shown, as it may "
                "hold personal data",
            )
        damaged = self._damaged_parquet()
        if damaged is not None:
            source, path, column = damaged
            return DataError(
                source,
                f"{self.lab.display(path)} cannot be read: a page of the file is damaged ({kind}); "
                "write the file again",
                column=column,
            )
        if kind in ("OutOfMemoryException",):
            return LabkitError(
                f"files (DuckDB): out of memory ({self.lab.spec.duckdb.memory_limit}, duckdb.memory_limit "
                "in the lab file); raise it, or free disk space under results/ for DuckDB to spill"
            )
        read = ", ".join(sorted(n for n in self._tables if not n.startswith("file:"))) or "the lab's files"
        return LabkitError(
            f"files (DuckDB): a query over {read} failed ({kind}); its message is not shown, as it may "
            "quote a row"
        )

    def _paths(self) -> dict[str, Path]:
        """Each opened file source (and file labkit wrote, e.g. an assignment) -> its path."""
        out = {}
        for key in self._tables:
            if key.startswith("file:"):
                out[key] = Path(key[5:])
            elif self.lab.source(key).format in ("csv", "parquet"):
                out[key] = self.lab.source_path(key)
        return out

    def _source_of(self, path: Path) -> str | None:
        real = path.resolve()
        for name, known in self._paths().items():
            if known.resolve() == real and not name.startswith("file:"):
                return name
        return None

    def _bad_csv_values(self, path: Path, column: str, dtype) -> int | None:
        """How many rows of a CSV column are not of the type DuckDB detected from its first rows: a
        TRY_CAST count over the file read as text (counted in the engine; no row leaves it)."""
        from ibis.backends.sql.datatypes import DuckDBType

        ident = _ident(column)
        sql = (
            f"SELECT count(*) FROM read_csv({_quote(str(path))}, header=true, auto_detect=true, "
            f"all_varchar=true) WHERE {ident} IS NOT NULL "
            f"AND TRY_CAST({ident} AS {DuckDBType.to_string(dtype)}) IS NULL"
        )
        try:
            return int(self._cons[DUCKDB].backend.con.execute(sql).fetchone()[0])
        except Exception:  # noqa: BLE001 - the count is a courtesy; the error stands without it
            return None

    def _damaged_parquet(self) -> tuple[str, Path, str | None] | None:
        """The first opened parquet file that fails a scan of every value — (source, path, column) — after
        a DuckDB error that names no file (a damaged page): the cheap way to say which file it is."""
        raw = self._cons[DUCKDB].backend.con
        for name, path in self._paths().items():
            if path.suffix.lower() != ".parquet":
                continue
            scan = f"read_parquet({_quote(str(path))})"
            columns = [r[0] for r in raw.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()]
            every = ", ".join(f"bit_xor(hash({_ident(c)}))" for c in columns)  # every value decoded
            try:
                raw.execute(f"SELECT {every} FROM {scan}").fetchall()
                continue
            except Exception:  # noqa: BLE001 - this file is the damaged one; which column?
                pass
            column = None
            for c in columns:
                try:
                    raw.execute(f"SELECT bit_xor(hash({_ident(c)})) FROM {scan}").fetchall()
                except Exception:  # noqa: BLE001
                    column = c
                    break
            return ("assignment" if name.startswith("file:") else name), path, column
        return None

    def _first_source(self, place: str) -> str:
        return next((n for n, s in self.lab.spec.sources.items() if _place_of(s) == place), place)

    def _postgres_table(self, name: str, spec):
        con = self.con
        try:
            return con.table(spec.table)
        except LabkitError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "TableNotFound" or "not found" in str(exc).lower():
                raise DataError(
                    name, f"no table '{spec.table}' in the PostgreSQL database of ${spec.url_env}"
                ) from None
            if is_backend_error(exc):
                raise con.error(exc) from None
            raise

    def _spark_table(self, name: str, spec):
        con = self.con
        if spec.table:
            try:
                return con.table(spec.table)
            except LabkitError:
                raise
            except Exception:
                raise DataError(name, f"no table '{spec.table}' in the Spark session's catalog") from None
        path = self.lab.source_path(name)
        if not path.exists():
            raise DataError(name, f"{self.lab.display(path)} does not exist")
        view = f"src_{name}_{self._token}"
        try:
            if path.suffix.lower() == ".csv":
                table = con.read_csv(str(path), table_name=view)
            else:
                table = con.read_parquet(str(path), table_name=view)
        except LabkitError:
            raise
        except Exception as exc:
            shown = mask_values(_first_line(exc))  # quoted values masked, as in every Spark error
            raise DataError(name, f"Spark cannot read {self.lab.display(path)}: {shown}") from None
        self._views.append(view)
        return table


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


def _connect_duckdb(lab: Lab):
    import ibis

    con = ibis.duckdb.connect()
    readable = [lab.root]
    if lab.spec.data_root:
        readable.append(Path(lab.spec.data_root).resolve())
    dirs = ", ".join(_quote(str(d)) for d in readable)
    # A progress bar on long queries would be printed to stdout and corrupt --json output. Inside
    # Jupyter DuckDB refuses to change the setting without ipywidgets (and prints no bar there).
    try:
        con.raw_sql("SET enable_progress_bar=false")
    except Exception:  # noqa: BLE001 — duckdb.InvalidInputException, imported lazily
        pass
    # Bounded memory: past the limit DuckDB spills to the lab's results/ (it creates the folder only then,
    # one level deep, and removes its files when the query ends; a lab without results/ yet spills to the
    # system's temporary folder); the value was checked against lab.MEMORY.
    con.raw_sql(f"SET memory_limit={_quote(lab.spec.duckdb.memory_limit)}")
    spill = lab.results_dir if lab.results_dir.is_dir() else Path(tempfile.gettempdir())
    con.raw_sql(f"SET temp_directory={_quote(str(spill / '.duckdb-tmp'))}")
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


class DigestCache:
    """sha256 of data files, remembered by each file's size, mtime, ctime and inode (git's index does the
    same) in the user's cache folder (``$XDG_CACHE_HOME/labkit/digests.json``, else
    ``~/.cache/labkit/``; ``LABKIT_CACHE_DIR`` overrides): hashing 1 GB of Parquet costs a second at every
    analysis, and a file written again — even with its mtime set back — gets a new ctime, so its digest is
    computed afresh. Outside the lab, so an analysis leaves results/ as it was; it holds file paths and
    hashes, no data. Saving is best effort (an unwritable cache only costs the next analysis its hashing)."""

    NAME = "digests.json"

    def __init__(self, path: Path, entries: dict):
        self.path, self.entries, self.changed = path, entries, False

    @staticmethod
    def folder() -> Path:
        if os.environ.get("LABKIT_CACHE_DIR"):
            return Path(os.environ["LABKIT_CACHE_DIR"])
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "labkit"

    @classmethod
    def load(cls, lab: Lab | None = None) -> DigestCache:
        path = cls.folder() / cls.NAME
        try:
            entries = json.loads(path.read_text())
            if not isinstance(entries, dict):
                entries = {}
        except (OSError, ValueError):
            entries = {}
        return cls(path, entries)

    def digest(self, path: Path) -> str:
        st = path.stat()
        key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        hit = self.entries.get(key)
        if isinstance(hit, list) and len(hit) == 5 and hit[:4] == stamp and isinstance(hit[4], str):
            return hit[4]
        digest = file_digest(path)
        self.entries[key], self.changed = [*stamp, digest], True
        return digest

    def save(self) -> None:
        if not self.changed:
            return
        tmp = self.path.with_name(f"{self.NAME}.{secrets.token_hex(4)}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kept = {k: v for k, v in self.entries.items() if os.path.exists(k)}  # files gone since: dropped
            tmp.write_text(json.dumps(kept, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)


def _header_only(path: Path, max_lines: int = 1000) -> bool:
    """A text file of one non-blank line (the header) followed by blank lines only."""
    with open(path, "rb") as fh:
        if not fh.readline().strip():
            return False  # no header either: left to the engine's own error
        for _ in range(max_lines):
            line = fh.readline(1 << 16)
            if not line:
                return True
            if line.strip():
                return False
    return False


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files_digest(path: Path) -> str:
    """file_digest of a file; of a folder (a Spark dataset), sha256 over its files' names and digests."""
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{file.relative_to(path).as_posix()}={file_digest(file)}\n".encode())
    return h.hexdigest()


def _unreadable(lab: Lab, path: Path, exc: Exception) -> str:
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
    return f"cannot read {shown}: {_first_line(exc)}"


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
