"""One pilot on DuckDB (files), PostgreSQL and Spark: the same assignment and the same analysis.

The issue's equivalence demand, end to end: the CRM of tests/backend_lab.py is written as parquet files,
loaded into a real PostgreSQL server (tests/pg_server.py) and read by a local Spark session (one source
from a path, one from the session's catalog). ``labkit assign`` writes the same bytes on all three, and
``labkit analyze`` gives the same numbers (floating-point tolerance). On Spark only per-arm rows come
back to the driver, except the quantile metric's values.

These tests run in CI and are never skipped: without Java or pyspark they fail saying what to install.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from backend_lab import (
    PILOT_ID,
    URL_ENV,
    Fetched,
    analysis_numbers,
    assert_same_numbers,
    crm_tables,
    load_postgres,
    write_lab,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pg_server import postgres_server  # noqa: F401 -- the session fixture

import labkit
from labkit.assignment import assign
from labkit.cli import main
from labkit.data.spark import driver_memory
from labkit.errors import DataError

from conftest import pilot_yaml

pytestmark = [pytest.mark.spark, pytest.mark.slow]


# Test-only: the client compiler alone and the serial collector, for a cold JVM on tiny tables (not labkit's
# default, the fixture says why)
TEST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


@pytest.fixture(scope="module")
def spark():
    """The process's Spark session, made by labkit itself (labkit.data.spark.spark_session)."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.fail(
            "Spark needs Java 17+: apt-get install -y default-jre-headless (as `make test` does, tools/system-deps)",
            pytrace=False,
        )
    try:
        import pyspark  # noqa: F401
    except ImportError:
        pytest.fail(
            "pyspark is missing: pip install -e '.[test]' (the test extra pulls labkit[spark])", pytrace=False
        )
    # Test-only tuning for a cold JVM on two cores and tiny tables (results do not depend on it): the
    # client compiler alone, the serial collector (G1's concurrent threads cost more than they save on a
    # heap this small: test_spark 59-67 -> 53-60 machine CPU-s), and no whole-stage code generation
    # (compiling it costs more than it saves).
    # Not labkit's default: at 10M customers the client compiler alone made the pilot 1.7x slower
    # (benchmarks/README.md, 2026-12-07).
    from labkit.data.spark import spark_session

    before = os.environ.get("JAVA_TOOL_OPTIONS")
    os.environ.setdefault("JAVA_TOOL_OPTIONS", TEST_JVM_OPTIONS)
    try:
        session = spark_session()
    finally:
        if before is None:
            os.environ.pop("JAVA_TOOL_OPTIONS", None)
    session.conf.set("spark.sql.codegen.wholeStage", "false")
    return session


def test_labkits_own_session_never_broadcasts_a_join_and_a_jvm_failure_names_its_cause(spark):
    """The session labkit makes joins without broadcasting (a 10M-row assignment overflowed the 1 GB driver
    when broadcast); a JVM failure is its innermost cause in one line, quoted values masked, not py4j's
    "An error occurred while calling …"."""
    from py4j.protocol import Py4JJavaError

    from labkit.data.spark import spark_error

    assert spark.conf.get("spark.sql.autoBroadcastJoinThreshold") in ("-1", "-1b")
    jvm = spark.sparkContext._jvm
    root = jvm.org.apache.spark.SparkException(
        "Not enough memory to build and broadcast the table to all worker nodes (customer 'C-0001234')"
    )
    outer = jvm.org.apache.spark.SparkException("Exception thrown in awaitResult: ", root)
    shown = str(
        spark_error(Py4JJavaError("An error occurred while calling o89.getResult.\n", outer), "customers")
    )
    assert shown == (
        "source 'customers': Spark: the query failed: org.apache.spark.SparkException: Not enough memory to "
        "build and broadcast the table to all worker nodes (customer …)"
    ), shown
    # A driver that ran out of heap cancels its jobs; the line says so and what to do about it.
    stopped = jvm.org.apache.spark.SparkException("Job 7 cancelled because SparkContext was shut down")
    shown = str(spark_error(Py4JJavaError("An error occurred while calling o91.x.\n", stopped), "customers"))
    assert shown == (
        "source 'customers': Spark: the driver stopped during the query (org.apache.spark.SparkException: Job 7 "
        f"cancelled because SparkContext was shut down); the local driver most likely ran out of memory (it had "
        f"{driver_memory()}): set LABKIT_SPARK_DRIVER_MEMORY to more, e.g. 8g, or cap the cohort (cohort.max_size)"
    ), shown


def _mem_total_gib() -> int:
    with open("/proc/meminfo") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
    return kib // 4 // 2**20  # a quarter, in whole GiB


def test_the_local_driver_gets_a_quarter_of_the_machines_memory_and_the_jvm_has_it(spark, monkeypatch):
    """1 GB (Spark's default) ran out of heap on `labkit assign` of 10M customers; the JVM's heap is the
    setting, not just the session's conf."""
    monkeypatch.delenv("LABKIT_SPARK_DRIVER_MEMORY", raising=False)
    want = f"{min(8, max(1, _mem_total_gib()))}g"
    assert driver_memory() == want
    assert spark.conf.get("spark.driver.memory") == want
    heap = spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory()
    assert 0.85 * int(want[:-1]) * 2**30 <= heap <= int(want[:-1]) * 2**30


@pytest.mark.parametrize("raw, want", [("4g", "4g"), ("6144M", "6144m"), (" 1G ", "1g"), ("1024m", "1024m"),
                                       ("2t", "2t")])  # fmt: skip
def test_the_driver_memory_setting_is_sparks_notation(monkeypatch, raw, want):
    monkeypatch.setenv("LABKIT_SPARK_DRIVER_MEMORY", raw)
    assert driver_memory() == want


@pytest.mark.parametrize("raw", ["1023m", "512m", "4", "4gb", "1.5g", "-1g", "0g", "g", "four", "4 g", "4k"])
def test_a_bad_driver_memory_setting_is_one_line_saying_what_is_allowed(monkeypatch, raw):
    monkeypatch.setenv("LABKIT_SPARK_DRIVER_MEMORY", raw)
    with pytest.raises(DataError) as caught:
        driver_memory()
    assert str(caught.value) == (
        f"LABKIT_SPARK_DRIVER_MEMORY: '{raw.strip()}' is not a memory size of at least 1g; "
        "write a whole number and a unit, e.g. 4g or 6144m"
    )


# A process whose Spark JVM ran out of memory (10M customers on a small driver): the JVM ends at once (an
# OutOfMemoryError in Spark's result-fetching thread otherwise left the job waiting for ever), the next
# query is labkit's one line, and at exit labkit stops the dead session quietly (py4j logged that attempt
# as a traceback). pyspark's warning of a failed Arrow fetch quotes the JVM's error as it is; in a
# process whose session labkit made, it is not shown.
DEAD_JVM = """
import os, sys, time, warnings
import pyarrow as pa, pyarrow.parquet as pq
import labkit
from labkit.data.sources import Engine
from labkit.data.spark import spark_session
os.makedirs("configs"); os.makedirs("data")
pq.write_table(pa.table({"customer_id": ["C-0001234", "C-0001235"]}), "data/customers.parquet")
open("configs/lab.yaml", "w").write("lab: dead\\nsources:\\n  customers: {format: spark, path: data/customers.parquet}\\n"
                                    "functions: [sales]\\nchannels: [email]\\n")
engine = Engine.for_lab(labkit.load_lab("configs/lab.yaml"))
customers = engine.table("customers")
session = spark_session()
jvm = session._jvm
print(jvm.java.lang.System.getProperty("java.io.tmpdir"), jvm.java.lang.ProcessHandle.current().pid(), flush=True)
warnings.warn("toPandas attempted Arrow optimization because ... The value 'C-0001234' cannot be cast",
              UserWarning)
try:  # 1.6 GB of longs in a 1g heap
    jvm.java.lang.reflect.Array.newInstance(jvm.java.lang.Long.TYPE, 200_000_000)
except Exception:
    pass
print("out of memory", flush=True)
try:
    engine.con.to_pyarrow(customers.count())
except labkit.LabkitError as exc:
    print(exc, flush=True)
# what a query in flight got when the JVM died under it (`labkit assign` of 10M on a 2g driver)
from py4j.protocol import Py4JError
from labkit.data.spark import spark_error
print(spark_error(Py4JError("An error occurred while calling o88.getResult"), "customers"), flush=True)
"""


def test_a_jvm_out_of_memory_ends_and_the_query_is_one_line_saying_what_to_do(spark, tmp_path):
    """Its JVM also starts as a container's would under ``LC_ALL=C`` from folders with a non-ASCII letter:
    Spark's jars (SPARK_HOME), the lab and the temporary folder (log4j's file, Spark's scratch). Under the C
    locale the JVM read those paths as ASCII and did not start (labkit.data.spark._utf8_for_the_jvm). The
    folder's space and quote are characters Spark's launcher splits or reads in the JVM's options."""
    import pyspark

    odd = tmp_path / "l'autre dossier ü"
    (odd / "tmp").mkdir(parents=True)
    (odd / "spark").symlink_to(Path(pyspark.__file__).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_") and k != "LANG"}
    env.update(LC_ALL="C", SPARK_HOME=str(odd / "spark"), TMPDIR=str(odd / "tmp"))
    done = subprocess.run(
        [sys.executable, "-c", DEAD_JVM], capture_output=True, text=True, timeout=180, cwd=odd,
        env={**env, "JAVA_TOOL_OPTIONS": TEST_JVM_OPTIONS, "LABKIT_SPARK_DRIVER_MEMORY": "1g"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    jvm, killed, line, in_flight, end = done.stdout.split("\n")
    jvm_tmp, jvm_pid = jvm.rsplit(" ", 1)
    assert (killed, end) == ("out of memory", ""), done.stdout + done.stderr
    advice = (
        "the local driver most likely ran out of memory (it had 1g): set LABKIT_SPARK_DRIVER_MEMORY to more, "
        "e.g. 8g, or cap the cohort (cohort.max_size)"
    )
    # what py4j says between the brackets is its own (today a refused connection)
    assert line.startswith("source 'customers': Spark: the driver stopped during the query ("), line
    assert line.endswith(f"); {advice}"), line
    assert in_flight == (
        "source 'customers': Spark: the driver stopped during the query (Py4JError: An error occurred while "
        f"calling o88.getResult); {advice}"
    )
    assert "Terminating due to java.lang.OutOfMemoryError: Java heap space" in done.stderr, done.stderr
    for noise in ("Traceback", "ERROR:root", "Py4J", "C-0001234", "toPandas", "Setting default log level"):
        assert noise not in done.stderr, done.stderr
    # the JVM's temporary folders were in labkit's scratch folder, removed at exit though the JVM had died
    assert Path(jvm_tmp).parent.parent == odd / "tmp", jvm_tmp
    assert not list((odd / "tmp").iterdir())
    assert not (Path("/tmp") / f"hsperfdata_{getpass.getuser()}" / jvm_pid).exists()  # HotSpot's own, in /tmp


@settings(max_examples=100, deadline=None)
@given(text=st.text(st.characters(exclude_categories=("Cs",)), max_size=40))
def test_any_folder_is_one_word_of_sparks_java_options_as_its_launcher_reads_them(spark, text):
    """The JVM's tmpdir is a scratch folder under TMPDIR, whatever its characters: the option labkit builds is
    read back by Spark's own launcher (CommandBuilderUtils.parseOptionString, in the running JVM) as exactly
    the options meant, the folder intact (a space split it; a quote would pair up). A character beyond the
    Basic Multilingual Plane the launcher mangles (it reads UTF-16 units): then no option, the JVM's /tmp."""
    from labkit.data.spark import _tmpdir_option

    jvm, gateway = spark._jvm, spark.sparkContext._gateway
    utils = jvm.java.lang.Class.forName("org.apache.spark.launcher.CommandBuilderUtils")
    types = gateway.new_array(jvm.java.lang.Class, 1)
    types[0] = jvm.java.lang.Class.forName("java.lang.String")
    parse = utils.getDeclaredMethod("parseOptionString", types)
    parse.setAccessible(True)
    args = gateway.new_array(jvm.java.lang.Object, 1)
    args[0] = f"-Da=1 {_tmpdir_option(text)}-XX:-UsePerfData"
    parsed = list(parse.invoke(None, args))
    if any(ord(c) > 0xFFFF for c in text):
        assert parsed == ["-Da=1", "-XX:-UsePerfData"]
    else:
        assert parsed == ["-Da=1", f"-Djava.io.tmpdir={text}", "-XX:-UsePerfData"]


SPARK_LAB = """\
lab: names
sources:
  customers: {format: spark, path: data/customers.parquet}
  outcomes: {format: spark, path: data/outcomes.csv}
functions: [sales]
channels: [email]
"""


# ~1.5 CPU-s an example (a lab, an engine, three Spark reads): few examples, over a small alphabet of
# patterns, and always the one name that holds every character Hadoop reads as a pattern
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.text(st.sampled_from("ab1 *?[]{}\\%#',ü"), min_size=1, max_size=8).filter(lambda n: n.strip("."))
)
@example(name="a*?[]{}\\ü")
def test_a_lab_folder_of_any_name_reads_its_own_files_on_spark(spark, tmp_path_factory, name):
    """Spark reads a path as a Hadoop glob (``*``, ``?``, ``[``, ``{``, ``\\``): a lab in ``pilots?2`` could not
    be read at all (a URI error). Whatever the lab's folder is called, its parquet and CSV sources and the
    assignment labkit wrote are read from its own files, with a sibling folder beside it that the name, read
    as a pattern, also matches and that holds other rows (DuckDB: tests/reliability/test_security.py). Not
    ``:`` beside a pattern character (``:{``): Hadoop's paths cannot hold both, and Spark's error is labkit's
    one line ("source 'customers': Spark: the query failed: … URISyntaxException …")."""
    from labkit.data.sources import Engine

    rows = {"customers": 5, "outcomes": 4, "assignment": 3}

    def write(root: Path, extra: int) -> None:
        (root / "configs").mkdir(parents=True)
        (root / "configs" / "lab.yaml").write_text(SPARK_LAB)
        (root / "data").mkdir()
        (root / "results" / "p").mkdir(parents=True)
        ids = lambda n: [f"C{i}" for i in range(n + extra)]  # noqa: E731
        pq.write_table(pa.table({"customer_id": ids(rows["customers"])}), root / "data" / "customers.parquet")
        (root / "data" / "outcomes.csv").write_text(
            "customer_id\n" + "".join(f"{i}\n" for i in ids(rows["outcomes"]))
        )
        pq.write_table(
            pa.table({"customer_id": ids(rows["assignment"])}), root / "results/p/assignment.parquet"
        )

    parent = tmp_path_factory.mktemp("names")
    root = parent / name
    write(root, 0)
    decoy = parent / name.replace("?", "Q").replace("*", "many")  # what the name matches as a pattern
    if decoy != root:
        write(decoy, 10)
    engine = Engine.for_lab(labkit.load_lab(root))
    try:
        counts = {
            "customers": engine.table("customers").count().execute(),
            "outcomes": engine.table("outcomes").count().execute(),
            "assignment": engine.read_file(root / "results/p/assignment.parquet", "a").count().execute(),
        }
    finally:
        engine.close()
    assert counts == rows


def test_one_pilot_on_duckdb_postgres_and_spark(tmp_path, postgres_server, spark, monkeypatch, capsys):  # noqa: F811
    """The same bytes drawn and the same numbers everywhere; on Spark the analysis is the command line's
    (``labkit analyze --json``: only the JSON on stdout, nothing on stderr)."""
    tables = crm_tables()
    url = postgres_server.create_database("crm_spark")
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        load_postgres(con, tables)
    monkeypatch.setenv(URL_ENV, url)

    labs = {kind: write_lab(tmp_path / kind, kind, tables) for kind in ("files", "postgres", "spark")}
    # Spark: events from the session's catalog (a table), the rest from parquet paths
    spark.read.parquet(str(labs["spark"] / "data" / "events.parquet")).createOrReplaceTempView("crm_events")
    lab_file = labs["spark"] / "configs" / "lab.yaml"
    lab_file.write_text(
        lab_file.read_text().replace(
            "events: {format: spark, path: data/events.parquet", "events: {format: spark, table: crm_events"
        )
    )
    pilots = {kind: labkit.load_pilot(PILOT_ID, lab=labkit.load_lab(root)) for kind, root in labs.items()}

    drawn = {kind: assign(pilot) for kind, pilot in pilots.items()}
    reference = drawn["files"].path.read_bytes()
    for kind in ("postgres", "spark"):
        assert drawn[kind].path.read_bytes() == reference, kind
        assert drawn[kind].meta["strata"] == drawn["files"].meta["strata"]
        assert drawn[kind].eligible == drawn["files"].eligible
    assert drawn["files"].meta["capped"]

    want = analysis_numbers(pilots["files"])
    assert_same_numbers(analysis_numbers(pilots["postgres"]), want, "postgres")
    fetched = Fetched(monkeypatch)
    capsys.readouterr()
    assert main(["--lab", str(labs["spark"]), "analyze", PILOT_ID, "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    got = json.loads(out)
    got.pop("meta")
    assert_same_numbers(got, want, "spark")
    assert {m["metric"] for m in got["metrics"]} >= {
        "churned",
        "spend",
        "replies",
        "orders_per_visit",
        "spend_p50",
    }
    # per-arm rows only (2 arms), the catalog table's digest (1 row), and the quantile's values
    big = [n for n in fetched.rows if n > 2]
    assert len(big) == 1 and big[0] <= drawn["spark"].assigned, fetched.rows
    assert not (labs["spark"] / "spark-warehouse").exists() and not (labs["spark"] / "metastore_db").exists()


def test_a_catalog_tables_digest_with_sparks_conv_is_the_portable_formula(tmp_path, spark):
    """A Spark catalog table's digest parses its hex slices with Spark's ``conv`` (the portable form, one
    ``instr`` a digit, took 37 s for 10M events against 16 s): the same numbers."""
    from labkit.data.backends import digest_expr
    from labkit.data.spark import connect_spark

    path = tmp_path / "events.parquet"
    pq.write_table(crm_tables()["events"], path)
    spark.read.parquet(str(path)).createOrReplaceTempView("digest_events")
    con = connect_spark()
    table = con.table("digest_events")
    fast, portable = (
        con.to_pyarrow(digest_expr("spark", table, portable=p)).to_pylist()[0] for p in (False, True)
    )
    assert fast == portable and fast["rows"] == crm_tables()["events"].num_rows and fast["s0"] > 0
    assert "conv(" in str(con.compile(digest_expr("spark", table))).lower()


def test_spark_analyses_in_utc_even_from_a_session_in_another_zone(tmp_path, spark):
    """RELIABILITY.md case 36 on Spark: a session set to UTC+14 (a notebook's, say) is put to UTC by the
    engine, and the events of tests/tz_lab.py (TIMESTAMPTZ and naive parquet) give the numbers of DuckDB."""
    import tz_lab

    files = tz_lab.write_lab(tmp_path / "files", events_=tz_lab.TABLE_SOURCES)
    on_spark = tz_lab.write_lab(tmp_path / "spark", "spark")
    pilots = {
        k: labkit.load_pilot("p", lab=labkit.load_lab(r)) for k, r in (("files", files), ("spark", on_spark))
    }
    assign(pilots["files"])  # the draw on Spark is test_one_pilot_on_duckdb_postgres_and_spark's
    shutil.copytree(files / "results", on_spark / "results")
    spark.conf.set("spark.sql.session.timeZone", "Pacific/Kiritimati")
    got = analysis_numbers(pilots["spark"])
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert_same_numbers(got, analysis_numbers(pilots["files"]), "spark")
    ref = tz_lab.reference_counts(on_spark)
    metrics = {m["metric"]: m for m in got["metrics"]}
    for source in tz_lab.TABLE_SOURCES:
        m = metrics[f"{source}_count"]
        assert (m["mean_control"], m["mean_treatment"]) == pytest.approx((ref["control"], ref["fast"]))


# --------------------------------------------------------------------------------------------------
# issue #16 on Spark: cluster-randomised pilots and the effect over time

REPLIES = {"name": "replies", "type": "mean", "source": "events", "aggregate": "count", "window_days": 30,
           "event": {"column": "event_type", "equals": "reply"}}  # fmt: skip
CLUSTER_PILOT = pilot_yaml(
    id="cl", title="Community replies",
    **{
        "hypothesis.metric": "replies", "hypothesis.direction": "increase",
        "cohort.unit_column": "community", "cohort.stratify_by": ["region"], "cohort.max_size": 1500,
        "cohort.salt": "cl-1",
        "metrics": [
            {"name": "churned", "type": "proportion", "source": "outcomes", "column": "churned"},
            {"name": "spend", "type": "mean", "source": "outcomes", "column": "spend",
             "covariate": "pre_spend"},
            REPLIES,
            {"name": "orders_per_visit", "type": "ratio",
             "numerator": {"source": "outcomes", "column": "orders"},
             "denominator": {"source": "outcomes", "column": "visits"}},
        ],
    },
)  # fmt: skip
SATURATION_PILOT = pilot_yaml(  # its own path: the direct effect and the spillover (two metrics: Spark is slow)
    id="sat", title="Community replies, saturation",
    **{
        "hypothesis.metric": "replies", "hypothesis.direction": "increase",
        "cohort.unit_column": "community", "cohort.saturation": [0, 0.5, 1], "cohort.max_size": 1500,
        "cohort.salt": "cl-1", "metrics.1": REPLIES,
    },
)  # fmt: skip
UP = {"hypothesis.direction": "increase"}
OVER_TIME_PILOTS = {  # the three aggregates that add up day by day; a confidence sequence and a look
    "ot-count": pilot_yaml(id="ot-count", **UP, **{"hypothesis.metric": "replies",
                                                   "analysis": {"sequential": True}}),
    "ot-any": pilot_yaml(id="ot-any", **UP, **{"hypothesis.metric": "replied",
                                               "metrics.1": {**REPLIES, "name": "replied",
                                                             "type": "proportion", "aggregate": "any"}}),
    "ot-sum": pilot_yaml(id="ot-sum", **UP, **{"hypothesis.metric": "reply_value",
                                               "metrics.1": {**REPLIES, "name": "reply_value",
                                                             "column": "value", "aggregate": "sum"}}),
}  # fmt: skip


def crm_with_communities(seed: int = 16) -> dict[str, pa.Table]:
    """The CRM of tests/backend_lab.py, its customers in 90 communities of unequal sizes (2 % in none)."""
    tables = crm_tables()
    customers = tables["customers"]
    rng = np.random.default_rng(seed)
    sizes = rng.gamma(2.0, 1.0, 90)
    community = rng.choice(90, customers.num_rows, p=sizes / sizes.sum())
    values = [None if rng.random() < 0.02 else f"com-{g:03d}" for g in community]
    tables["customers"] = customers.append_column("community", pa.array(values, pa.string()))
    return tables


def duckdb_and_spark_labs(tmp_path, pilots: dict[str, str]) -> dict[str, dict]:
    """{kind: {pilot id: Pilot}} for a lab of files and a Spark lab of the same CRM and pilot files."""
    tables = crm_with_communities()
    out = {}
    for kind in ("files", "spark"):
        root = write_lab(tmp_path / kind, kind, tables)
        for pid, text in pilots.items():
            (root / "experiments" / f"{pid}.yaml").write_text(text)
        lab = labkit.load_lab(root)
        out[kind] = {pid: labkit.load_pilot(pid, lab=lab) for pid in pilots}
    return out


def numbers(pilot, **kw) -> dict:
    data = labkit.analyze(pilot, **kw).to_dict()
    data.pop("meta")
    return data


def test_a_cluster_pilot_draws_and_analyses_on_spark_as_on_duckdb(tmp_path, spark):
    """A stratified, capped cluster draw and a randomised-saturation draw write the same bytes on Spark,
    and the cluster analysis (CR2 on cluster totals, CUPED, ratio, ICC, design effect, spillover, and the
    primary metric's cluster curve) gives DuckDB's numbers to 1e-9 relative."""
    pilots = duckdb_and_spark_labs(tmp_path, {"cl": CLUSTER_PILOT, "sat": SATURATION_PILOT})
    for pid in ("cl", "sat"):
        drawn = {kind: assign(p[pid]) for kind, p in pilots.items()}
        assert drawn["spark"].path.read_bytes() == drawn["files"].path.read_bytes(), pid
        assert drawn["spark"].meta["clusters"] == drawn["files"].meta["clusters"], pid
        assert drawn["spark"].meta["strata"] == drawn["files"].meta["strata"], pid
        want = numbers(pilots["files"][pid], over_time=True)
        assert_same_numbers(numbers(pilots["spark"][pid], over_time=True), want, f"spark {pid}")
        rows = {m["metric"]: m for m in want["metrics"]}
        assert set(rows) == (
            {"churned", "spend", "replies", "orders_per_visit"} if pid == "cl" else {"churned", "replies"}
        )
        assert min(rows["churned"]["n_clusters_control"], rows["churned"]["n_clusters_treatment"]) >= 20, pid
        assert rows["churned"]["design_effect"] is not None, pid
        assert len(want["over_time"]) == 30, pid  # the cluster curve (labkit.over_time) compared too
    assert want["spillover"] and want["spillover"][0]["n_clusters"] >= 60


def test_the_effect_over_time_on_spark_equals_duckdb(tmp_path, spark):
    """The daily curve of a count (confidence sequence), of an any (fixed-horizon, stopped at a look) and
    of a sum: Spark's rows equal DuckDB's."""
    pilots = duckdb_and_spark_labs(tmp_path, OVER_TIME_PILOTS)
    for pid in OVER_TIME_PILOTS:
        # a draw per customer on Spark is test_one_pilot_on_duckdb_postgres_and_spark's: DuckDB's is copied
        assign(pilots["files"][pid])
        shutil.copytree(pilots["files"][pid].results_dir, pilots["spark"][pid].results_dir)
        look = {"as_of": "2026-11-20"} if pid == "ot-any" else {}
        want = numbers(pilots["files"][pid], over_time=True, **look)
        assert_same_numbers(numbers(pilots["spark"][pid], over_time=True, **look), want, f"spark {pid}")
        days = {r["day"] for r in want["over_time"]}
        assert days == set(range(1, 20 if look else 31)), pid
        sequential = pid == "ot-count"
        assert want["over_time_interval"] == ("confidence sequence" if sequential else "fixed-horizon"), pid
