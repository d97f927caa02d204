"""What differs by backend inside one Ibis expression, and the guard that keeps an engine's text out of sight.

``labkit.data.sources.Engine`` opens each source on one of three engines ("places"): the embedded DuckDB
(CSV and Parquet files, ``labkit.data.duckdb_files``), one PostgreSQL database per ``url_env``
(``labkit.data.postgres``), or the process's Spark session (``labkit.data.spark``). Every metric, filter
and draw stays one Ibis expression; the few functions here spell what Ibis cannot say the same way on all
three. Each backend is wrapped in ``Guarded``, which reports a driver or engine failure as the one-line
error its backend's module builds (never the engine's own text, which may quote a row or the URL).

The hash of the draw (``labkit.assignment``), per backend, each the lowercase hex SHA-256 of the UTF-8 bytes:
DuckDB ``sha256(x)``; PostgreSQL ``encode(sha256(convert_to(x, 'UTF8')), 'hex')``; Spark ``sha2(x, 256)``.
Text sort keys that decide an output's order go through ``convert_to(x, 'UTF8')`` on PostgreSQL: bytes
compare the same in every collation, so row order matches DuckDB's and Spark's bytewise order whatever the
database's locale.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from labkit.errors import DataError, LabkitError

if TYPE_CHECKING:  # pragma: no cover
    import ibis

DUCKDB, POSTGRES, SPARK = "duckdb", "postgres", "spark"


def kind_of(place: str) -> str:
    """``duckdb``, ``postgres`` or ``spark`` for a place key (``postgres:ENV`` names the database)."""
    return place.split(":", 1)[0]


def engine_error(message: str, *, source: str | None = None, column: str | None = None) -> DataError:
    """A DataError whose one line is ``message`` as written: a failure of an engine, an extra or a pilot
    as a whole, which names no single source (``DataError`` itself begins its line with ``source '…'``).
    A local adapter until ``labkit.errors.DataError`` can carry such a message."""
    error = DataError(source or "", message, column=column)
    LabkitError.__init__(error, message)
    error.source = source  # type: ignore[assignment]  # None: no one source is at fault
    return error


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's text (cut to ``limit`` characters), else its class name."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# expressions that differ by backend


@functools.cache
def pg_functions():
    """PostgreSQL builtins ``convert_to``, ``sha256`` and ``encode`` as Ibis builtin UDFs (compiled to
    plain function calls)."""
    import ibis

    def convert_to(text, encoding): ...

    def sha256(data): ...

    def encode(data, fmt): ...

    def builtin(fn, inputs: tuple, output: str):
        return ibis.udf.scalar.builtin(fn, signature=(inputs, output))

    return (
        builtin(convert_to, ("string", "string"), "binary"),
        builtin(sha256, ("binary",), "binary"),
        builtin(encode, ("binary", "string"), "string"),
    )


def sha256_hex(kind: str, text) -> ibis.StringValue:
    """Lowercase hex SHA-256 of the UTF-8 bytes of a text expression, on the given backend."""
    if kind == POSTGRES:
        convert_to, sha256, encode = pg_functions()
        return encode(sha256(convert_to(text, "UTF8")), "hex")
    return text.hexdigest("sha256")  # DuckDB sha256(x); Spark sha2(x, 256)


def sort_key(kind: str, value):
    """A key that orders text bytewise (as DuckDB and Spark do) on every backend; other types as they are."""
    if kind == POSTGRES and value.type().is_string():
        convert_to, _, _ = pg_functions()
        return convert_to(value, "UTF8")
    return value


@functools.cache
def spark_conv():
    """Spark's builtin ``conv(text, from_base, to_base)`` as an Ibis builtin UDF."""
    import ibis

    @ibis.udf.scalar.builtin
    def conv(num: str, from_base: int, to_base: int) -> str: ...

    return conv


def hex_prefix_int(hexdigest, start: int, digits: int = 8, kind: str | None = None):
    """Hex digits ``start .. start+digits`` of a digest as an integer: on Spark with its ``conv`` (the
    portable form, one ``instr`` a digit, took ~37 s for a 10M-row catalog table's digest, ``conv`` ~16 s),
    elsewhere portably (no backend hex parsing)."""
    import ibis

    if kind == SPARK:
        return spark_conv()(hexdigest.substr(start, digits), 16, 10).cast("int64")
    alphabet = ibis.literal("0123456789abcdef")
    total = ibis.literal(0, type="int64")
    for i in range(start, start + digits):
        # DOUBLE is exact below 2^53; positions are 32-bit integers in PostgreSQL and Spark.
        total = total * 16 + alphabet.find(hexdigest.substr(i, 1)).cast("float64")
    return total.cast("int64")


def _row_text(table):
    """Each row's values as text, ``\\x1e``-separated, nulls marked (the digest's input)."""
    import ibis

    parts = [table[c].cast("string").fill_null("\x1fnull") for c in table.columns]
    text = parts[0] if parts else ibis.literal("")
    for part in parts[1:]:
        text = text + "\x1e" + part
    return text


def digest_expr(kind: str, table, *, portable: bool = False) -> ibis.Table:
    """One row summarising a table's content independently of row order: the row count and four sums of
    32-bit slices of each row's SHA-256 (over its values as text, ``\\x1e``-separated, nulls marked).
    Computed in the engine; no row leaves it. ``portable``: the slices parsed digit by digit on every
    backend (the definition the tests compare Spark's ``conv`` against)."""
    h = table.select(h=sha256_hex(kind, _row_text(table)))
    parse = None if portable else kind
    return h.aggregate(
        rows=h.count(), **{f"s{i}": hex_prefix_int(h.h, 8 * i, kind=parse).sum() for i in range(4)}
    )


def table_digest(con, kind: str, table) -> dict[str, int]:
    """``digest_expr``'s row (rows, s0..s3), run on ``con`` (a Guarded backend); on PostgreSQL through
    ``pg_digest_sql``, the same numbers."""
    if kind != POSTGRES:
        return con.to_pyarrow(digest_expr(kind, table)).to_pylist()[0]
    with con.raw_sql(pg_digest_sql(con, table)) as cur:
        rows, *sums = cur.fetchone()
    return {"rows": rows, **{f"s{i}": v for i, v in enumerate(sums)}}


def pg_digest_sql(con, table) -> str:
    """``digest_expr`` for PostgreSQL, its sums taken from the digest's bytes (``get_byte``) in a subquery
    kept whole with ``OFFSET 0``. PostgreSQL inlines a subquery and computes its column once per
    reference: the portable form, 32 hex digits parsed one by one, computed each row's SHA-256 32 times
    (48 s for 1M customers; 10M events ran past the 300 s statement timeout); once, 1.5 s and 15 s."""
    convert_to, sha256, _ = pg_functions()
    inner = con.compile(table.select(d=sha256(convert_to(_row_text(table), "UTF8"))))

    def slice_(i: int) -> str:  # bytes 4i..4i+3, big-endian: digest_expr's hex digits 8i..8i+7
        b = [f"get_byte(d, {4 * i + k})" for k in range(4)]
        return f"SUM(((({b[0]}::bigint * 256 + {b[1]}) * 256 + {b[2]}) * 256 + {b[3]})) AS s{i}"

    return f"SELECT COUNT(*) AS rows, {', '.join(slice_(i) for i in range(4))} FROM ({inner} OFFSET 0) AS h"


# --------------------------------------------------------------------------------------------------
# errors while running a query


def is_interrupt(exc: BaseException) -> bool:
    """True for a query stopped by Ctrl-C. DuckDB (2.0) turns a SIGINT that arrives while it executes into
    ``RuntimeError('Query interrupted')`` and the KeyboardInterrupt is gone (`labkit demo` stopped in its
    draw printed that traceback); an interrupt of the connection (``interrupt()``) is its InterruptException."""
    if type(exc).__name__ == "InterruptException":
        return True
    return isinstance(exc, RuntimeError) and str(exc).strip() == "Query interrupted"


def is_backend_error(exc: BaseException) -> bool:
    """True for driver and engine failures (psycopg, py4j, Spark's captured exceptions, DuckDB's)."""
    module = type(exc).__module__ or ""
    return module.startswith(("psycopg", "py4j", "pyspark", "duckdb", "_duckdb"))


class Guarded:
    """An Ibis backend whose execution methods report driver and engine failures as one LabkitError.

    ``run`` names the methods guarded (by default also the ones that open tables); ``on_error`` turns an
    engine failure into the error: PostgreSQL's (``labkit.data.postgres.postgres_error``) or Spark's
    (``labkit.data.spark.spark_error``) for the source that opened the connection. DuckDB's backend is
    guarded for running queries only, with ``labkit.data.sources.Engine.error`` (which knows the lab's
    files), and opening its files keeps its own messages there."""

    _RUN = ("execute", "to_pyarrow", "to_pandas", "raw_sql", "table", "read_parquet", "read_csv")

    def __init__(
        self,
        backend,
        on_error: Callable[[BaseException], BaseException],
        *,
        run=None,
        oserror: bool = False,
        lost: tuple[type[BaseException], ...] = (),
    ):
        self.backend = backend
        self._on_error = on_error
        self._oserror = oserror  # a streaming reader's OSError is the engine's too (DuckDB's arrow readers)
        self._lost = lost  # the engine's too: a lost connection to it (Spark's gateway when its JVM died)
        self._run = self._RUN if run is None else tuple(run)

    def error(self, exc: BaseException) -> BaseException:
        return self._on_error(exc)

    def guard_call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` with an engine failure reported as ``error`` says (for work done on the
        backend's own driver, such as PostgreSQL's COPY)."""
        try:
            return fn(*args, **kwargs)
        except LabkitError:
            raise
        except Exception as exc:
            if self._engines(exc):
                raise self.error(exc) from None
            raise

    def _engines(self, exc: BaseException, *, reading: bool = False) -> bool:
        """True when ``exc`` is the engine's failure: its driver's, a lost connection to it, or (while rows
        are read) a reader's OSError where the backend's readers fail that way."""
        return (
            is_backend_error(exc)
            or isinstance(exc, self._lost)
            or (reading and self._oserror and isinstance(exc, OSError))
        )

    def __getattr__(self, name: str):
        value = getattr(self.backend, name)
        if name == "to_pyarrow_batches":
            return self._batches
        if name not in self._run or not callable(value):
            return value
        return functools.partial(self.guard_call, value)

    def _batches(self, expr, **kwargs):
        """A streaming reader whose failures (raised while iterating) are reported as above."""
        import pyarrow as pa

        try:
            if getattr(self.backend, "name", "") == "duckdb":
                # ibis 12's to_pyarrow_batches calls a cursor method DuckDB 2.0 no longer has: a relation's
                sql = str(self.backend.compile(expr))
                reader = self.backend.con.sql(sql).to_arrow_reader(kwargs.get("chunk_size", 1_000_000))
            else:
                reader = self.backend.to_pyarrow_batches(expr, **kwargs)
        except Exception as exc:
            if self._engines(exc):
                raise self.error(exc) from None
            raise

        def batches():
            try:
                yield from reader
            except Exception as exc:
                if self._engines(exc, reading=True):  # (DuckDB's reader fails as pyarrow's OSError)
                    raise self.error(exc) from None
                raise

        return pa.RecordBatchReader.from_batches(reader.schema, batches())
