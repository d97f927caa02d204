"""PostgreSQL for the engine: the connection, its errors, uploads, and opening a table.

``pip install 'labkit[postgres]'``: the Ibis postgres backend on psycopg 3. The URL is read from the
environment variable the lab file names (``url_env``) at connection time and handed to psycopg; it is kept
nowhere, and no message, log or exception text carries it: connection and query failures become one
``DataError`` built here from the SQLSTATE (the driver's own text can echo the URL or parts of it, so it is
never passed on). The session runs with ``TimeZone = UTC``, ``statement_timeout``
(``LABKIT_PG_STATEMENT_TIMEOUT`` seconds, default 300) and ``default_transaction_read_only = on``: labkit
never writes to the CRM. The only writes are to TEMPORARY tables (the pilot's assignment, uploaded with COPY
in an explicit READ WRITE transaction), which vanish with the session, so the CRM rows never leave the
database: they are joined there. Filter values reach SQL as literals that Ibis quotes (``'`` doubled;
backslashes are plain characters there), never as SQL text; ``<``/``>`` on text columns follow the
database's collation, as the CRM's own queries do (sort keys that decide an output's order compare bytes:
``labkit.data.backends.sort_key``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from labkit.data.backends import engine_error, is_backend_error
from labkit.errors import DataError, LabkitError

if TYPE_CHECKING:  # pragma: no cover
    import ibis

STATEMENT_TIMEOUT_ENV = "LABKIT_PG_STATEMENT_TIMEOUT"
STATEMENT_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 10


def _need_psycopg():
    try:
        import psycopg  # noqa: F401
        from ibis.backends import postgres  # noqa: F401
    except ImportError:
        raise engine_error(
            "PostgreSQL sources need the postgres extra: pip install 'labkit[postgres]'"
        ) from None


def statement_timeout_s() -> float:
    raw = os.environ.get(STATEMENT_TIMEOUT_ENV)
    if not raw:
        return STATEMENT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise engine_error(f"{STATEMENT_TIMEOUT_ENV}: '{raw}' is not a number of seconds") from None
    if not value > 0:
        raise engine_error(f"{STATEMENT_TIMEOUT_ENV}: the timeout must be above 0 seconds")
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
        raise engine_error(f"cannot upload a column of type {name} to PostgreSQL")
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


def open_table(con, name: str, spec):
    """Source ``name``'s table (``spec.table``) in the database ``con`` is connected to (a Guarded backend)."""
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


def upload_file(con, path: Path, name: str) -> ibis.Table:
    """A parquet file labkit wrote (an assignment) as the TEMPORARY table ``_labkit_<name>``, joined in the
    database with the CRM tables."""
    import pyarrow.parquet as pq

    temp = f"_labkit_{name}"
    if len(temp.encode()) > 63:  # PostgreSQL would cut a longer name short
        temp = f"{temp[:50]}_{hashlib.sha256(temp.encode()).hexdigest()[:12]}"
    with pq.ParquetFile(path) as pf:
        con.guard_call(upload, con.backend, temp, pf.schema_arrow, pf.iter_batches(batch_size=65_536))
    return con.table(temp)
