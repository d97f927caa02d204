"""Opening a store safely: the state of a sqlite store's schema, building one aside (from a cached empty
store) and renaming it into place, one quick connection attempt to a database server, and MLflow's log
lines sent to a file (RELIABILITY #38; the ``labkit.tracking`` docstring says why each exists)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from labkit._files import cache_folder
from labkit.errors import TrackingError
from labkit.lab import sqlite_uri
from labkit.tracking.rules import one_line, redact

BUILDING = ".building"  # suffix of a sqlite store being built beside its final name
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")
# Connecting to a database server: a short timeout per driver (seconds), checked before MLflow's retry loop
SQL_CONNECT_ARGS: dict[str, dict] = {
    "postgresql": {"connect_timeout": 5},
    "mysql": {"connect_timeout": 5},
    "mssql": {"timeout": 5},
}
_QUIET_GUARD = threading.Lock()


def sqlite_state(path: Path) -> tuple[str, int]:
    """``(state, runs)`` of a sqlite store: ``missing``, ``ready`` (MLflow's tables at this MLflow's schema
    revision), ``old`` (another revision), ``half`` (no schema version) or ``unknown`` (unreadable),
    with the number of rows in its ``runs`` table (0 where there is none)."""
    import sqlite3

    if not path.is_file():
        return "missing", 0
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        ) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            runs = db.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
            versions = (
                [row[0] for row in db.execute("SELECT version_num FROM alembic_version")]
                if "alembic_version" in tables
                else []
            )
    except sqlite3.Error:
        return "unknown", 0  # locked, or not a database: never replaced; MLflow's own error will say
    if len(versions) != 1 or not {"experiments", "runs"} <= tables:
        return "half", runs
    return ("ready" if versions[0] == schema_head() else "old"), runs


@functools.cache
def schema_head() -> str:
    """The schema revision this MLflow creates (~0.5 s to compute: once per process)."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def remove_builds(path: Path) -> None:
    """Files of a store being built beside ``path`` by a process that died (only called under the lock)."""
    for leftover in path.parent.glob(f".{path.name}.*{BUILDING}*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def build_sqlite_store(path: Path, artifact_root: str, quiet: Callable[[], None]) -> None:
    """Create and migrate a sqlite store beside ``path``, then rename it into place (atomic: a kill at
    any point leaves no store or a complete one), with an explicit, percent-encoded artifact root.

    Left to itself MLflow inserts its Default experiment with ``./mlruns`` of the working directory as a
    raw path quoted with a backslash, which is invalid SQL in sqlite when the path holds a ``'``.

    The new file starts as a copy of an empty store at this MLflow's schema, kept in labkit's cache folder
    (:func:`store_template`), and MLflow opens it as it opens any store at its schema, adding its Default
    experiment: running MLflow's migrations (~100 of them) costs ~1 CPU-s per new store. Without a usable
    copy the migrations run here, and their result, emptied, becomes the copy."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{BUILDING}")
    try:
        template = store_template()
        if template is not None:
            try:
                shutil.copyfile(template, aside)
                SqlAlchemyStore(sqlite_uri(aside), artifact_root).engine.dispose()
            except Exception:  # noqa: BLE001 - whatever the copy lacks, the migrations build it instead
                _remove_with_side_files(aside)
                template = None
        if template is None:
            SqlAlchemyStore(sqlite_uri(aside), artifact_root).engine.dispose()
            save_store_template(aside)
        quiet()
        with open(aside, "rb+") as fh:
            os.fsync(fh.fileno())
        for suffix in SQLITE_SIDE_FILES:  # a broken store's journal must not be replayed into the new one
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        os.replace(aside, path)
        _fsync_dir(path.parent)
    finally:
        _remove_with_side_files(aside)


def _remove_with_side_files(db: Path) -> None:
    for leftover in (db, *(Path(f"{db}{suffix}") for suffix in SQLITE_SIDE_FILES)):
        leftover.unlink(missing_ok=True)


def template_path() -> Path:
    """Where the empty store of this MLflow and SQLAlchemy at this schema revision is kept."""
    import sqlalchemy
    from mlflow.version import VERSION

    return (
        cache_folder() / f"mlflow-store-{VERSION}-sqlalchemy-{sqlalchemy.__version__}-{schema_head()}.sqlite"
    )


def store_template() -> Path | None:
    """The cached empty store, if it is one: MLflow's tables at this schema revision, no experiment and
    no run, and sqlite's quick check passes. Anything else (missing, unreadable, another revision, not a
    database, edited) is not used: the store is built by the migrations and the copy made anew."""
    import sqlite3

    template = template_path()
    if not template.is_file():
        return None
    try:
        with contextlib.closing(
            sqlite3.connect(f"{template.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        ) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"alembic_version", "experiments", "runs"} <= tables:
                return None
            versions = [row[0] for row in db.execute("SELECT version_num FROM alembic_version")]
            rows = db.execute(
                "SELECT (SELECT count(*) FROM experiments) + (SELECT count(*) FROM runs)"
            ).fetchone()
            checked = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error:
        return None
    if versions != [schema_head()] or rows != (0,) or checked != [("ok",)]:
        return None
    return template


def save_store_template(store: Path) -> None:
    """Keep a copy of ``store``, just built by the migrations, without its Default experiment, as the
    cached empty store (written aside and renamed: a reader copies the old one or the new one). Best
    effort: an unwritable cache folder only costs the next new store its migrations."""
    import sqlite3

    from labkit._process import pid_alive

    template = template_path()
    part = template.with_name(f".{template.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        for left in template.parent.glob(".mlflow-store-*"):  # copies whose writer was killed mid-way
            writer = left.name.rsplit(".", 2)[-2]
            if writer.isdigit() and not pid_alive(int(writer)):
                left.unlink(missing_ok=True)
        shutil.copyfile(store, part)
        with contextlib.closing(sqlite3.connect(part)) as db:
            db.execute("DELETE FROM experiments")
            db.commit()
            db.execute("VACUUM")  # the freed pages still held that lab's artifact path
        os.replace(part, template)
    except (OSError, sqlite3.Error):
        pass
    finally:
        with contextlib.suppress(OSError):
            part.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def probe_database(uri: str, dialect: str, shown: str) -> None:
    """One connection attempt with a short timeout, so an unreachable database or a refused login is
    one line within seconds. MLflow's own engine retries a failing connection about 15 times with
    exponential back-off (~100 s) and cannot be told otherwise. ``shown``: the URI fit for messages."""
    try:
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        engine = sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args=SQL_CONNECT_ARGS[dialect])
    except Exception as exc:  # an unknown driver, a malformed URI
        raise TrackingError(f"cannot use the MLflow tracking database {shown}: {one_line(exc)}") from None
    try:
        with engine.connect():
            pass
    except Exception as exc:
        raise TrackingError(
            f"cannot reach the MLflow tracking database at {shown} ({one_line(exc)}); start "
            "it or check its address and login, or point tracking_uri in configs/lab.yaml (or "
            "LABKIT_TRACKING_URI) at a running one"
        ) from None
    finally:
        engine.dispose()


class _MlflowLog(logging.Handler):
    """Appends log records (with their tracebacks), credentials masked, to a file; never raises."""

    def __init__(self, path: Path):
        super().__init__(logging.WARNING)
        self.path = path
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = redact(self.format(record))
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(text + "\n")
        except Exception:  # noqa: BLE001 -- a read-only or full results/ loses MLflow's log, nothing else
            pass


def quiet_mlflow(log_path: Path) -> None:
    """Send the log records of MLflow, alembic and SQLAlchemy to ``log_path``, not stderr.

    On a read-only store or a full disk MLflow logs an ERROR with a whole traceback (and the SQL with
    its parameters) before raising; labkit then says the same thing in one line. So their stream
    handlers are removed and records of WARNING and above are appended, credentials masked, to the log
    file (best effort: a read-only results/ just loses them). Importing mlflow installs its handler and
    resets its level, so the tracker calls this again after every import."""
    handler = _MlflowLog(log_path)
    with _QUIET_GUARD:  # the batch's MLflow threads open clients at once: one handler each, not two
        for name in ("mlflow", "alembic", "sqlalchemy"):
            logger = logging.getLogger(name)
            for old in list(logger.handlers):
                if isinstance(old, _MlflowLog) or type(old) is logging.StreamHandler:
                    logger.removeHandler(old)
            logger.addHandler(handler)
            logger.setLevel(logging.WARNING)
            logger.propagate = False
