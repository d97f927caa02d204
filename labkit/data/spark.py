"""Spark for the engine: the process's session, its errors, and opening a source.

``pip install 'labkit[spark]'``: the Ibis pyspark backend; needs Java 17+. One local session per process
(``local[2]``, no UI, bound to 127.0.0.1, UTC, no broadcast joins; its driver, which in local mode also runs
every task, gets ``$LABKIT_SPARK_DRIVER_MEMORY`` or a quarter of the machine's memory, 1 to 8 GB, and its
JVM ends at its first OutOfMemoryError), made on first use and
reused by every engine of the process (a JVM takes seconds to start); an already active session (e.g. a
cluster session in a notebook) is used as it is. An engine registers its sources as temporary views under
names of its own and drops them on ``close()``. Aggregates run in Spark; only the per-arm rows (and, for
quantile metrics, the values) come back to the driver, and ``labkit assign`` brings back the drawn assignment
itself (id, arm, stratum) to write ``results/<id>/assignment.parquet``. The analysis reads that file in place
(``spark.read.parquet``). A ``path`` ending in ``.csv`` is read with a header and inferred types (which may
differ from DuckDB's: prefer parquet); any other path is parquet (a file or a folder). A Spark error is one
line whose quoted values are masked (``spark_error``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from labkit.data.backends import engine_error, first_line
from labkit.errors import DataError, LabkitError

if TYPE_CHECKING:  # pragma: no cover
    import ibis

    from labkit.lab import Lab

SPARK_MASTER = "local[2]"
DRIVER_MEMORY_ENV = "LABKIT_SPARK_DRIVER_MEMORY"

_SPARK: dict = {}  # the process's session and its scratch folder


def _need_pyspark():
    try:
        import pyspark  # noqa: F401
        from ibis.backends import pyspark as _  # noqa: F401
    except ImportError:
        raise engine_error("Spark sources need the spark extra: pip install 'labkit[spark]'") from None


def _java_present() -> bool:
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "java"), os.X_OK):
        return True
    return shutil.which("java") is not None


# The gateway's logger at the root's level: pyspark's JVM counts as a shell, and Spark printed "Setting default
# log level to "WARN"" and how to change it (two lines) on every labkit command, its level differing from the
# root's. (The JVM's own "Using incubator modules" line comes before any configuration and stays.)
LOG4J = """\
rootLogger.level = error
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = error
rootLogger.appenderRef.stderr.ref = stderr
appender.console.type = Console
appender.console.name = stderr
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = spark: %p %c{1}: %m%n
"""


def driver_memory() -> str:
    """The local session's driver memory, in Spark's notation: ``$LABKIT_SPARK_DRIVER_MEMORY`` (``4g``,
    ``6144m``; at least 1g), else a quarter of the machine's memory in whole GB, at least 1g and at most 8g.
    Spark's default, 1g, was too little for ``labkit assign`` of 10M customers: the draw brings the
    assignment back to the driver, and the JVM ran out of heap (4g took it; benchmarks/README.md)."""
    import re

    raw = os.environ.get(DRIVER_MEMORY_ENV, "").strip()
    if raw:
        match = re.fullmatch(r"([0-9]{1,7})([mMgGtT])", raw)
        mib = int(match[1]) * {"m": 1, "g": 1024, "t": 1024 * 1024}[match[2].lower()] if match else 0
        if mib < 1024:
            raise engine_error(
                f"{DRIVER_MEMORY_ENV}: '{raw}' is not a memory size of at least 1g; "
                "write a whole number and a unit, e.g. 4g or 6144m"
            )
        return raw.lower()
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - no sysconf (Windows)
        return "1g"
    return f"{min(8, max(1, total // 4 // 2**30))}g"


def spark_session():
    """The process's Spark session: the active one, else a local one made here once."""
    _need_pyspark()
    from pyspark.sql import SparkSession

    active = _SPARK.get("session") or SparkSession.getActiveSession()
    if active is not None:
        return active
    if not _java_present():
        raise engine_error(
            "Spark needs a Java runtime (17 or newer) on PATH or in JAVA_HOME; "
            "on Debian/Ubuntu: apt-get install -y default-jre-headless"
        )
    memory = driver_memory()  # before the scratch folder: a bad setting leaves nothing behind
    scratch = tempfile.mkdtemp(prefix="labkit-spark-")
    log4j = os.path.join(scratch, "log4j2.properties")
    with open(log4j, "w", encoding="utf-8") as fh:
        fh.write(LOG4J)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # A JVM out of heap ends at once: an OutOfMemoryError in Spark's result-fetching thread otherwise left
    # the job waiting for ever (`labkit assign` of 10M customers on a 2g driver hung); dead, the driver's
    # query fails and labkit says what to do (spark_error). The JVM's own lines ("Terminating due to
    # java.lang.OutOfMemoryError") go to stderr: stdout may carry a command's JSON. log4j's file is given as
    # a percent-encoded URI: a temporary folder with a space (TMPDIR) split the options Spark hands the JVM
    # ("Could not find or load main class ü.tmp.labkit-spark-….log4j2.properties"). The JVM's own temporary
    # folders (java.io.tmpdir: Spark's spark-<uuid>, artifacts-<uuid>) go in labkit's scratch folder, removed
    # at exit: left in /tmp they stayed behind, one or two empty folders a command, and always when the JVM
    # died (its shutdown hooks never ran). Without perf data (-XX:-UsePerfData, which only jstat reads) a JVM
    # that died leaves no /tmp/hsperfdata_<user>/<pid> either: HotSpot writes it in /tmp whatever the tmpdir.
    jvm_tmp = os.path.join(scratch, "jvm")
    os.mkdir(jvm_tmp)
    java_options = (
        f"-Duser.timezone=UTC -Dlog4j2.configurationFile={Path(log4j).as_uri()} "
        f"{_tmpdir_option(jvm_tmp)}"
        "-XX:+ExitOnOutOfMemoryError -XX:+DisplayVMOutputToStderr -XX:-UsePerfData"
    )
    builder = (
        SparkSession.builder.master(SPARK_MASTER)
        .appName("labkit")
        .config("spark.driver.memory", memory)
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.extraJavaOptions", java_options)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        # Spark broadcasts a join side it estimates under 10 MB, from the file's size: a 10M-row assignment
        # is a few MB of Parquet and far more once decoded, and the 1 GB driver failed the 10M pilot with
        # "Not enough memory to build and broadcast the table". Sort-merge joins spill to disk instead; at
        # 1M they cost nothing measurable (benchmarks/README.md, 2026-12-07).
        .config("spark.sql.autoBroadcastJoinThreshold", "-1")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.catalogImplementation", "in-memory")
        .config("spark.sql.warehouse.dir", os.path.join(scratch, "warehouse"))
        .config("spark.local.dir", os.path.join(scratch, "local"))
    )
    try:
        with _utf8_for_the_jvm():
            session = builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001 - the JVM did not start
        shutil.rmtree(scratch, ignore_errors=True)
        raise engine_error(f"Spark did not start: {first_line(exc, 300)}") from None
    session.sparkContext.setLogLevel("ERROR")
    # When a query fails while its rows come back through Arrow, pyspark warns with the JVM's error text
    # as it is (a cast error quotes the value); labkit reports the failure itself, masked (spark_error).
    # Only in a process whose session labkit made: a user's own session keeps pyspark's warnings.
    warnings.filterwarnings("ignore", message=r"toPandas attempted Arrow optimization", category=UserWarning)
    # When the JVM has died, py4j logs each failed call as a traceback through the root logger (which that
    # first call configures); labkit reports the failure itself, in one line.
    logging.getLogger().addFilter(_not_py4j)
    _SPARK.update(session=session, scratch=scratch, memory=memory)
    atexit.register(_stop_spark)
    return session


def _tmpdir_option(folder: str) -> str:
    """``-Djava.io.tmpdir=<folder> `` as one word of Spark's Java options, which Spark's launcher splits at
    white space and reads quotes and backslashes in (each is escaped with a backslash); "" — the JVM's own
    /tmp — for a folder with a character beyond the Basic Multilingual Plane, which that launcher reads one
    UTF-16 unit at a time and mangles whatever the escaping (tests/data/test_spark.py, through the launcher's
    own parser)."""
    if any(ord(c) > 0xFFFF for c in folder):
        return ""
    word = "".join("\\" + c if c.isspace() or c in "'\"\\" else c for c in folder)
    return f"-Djava.io.tmpdir={word} "


@contextlib.contextmanager
def _utf8_for_the_jvm():
    """The JVM decodes file names in the locale's encoding: under ``LC_ALL=C`` (which scripts, containers
    and CI set) it could not load its own classes from a folder with a non-ASCII letter in its path (a venv
    under /home/jürgen: "Could not find or load main class org.apache.spark.launcher.Main", then pyspark's
    JAVA_GATEWAY_EXITED). When this process's locale is not UTF-8 the JVM is started with
    ``LC_ALL=C.UTF-8``; the environment is put back once it runs. (Python itself moves a plain ``LANG=C`` to
    C.UTF-8 for its children, PEP 538, but not ``LC_ALL=C``.)"""
    import locale

    codeset = getattr(locale, "nl_langinfo", None)  # not on Windows, where the JVM uses its own API
    if codeset is None or codeset(locale.CODESET).replace("-", "").upper() == "UTF8":
        yield
        return
    before = os.environ.get("LC_ALL")
    os.environ["LC_ALL"] = "C.UTF-8"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LC_ALL", None)
        else:
            os.environ["LC_ALL"] = before


def _not_py4j(record: logging.LogRecord) -> bool:
    """A root-logger filter: False for py4j's own records (``logging.exception`` called from its modules)."""
    return f"{os.sep}py4j{os.sep}" not in record.pathname


def _stop_spark() -> None:
    """At exit: stop the session labkit made and remove its scratch folder. A JVM that died (out of memory,
    killed) cannot be stopped: py4j then logs a traceback through the root logger, so logging is off
    while it is tried."""
    session = _SPARK.pop("session", None)
    if session is not None:
        logging.disable(logging.CRITICAL)
        try:
            session.stop()
        except Exception:  # noqa: BLE001 - stopping at exit is best effort
            pass
        finally:
            logging.disable(logging.NOTSET)
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
    """A Spark failure in one line: the first line of its innermost Java cause (else its class and first
    line), with every quoted or bracketed part masked before it is cut to 300 characters — a cast or parse
    error quotes the offending value (``The value 'n/a' …``, a malformed record in brackets), and a value may
    be a customer's."""
    cause = _java_cause(exc)
    if cause is not None:  # py4j's own line only names the call ("An error occurred while calling o89.x")
        shown = mask_values(cause)[:300]
    else:
        shown = f"{type(exc).__name__}: {mask_values(first_line(exc))[:300]}"
    if _driver_stopped(exc, shown):
        return DataError(source, f"Spark: the driver stopped during the query ({shown}); {_driver_advice()}")
    return DataError(source, f"Spark: the query failed: {shown}")


def _driver_stopped(exc: BaseException, shown: str) -> bool:
    """True when the query failed because the driver's JVM ran out of memory or is gone: its jobs are
    cancelled with "SparkContext was shut down", py4j can no longer reach it (a refused connection, or
    "PythonUtils does not exist in the JVM"), or the JVM labkit started no longer answers."""
    from py4j.protocol import Py4JNetworkError

    signs = ("OutOfMemoryError", "SparkContext was shut down", "stopped SparkContext")
    return (
        isinstance(exc, (Py4JNetworkError, ConnectionError))
        or any(s in shown for s in signs)
        or _jvm_exited()
    )


def _jvm_exited() -> bool:
    """True when the session labkit made can no longer reach its JVM: a call to it fails. (Its process may
    not be reaped yet when py4j first sees the connection closed, so the process is not what is asked.)"""
    session = _SPARK.get("session")
    if session is None:
        return False
    try:
        session._jvm.java.lang.System.nanoTime()
    except Exception:  # noqa: BLE001 - any failure to reach it: gone
        return True
    return False


def _driver_advice() -> str:
    """What to do when the driver stopped: more memory for a session labkit made, else the cluster's."""
    if _SPARK.get("session") is None:
        return "look at the Spark session's own log (an out-of-memory driver is the most common cause)"
    memory = _SPARK.get("memory", "?")
    return (
        f"the local driver most likely ran out of memory (it had {memory}): set {DRIVER_MEMORY_ENV} to more, "
        "e.g. 8g, or cap the cohort (cohort.max_size)"
    )


def _java_cause(exc: BaseException) -> str | None:
    """The first line of the innermost cause of a JVM exception behind ``exc`` (a ``Py4JJavaError``), e.g.
    ``org.apache.spark.SparkException: Not enough memory to build and broadcast the table …``; else None."""
    java = getattr(exc, "java_exception", None)
    if java is None:
        return None
    try:
        for _ in range(32):  # a cycle of causes is not followed for ever
            cause = java.getCause()
            if cause is None or cause.equals(java):
                break
            java = cause
        text = str(java.toString()).strip()
    except Exception:  # noqa: BLE001 - the gateway is gone: py4j's own line will do
        return None
    return text.splitlines()[0] if text else None


def mask_values(text: str) -> str:
    """Quoted ('…', "…") and bracketed-record ([…] after a colon) parts replaced by …; Spark's error
    class in brackets at the start of the line is kept."""
    import re

    text = re.sub(r"'[^']*'|\"[^\"]*\"", "…", text)
    return re.sub(r"(:\s*)\[[^\]]*\]", r"\1[…]", text)


def literal_path(path: Path | str) -> str:
    """A file's path as Spark's readers take it literally: they read it as a Hadoop glob, where ``*``, ``?``,
    ``[``, ``{`` and ``\\`` are pattern characters (a lab in ``pilots?2`` could not be read: a URI error), so
    each is escaped with a backslash."""
    import re

    return re.sub(r"([{}\[\]*?\\])", r"\\\1", str(path))


def open_table(con, lab: Lab, name: str, spec, view: str) -> tuple[ibis.Table, str | None]:
    """Source ``name`` on the session ``con`` (a Guarded backend): a table of the session's catalog, or its
    ``path`` read as the temporary view ``view``. Returns the table and the view to drop on close (None for
    a catalog table)."""
    if spec.table:
        try:
            return con.table(spec.table), None
        except LabkitError:
            raise
        except Exception:
            raise DataError(name, f"no table '{spec.table}' in the Spark session's catalog") from None
    path = lab.source_path(name)
    if not path.exists():
        raise DataError(name, f"{lab.display(path)} does not exist")
    try:
        if path.suffix.lower() == ".csv":
            table = con.read_csv(literal_path(path), table_name=view)
        else:
            table = con.read_parquet(literal_path(path), table_name=view)
    except LabkitError:
        raise
    except Exception as exc:
        shown = mask_values(first_line(exc))  # quoted values masked, as in every Spark error
        raise DataError(name, f"Spark cannot read {lab.display(path)}: {shown}") from None
    return table, view
