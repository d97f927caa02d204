"""PostgreSQL and Spark for the engine: connections, uploads, per-backend expressions, and errors.

``labkit.data.sources.Engine`` opens each source on one of three engines ("places"): the embedded DuckDB
(CSV and Parquet files), one PostgreSQL database per ``url_env``, or the process's Spark session. This
module holds what is specific to the last two; every metric, filter and draw stays one Ibis expression.

PostgreSQL (``pip install 'labkit[postgres]'``: the Ibis postgres backend on psycopg 3)
    The URL is read from the environment variable the lab file names (``url_env``) at connection time and
    handed to psycopg; it is kept nowhere, and no message, log or exception text carries it: connection
    and query failures become one ``DataError`` built here from the SQLSTATE (the driver's own text can
    echo the URL or parts of it, so it is never passed on). The session runs with ``TimeZone = UTC``,
    ``statement_timeout`` (``LABKIT_PG_STATEMENT_TIMEOUT`` seconds, default 300) and
    ``default_transaction_read_only = on``: labkit never writes to the CRM. The only writes are to
    TEMPORARY tables (the pilot's assignment, uploaded with COPY in an explicit READ WRITE transaction),
    which vanish with the session, so the CRM rows never leave the database: they are joined there.
    Text sort keys that decide an output's order go through ``convert_to(x, 'UTF8')``: bytes compare
    the same in every collation, so row order matches DuckDB's bytewise order whatever the database's
    locale (hex digests already compare the same under every collation). Filter values reach SQL as
    literals that Ibis quotes (``'`` doubled; backslashes are plain characters there), never as SQL text;
    ``<``/``>`` on text columns follow the database's collation, as the CRM's own queries do.

Spark (``pip install 'labkit[spark]'``: the Ibis pyspark backend; needs Java 17+)
    One local session per process (``local[2]``, 1 GB driver, no UI, bound to 127.0.0.1, UTC), made on
    first use and reused by every engine of the process (a JVM takes seconds to start); an already active
    session (e.g. a cluster session in a notebook) is used as it is. An engine registers its sources as
    temporary views under names of its own and drops them on ``close()``. Aggregates run in Spark; only the
    per-arm rows (and, for quantile metrics, the values) come back to the driver, and ``labkit assign``
    brings back the drawn assignment itself (id, arm, stratum) to write ``results/<id>/assignment.parquet``.
    The analysis reads that file in place (``spark.read.parquet``). A ``path`` ending in ``.csv`` is read
    with a header and inferred types (which may differ from DuckDB's: prefer parquet); any other path is
    parquet (a file or a folder).

The hash of the draw (``labkit.assignment``), per backend, each the lowercase hex SHA-256 of the UTF-8 bytes:
DuckDB ``sha256(x)``; PostgreSQL ``encode(sha256(convert_to(x, 'UTF8')), 'hex')``; Spark ``sha2(x, 256)``.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING

from labkit.errors import DataError, LabkitError

if TYPE_CHECKING:  # pragma: no cover
    import ibis

DUCKDB, POSTGRES, SPARK = "duckdb", "postgres", "spark"
STATEMENT_TIMEOUT_ENV = "LABKIT_PG_STATEMENT_TIMEOUT"
STATEMENT_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 10
SPARK_MASTER = "local[2]"
SPARK_DRIVER_MEMORY = "1g"


def kind_of(place: str) -> str:
    """``duckdb``, ``postgres`` or ``spark`` for a place key (``postgres:ENV`` names the database)."""
    return place.split(":", 1)[0]


# --------------------------------------------------------------------------------------------------
# expressions that differ by backend


@functools.cache
def _pg_functions():
    """PostgreSQL builtins as Ibis builtin UDFs (compiled to plain function calls)."""
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
        convert_to, sha256, encode = _pg_functions()
        return encode(sha256(convert_to(text, "UTF8")), "hex")
    return text.hexdigest("sha256")  # DuckDB sha256(x); Spark sha2(x, 256)


def sort_key(kind: str, value):
    """A key that orders text bytewise (as DuckDB and Spark do) on every backend; other types as they are."""
    if kind == POSTGRES and value.type().is_string():
        convert_to, _, _ = _pg_functions()
        return convert_to(value, "UTF8")
    return value


def hex_prefix_int(hexdigest, start: int, digits: int = 8):
    """Hex digits ``start .. start+digits`` of a digest as an integer, portably (no backend hex parsing)."""
    import ibis

    alphabet = ibis.literal("0123456789abcdef")
    total = ibis.literal(0, type="int64")
    for i in range(start, start + digits):
        # DOUBLE is exact below 2^53; positions are 32-bit integers in PostgreSQL and Spark.
        total = total * 16 + alphabet.find(hexdigest.substr(i, 1)).cast("float64")
    return total.cast("int64")


def digest_expr(kind: str, table) -> ibis.Table:
    """One row summarising a table's content independently of row order: the row count and four sums of
    32-bit slices of each row's SHA-256 (over its values as text, ``\\x1e``-separated, nulls marked).
    Computed in the engine; no row leaves it."""
    import ibis

    parts = [table[c].cast("string").fill_null("\x1fnull") for c in table.columns]
    text = parts[0] if parts else ibis.literal("")
    for part in parts[1:]:
        text = text + "\x1e" + part
    h = table.select(h=sha256_hex(kind, text))
    return h.aggregate(rows=h.count(), **{f"s{i}": hex_prefix_int(h.h, 8 * i).sum() for i in range(4)})


# --------------------------------------------------------------------------------------------------
# PostgreSQL


def _need_psycopg():
    try:
        import psycopg  # noqa: F401
        from ibis.backends import postgres  # noqa: F401
    except ImportError:
        raise LabkitError(
            "PostgreSQL sources need the postgres extra: pip install 'labkit[postgres]'"
        ) from None


def statement_timeout_s() -> float:
    raw = os.environ.get(STATEMENT_TIMEOUT_ENV)
    if not raw:
        return STATEMENT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise LabkitError(f"{STATEMENT_TIMEOUT_ENV}: '{raw}' is not a number of seconds") from None
    if not value > 0:
        raise LabkitError(f"{STATEMENT_TIMEOUT_ENV}: the timeout must be above 0 seconds")
    return value


def connect_postgres(source: str, url_env: str) -> ibis.BaseBackend:
    """An Ibis postgres backend on the database in ``$url_env`` (read now, kept nowhere)."""
    _need_psycopg()
    import ibis
    import psycopg

    url = os.environ.get(url_env, "").strip()
    if not url:
        raise DataError(
            source,
            f"the environment variable {url_env} is not set; it must hold the database URL "
            "(postgresql://USER:PASSWORD@HOST:PORT/DATABASE), which never goes in a lab file",
        )
    if not url.startswith(("postgresql://", "postgres://")):
        raise DataError(
            source, f"${url_env} does not hold a PostgreSQL URL; it must start with postgresql://"
        )
    timeout_ms = max(1, int(statement_timeout_s() * 1000))
    ours = (
        f"-c statement_timeout={timeout_ms} -c default_transaction_read_only=on "
        "-c idle_in_transaction_session_timeout=600000 -c TimeZone=UTC"
    )
    try:
        # The URL's own options (e.g. -c search_path=crm) are kept; ours come last and win.
        given = psycopg.conninfo.conninfo_to_dict(url).get("options") or ""
        con = psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="labkit",
            options=f"{given} {ours}".strip(),
        )
    except Exception as exc:  # noqa: BLE001 - every driver error is reported without its text
        raise postgres_error(exc, source, url_env, connecting=True) from None
    finally:
        del url  # not kept, not in a traceback's locals
    try:
        backend = ibis.postgres.from_connection(con)
    except Exception as exc:  # noqa: BLE001
        con.close()
        raise postgres_error(exc, source, url_env) from None
    # Memtables go in by COPY (in a READ WRITE transaction) and vanish with the session: ibis would
    # INSERT row by row, and its DROP at garbage collection would fail in a read-only session.
    backend._register_in_memory_table = _memtable_uploader(backend)
    backend._make_memtable_finalizer = lambda name: None
    return backend


_PG_STATES = {
    "28P01": "the password was refused (password authentication failed)",
    "28000": "the server refused the login (no pg_hba.conf entry or role not allowed)",
    "3D000": "the database in the URL does not exist",
    "57014": "a query ran longer than the statement_timeout of {timeout:g} s and was cancelled "
    f"(raise {STATEMENT_TIMEOUT_ENV}, in seconds, for longer queries)",
    "57P01": "the server was shut down during the query",
    "57P03": "the server is starting up or shutting down; try again shortly",
    "53300": "the server has too many connections",
    "42501": "permission denied: the database user may not read a table the pilot needs",
    "25006": "the query tried to write, and labkit's sessions are read-only",
}


def postgres_error(exc: BaseException, source: str, url_env: str, *, connecting: bool = False) -> DataError:
    """A driver or server failure as one DataError naming the source and the variable, never the URL."""
    state = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "diag", None), "sqlstate", None)
    where = f"PostgreSQL (the database in ${url_env})"
    login = _login_failure(exc) if connecting else None
    if state in _PG_STATES:
        what = _PG_STATES[state].format(timeout=statement_timeout_s())
    elif login is not None:
        what = login
    elif connecting or _is_connection_failure(exc):
        what = (
            "cannot connect: the server does not answer or closed the connection "
            f"(is it running, and are the host and port in ${url_env} right?)"
        )
    elif state is not None:
        name = type(exc).__name__
        # A data exception's text can quote a customer's value: give its class, not its text.
        detail = "" if state.startswith("22") else _primary(exc)
        what = f"the query failed: {name} (SQLSTATE {state})" + (f": {detail}" if detail else "")
    else:
        what = f"the query failed: {type(exc).__name__}"
    return DataError(source, f"{where}: {what}")


_LOGIN = (  # libpq reports a failed login as text only (no SQLSTATE): read it, never repeat it
    (
        ("password authentication failed", "authentication failed"),
        "the password was refused (password authentication failed)",
    ),
    (("no password supplied", "fe_sendauth"), "the server asks for a password and the URL has none"),
    (
        ("no pg_hba.conf entry",),
        "the server refused the login (no pg_hba.conf entry for this host, user and database)",
    ),
    (('role "',), "the server has no such user"),
    (('database "',), "the database in the URL does not exist"),
    (
        ("invalid connection option", "invalid uri", 'missing "="', "invalid integer value", "invalid port"),
        "the URL is not a valid PostgreSQL URL (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)",
    ),
)


def _login_failure(exc: BaseException) -> str | None:
    text = str(exc).lower()
    for needles, what in _LOGIN:
        if any(n in text for n in needles):
            if needles[0] in ('role "', 'database "') and "does not exist" not in text:
                continue
            return what
    return None


def _is_connection_failure(exc: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _primary(exc: BaseException) -> str:
    """The server's own one-line message (it never holds the URL)."""
    diag = getattr(exc, "diag", None)
    text = getattr(diag, "message_primary", None) or ""
    return text.strip().splitlines()[0][:300] if text.strip() else ""


_PG_TYPES = {
    "int8": "smallint",
    "int16": "smallint",
    "int32": "integer",
    "int64": "bigint",
    "float": "real",
    "double": "double precision",
    "bool": "boolean",
    "string": "text",
    "large_string": "text",
    "string_view": "text",
    "date32[day]": "date",
}


def _pg_type(arrow_type) -> str:
    import pyarrow as pa

    if pa.types.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz else "timestamp"
    name = str(arrow_type)
    if name not in _PG_TYPES:
        raise LabkitError(f"cannot upload a column of type {name} to PostgreSQL")
    return _PG_TYPES[name]


def upload(backend, name: str, schema, batches) -> None:
    """A TEMPORARY table ``name`` filled by COPY from arrow ``batches`` (in a READ WRITE transaction, as the
    session is read-only by default), then ANALYZEd so the planner knows its size."""
    from psycopg import sql

    con = backend.con
    ident = sql.Identifier(name)
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(_pg_type(f.type))) for f in schema
    )
    names = sql.SQL(", ").join(sql.Identifier(f.name) for f in schema)
    with con.transaction(), con.cursor() as cur:
        cur.execute("SET TRANSACTION READ WRITE")
        cur.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(ident))
        cur.execute(sql.SQL("CREATE TEMPORARY TABLE {} ({})").format(ident, columns))
        with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(ident, names)) as copy:
            for batch in batches:
                for row in zip(*(col.to_pylist() for col in batch.columns)):
                    copy.write_row(row)
        cur.execute(sql.SQL("ANALYZE {}").format(ident))


def _memtable_uploader(backend):
    def register(op) -> None:
        table = op.data.to_pyarrow(op.schema)
        upload(backend, op.name, table.schema, table.to_batches())

    return register


# --------------------------------------------------------------------------------------------------
# Spark

_SPARK: dict = {}  # the process's session and its scratch folder


def _need_pyspark():
    try:
        import pyspark  # noqa: F401
        from ibis.backends import pyspark as _  # noqa: F401
    except ImportError:
        raise LabkitError("Spark sources need the spark extra: pip install 'labkit[spark]'") from None


def _java_present() -> bool:
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "java"), os.X_OK):
        return True
    return shutil.which("java") is not None


LOG4J = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = stderr
appender.console.type = Console
appender.console.name = stderr
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = spark: %p %c{1}: %m%n
"""


def spark_session():
    """The process's Spark session: the active one, else a local one made here once."""
    _need_pyspark()
    from pyspark.sql import SparkSession

    active = _SPARK.get("session") or SparkSession.getActiveSession()
    if active is not None:
        return active
    if not _java_present():
        raise LabkitError(
            "Spark needs a Java runtime (17 or newer) on PATH or in JAVA_HOME; "
            "on Debian/Ubuntu: apt-get install -y default-jre-headless"
        )
    scratch = tempfile.mkdtemp(prefix="labkit-spark-")
    log4j = os.path.join(scratch, "log4j2.properties")
    with open(log4j, "w", encoding="utf-8") as fh:
        fh.write(LOG4J)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    java_options = f"-Duser.timezone=UTC -Dlog4j2.configurationFile=file:{log4j}"
    builder = (
        SparkSession.builder.master(SPARK_MASTER)
        .appName("labkit")
        .config("spark.driver.memory", SPARK_DRIVER_MEMORY)
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.extraJavaOptions", java_options)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.catalogImplementation", "in-memory")
        .config("spark.sql.warehouse.dir", os.path.join(scratch, "warehouse"))
        .config("spark.local.dir", os.path.join(scratch, "local"))
    )
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001 - the JVM did not start
        shutil.rmtree(scratch, ignore_errors=True)
        raise LabkitError(f"Spark did not start: {_first_line(exc)}") from None
    session.sparkContext.setLogLevel("ERROR")
    _SPARK.update(session=session, scratch=scratch)
    atexit.register(_stop_spark)
    return session


def _stop_spark() -> None:
    session = _SPARK.pop("session", None)
    if session is not None:
        try:
            session.stop()
        except Exception:  # noqa: BLE001 - stopping at exit is best effort
            pass
    scratch = _SPARK.pop("scratch", None)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)


def connect_spark() -> ibis.BaseBackend:
    """An Ibis backend on the process's session, whose SQL time zone is UTC: a session labkit did not
    make (a notebook's cluster session) may run in another zone, and Spark casts between naive and zoned
    timestamps, and dates to timestamps, in the session zone. It is a runtime setting, set on the live
    session (Ibis's connect sets it too; set here so the guarantee does not rest on Ibis); the notebook's
    later queries on that session then run in UTC as well."""
    import ibis

    session = spark_session()
    session.conf.set("spark.sql.session.timeZone", "UTC")
    return ibis.pyspark.connect(session)


def spark_error(exc: BaseException, source: str) -> DataError:
    """A Spark failure in one line: its class and first line, with every quoted or bracketed part masked —
    a cast or parse error quotes the offending value (``The value 'n/a' …``, a malformed record in
    brackets), and a value may be a customer's."""
    shown = mask_values(_first_line(exc))
    return DataError(source, f"Spark: the query failed: {type(exc).__name__}: {shown}")


def mask_values(text: str) -> str:
    """Quoted ('…', "…") and bracketed-record ([…] after a colon) parts replaced by …; Spark's error
    class in brackets at the start of the line is kept."""
    import re

    text = re.sub(r"'[^']*'|\"[^\"]*\"", "…", text)
    return re.sub(r"(:\s*)\[[^\]]*\]", r"\1[…]", text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# errors while running a query


def is_backend_error(exc: BaseException) -> bool:
    """True for driver and engine failures (psycopg, py4j, Spark's captured exceptions, DuckDB's)."""
    module = type(exc).__module__ or ""
    return module.startswith(("psycopg", "py4j", "pyspark", "duckdb", "_duckdb"))


class Guarded:
    """An Ibis backend whose execution methods report driver and engine failures as one LabkitError.

    ``run`` names the methods guarded (by default also the ones that open tables); ``on_error`` turns an
    engine failure into the error (by default PostgreSQL's or Spark's, by ``url_env``). DuckDB's backend
    is guarded for running queries only, with ``labkit.data.sources.Engine.error`` (which knows the lab's
    files), and opening its files keeps its own messages there."""

    _RUN = ("execute", "to_pyarrow", "to_pandas", "raw_sql", "table", "read_parquet", "read_csv")

    def __init__(self, backend, source: str, url_env: str | None = None, *, on_error=None, run=None):
        self.backend = backend
        self._source = source
        self._url_env = url_env
        self._on_error = on_error
        self._run = self._RUN if run is None else tuple(run)

    def error(self, exc: BaseException) -> LabkitError:
        if self._on_error is not None:
            return self._on_error(exc)
        if self._url_env is not None:
            return postgres_error(exc, self._source, self._url_env)
        return spark_error(exc, self._source)

    def __getattr__(self, name: str):
        value = getattr(self.backend, name)
        if name == "to_pyarrow_batches":
            return self._batches
        if name not in self._run or not callable(value):
            return value

        def run(*args, **kwargs):
            try:
                return value(*args, **kwargs)
            except LabkitError:
                raise
            except Exception as exc:
                if is_backend_error(exc):
                    raise self.error(exc) from None
                raise

        return run

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
            if is_backend_error(exc):
                raise self.error(exc) from None
            raise

        def batches():
            try:
                yield from reader
            except Exception as exc:
                if is_backend_error(exc) or (self._on_error is not None and isinstance(exc, OSError)):
                    raise self.error(exc) from None  # (a reader's failure is pyarrow's OSError)
                raise

        return pa.RecordBatchReader.from_batches(reader.schema, batches())
