"""PostgreSQL as a lab source, against a real server on 127.0.0.1 (tests/pg_server.py).

The same CRM (tests/backend_lab.py) as parquet files and as PostgreSQL tables gives the same assignment,
byte for byte, and the same analysis; filters, aggregates and the draw run in the database, with the
assignment uploaded as a TEMP table; the connection URL comes from the environment and never shows up in
a message, an output or a file; a wrong password, a server that is down, a statement timeout and a
read-only session each give one clear line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from backend_lab import (
    HOSTILE,
    PILOT_ID,
    URL_ENV,
    Fetched,
    analysis_numbers,
    assert_same_numbers,
    crm_tables,
    load_postgres,
    write_lab,
)
from pg_server import free_port, postgres_server  # noqa: F401 -- the session fixture

import labkit
from labkit.assignment import assign
from labkit.cli import main
from labkit.cohort import apply_where
from labkit.data.sources import Engine
from labkit.errors import DataError, LabkitError
from labkit.planning import plan
from labkit.spec import Filter

from conftest import pilot_yaml

REPO = Path(__file__).resolve().parents[2]
CANARY = Path("/tmp/labkit-canary-pwn")


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def tables():
    return crm_tables()


@pytest.fixture(scope="module")
def crm_url(postgres_server, tables):  # noqa: F811
    """The CRM loaded into a fresh database of the session's server; its URL (with the password)."""
    url = postgres_server.create_database("crm")
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        load_postgres(con, tables)
        con.execute(
            "CREATE VIEW slow_customers AS SELECT c.* FROM customers c, LATERAL (SELECT pg_sleep(2)) s LIMIT 5"
        )
    return url


@pytest.fixture
def crm_env(crm_url, monkeypatch):
    monkeypatch.setenv(URL_ENV, crm_url)
    monkeypatch.delenv("LABKIT_PG_STATEMENT_TIMEOUT", raising=False)
    return crm_url


def crm_state(url: str) -> dict:
    """Every table of the CRM's public schema with its row count and an md5 of its rows."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        names = [
            r[0]
            for r in con.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
            ).fetchall()
        ]
        state = {}
        for name in names:
            count, digest = con.execute(
                f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM \"{name}\" t"
            ).fetchone()
            state[name] = (count, digest)
        return state


# --------------------------------------------------------------------------------------------------
# the same pilot on files and on PostgreSQL


def test_the_same_crm_in_postgres_gives_the_same_assignment_and_analysis(
    tmp_path, tables, crm_env, monkeypatch
):
    files = write_lab(tmp_path / "files", "files", tables)
    pg = write_lab(tmp_path / "pg", "postgres", tables)
    before = crm_state(crm_env)

    pilot_f = labkit.load_pilot(PILOT_ID, lab=labkit.load_lab(files))
    pilot_p = labkit.load_pilot(PILOT_ID, lab=labkit.load_lab(pg))
    a_f, a_p = assign(pilot_f), assign(pilot_p)

    # the same customers, arms, strata and bytes
    assert a_p.path.read_bytes() == a_f.path.read_bytes()
    assert a_p.eligible == a_f.eligible and a_p.counts == a_f.counts
    assert a_f.meta["capped"] and a_f.eligible > a_f.assigned  # the cap was exercised
    for key in ("strata", "counts", "eligible", "assigned", "parquet_sha256", "weights", "id_type"):
        assert a_p.meta[key] == a_f.meta[key], key

    want = analysis_numbers(pilot_f)  # before the spy: DuckDB's backend is guarded (and spied) too
    fetched = Fetched(monkeypatch)
    got = analysis_numbers(pilot_p)
    assert_same_numbers(got, want)
    assert {m["metric"] for m in got["metrics"]} >= {
        "churned",
        "spend",
        "replies",
        "orders_per_visit",
        "spend_p50",
    }
    # every query returned per-arm rows (two arms), except the quantile's values and the digests' one row
    big = [n for n in fetched.rows if n > 2]
    assert len(big) == 1 and big[0] <= a_p.assigned, fetched.rows

    plan_p = plan(pilot_p).to_dict()
    plan_f = plan(pilot_f).to_dict()
    assert_same_numbers(plan_p, plan_f, "plan")
    assert crm_state(crm_env) == before  # nothing written to the CRM, no table left behind


def test_integer_ids_draw_the_same_arms_as_parquet(tmp_path, postgres_server, monkeypatch):  # noqa: F811
    """A second CRM with bigint ids, a cap and no strata: PostgreSQL writes the parquet's bytes."""
    n = 500
    customers = pa.table(
        {
            "customer_id": pa.array([(i * 7919) % 100_003 + 10**12 for i in range(n)], pa.int64()),
            "score": pa.array([float(i % 17) for i in range(n)], pa.float64()),
        }
    )
    outcomes = pa.table(
        {"customer_id": customers.column(0), "bought": pa.array([i % 3 == 0 for i in range(n)])}
    )
    url = postgres_server.create_database("crm_int")
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        con.execute("CREATE TABLE customers (customer_id bigint, score double precision)")
        con.execute("CREATE TABLE outcomes (customer_id bigint, bought boolean)")
        with con.cursor() as cur:
            with cur.copy("COPY customers FROM STDIN") as copy:
                for row in customers.to_pylist():
                    copy.write_row(list(row.values()))
            with cur.copy("COPY outcomes FROM STDIN") as copy:
                for row in outcomes.to_pylist():
                    copy.write_row(list(row.values()))
    monkeypatch.setenv("INT_CRM_URL", url)
    pilot_text = pilot_yaml(**{
        "id": "ints", "title": "Integer ids", "function": "sales", "channel": "email",
        "hypothesis": {"statement": "More buy.", "metric": "bought", "direction": "increase",
                       "mde": {"relative": 0.2}},
        "cohort.where": [{"column": "score", "op": "<", "value": 15.5}], "cohort.max_size": 300,
        "cohort.arms": {"control": 0.5, "a": 0.25, "b": 0.25},
        "metrics": [{"name": "bought", "type": "proportion", "source": "outcomes", "column": "bought"}],
    })  # fmt: skip
    results = {}
    for kind in ("files", "postgres"):
        root = tmp_path / kind
        (root / "configs").mkdir(parents=True)
        (root / "experiments").mkdir()
        if kind == "files":
            (root / "data").mkdir()
            pq.write_table(customers, root / "data" / "customers.parquet")
            pq.write_table(outcomes, root / "data" / "outcomes.parquet")
            sources = (
                "  customers: {format: parquet, path: data/customers.parquet}\n"
                "  outcomes: {format: parquet, path: data/outcomes.parquet}\n"
            )
        else:
            sources = (
                "  customers: {format: postgres, url_env: INT_CRM_URL, table: customers}\n"
                "  outcomes: {format: postgres, url_env: INT_CRM_URL, table: outcomes}\n"
            )
        (root / "configs" / "lab.yaml").write_text(
            f"lab: ints\nfunctions: [sales]\nchannels: [email]\nstages: [retention]\nsources:\n{sources}"
        )
        (root / "experiments" / "ints.yaml").write_text(pilot_text)
        pilot = labkit.load_pilot("ints", lab=labkit.load_lab(root))
        results[kind] = (assign(pilot), analysis_numbers(pilot))
    (af, nf), (ap, np_) = results["files"], results["postgres"]
    assert ap.path.read_bytes() == af.path.read_bytes()
    assert af.meta["capped"] and af.meta["id_type"] == ap.meta["id_type"] == "int64"
    assert_same_numbers(np_, nf)


def test_the_assignment_is_a_temp_table_in_the_session(tmp_path, tables, crm_env):
    pg = write_lab(tmp_path / "pg", "postgres", tables)
    pilot = labkit.load_pilot(PILOT_ID, lab=labkit.load_lab(pg))
    assign(pilot)
    from labkit.data.aggregate import units_table

    engine = Engine.for_lab(pilot.lab)
    try:
        units = units_table(engine, pilot)
        assert engine.kind == "postgres"
        assert int(engine.con.execute(units.count())) == 1200
        import psycopg

        with psycopg.connect(crm_env, autocommit=True) as admin:
            schemas = admin.execute(
                "SELECT schemaname FROM pg_tables WHERE tablename = %s",
                (f"_labkit_assignment_{PILOT_ID.replace('-', '_')}",),
            ).fetchall()
        assert len(schemas) == 1 and schemas[0][0].startswith("pg_temp")
    finally:
        engine.close()


def test_a_tables_digest_is_the_portable_formula_with_each_rows_sha256_computed_once(
    tmp_path, tables, crm_env
):
    """A PostgreSQL table's digest (the data fingerprint of every analysis) gives digest_expr's numbers —
    the portable formula, here run as it is — while the plan computes each row's SHA-256 once: inlined,
    the portable form computed it 32 times per row (48 s for 1M customers; 10M events ran past the
    statement timeout, so `labkit analyze` of a 1M pilot on PostgreSQL failed)."""
    from labkit.data.backends import digest_expr, pg_digest_sql, table_digest

    pg = write_lab(tmp_path / "pg", "postgres", tables)
    engine = Engine.for_lab(labkit.load_lab(pg))
    try:
        for name in tables:
            table = engine.table(name)
            portable = engine.con.to_pyarrow(digest_expr("postgres", table)).to_pylist()[0]
            got = table_digest(engine.con, "postgres", table)
            assert {k: int(v) for k, v in got.items()} == portable, name
            assert portable["rows"] == len(tables[name]) and portable["s0"] > 0, name
            with engine.con.raw_sql("EXPLAIN VERBOSE " + pg_digest_sql(engine.con, table)) as cur:
                plan = [row[0].strip() for row in cur.fetchall()]
            # the table's scan outputs the SHA-256 itself, once per row; the sums read it (EXPLAIN shows
            # them with the expression spelled out). Inlined, the scan output the columns alone.
            scan = next(i for i, line in enumerate(plan) if f"Scan on public.{name}" in line)
            assert plan[scan + 1].startswith("Output: sha256(") and plan[scan + 1].count("sha256(") == 1, plan
    finally:
        engine.close()


def test_filters_and_aggregates_compile_to_postgres_sql(tmp_path, tables, crm_env):
    pg = write_lab(tmp_path / "pg", "postgres", tables)
    pilot = labkit.load_pilot(PILOT_ID, lab=labkit.load_lab(pg))
    from labkit.cohort import eligible

    engine = Engine.for_lab(pilot.lab)
    try:
        sql = str(engine.con.compile(eligible(engine, pilot)))
    finally:
        engine.close()
    assert 'FROM "customers"' in sql and "WHERE" in sql
    assert "'''; DROP TABLE customers;--'" in sql  # the hostile value is one quoted literal


# --------------------------------------------------------------------------------------------------
# hostile values are literals; the CRM stays intact

HOSTILE_VALUES = [
    HOSTILE,
    "x' OR '1'='1",
    "$(touch /tmp/labkit-canary-pwn)",
    "a\nb",
    "consumer\u202e",
    "\\",
    "a\\b",
    '"); DROP TABLE customers; --',
    "%",
    "'; SELECT pg_sleep(5); --",
]


def test_hostile_filter_values_match_only_the_customers_who_have_them(tmp_path, tables, crm_env):
    CANARY.unlink(missing_ok=True)
    pg = write_lab(tmp_path / "pg", "postgres", tables)
    before = crm_state(crm_env)
    segments = tables["customers"].column("segment").to_pylist()
    ids = tables["customers"].column("customer_id").to_pylist()
    engine = Engine.for_lab(labkit.load_lab(pg))
    try:
        customers = engine.table("customers")
        for value in HOSTILE_VALUES:
            for op in ("==", "in", "!="):
                filters = [Filter(column="segment", op=op, value=[value] if op == "in" else value)]
                got = sorted(
                    engine.con.execute(apply_where(customers, filters, source="customers")).customer_id
                )
                if op == "!=":
                    want = sorted(i for i, s in zip(ids, segments) if s is not None and s != value)
                else:
                    want = sorted(i for i, s in zip(ids, segments) if s == value)
                assert got == want, (value, op)
    finally:
        engine.close()
    assert any(s in HOSTILE_VALUES for s in segments)  # some customers do hold a hostile value
    assert not CANARY.exists()
    assert crm_state(crm_env) == before


def test_sessions_are_read_only(tmp_path, tables, crm_env):
    pg = write_lab(tmp_path / "pg", "postgres", tables)
    before = crm_state(crm_env)
    engine = Engine.for_lab(labkit.load_lab(pg))
    try:
        engine.table("customers")
        with pytest.raises(DataError, match=r"the query tried to write, and labkit's sessions are read-only"):
            engine.con.raw_sql("DROP TABLE customers")
    finally:
        engine.close()
    assert crm_state(crm_env) == before


# --------------------------------------------------------------------------------------------------
# connection failures: one line, no secret, nothing written


def _bad_urls(url: str, password: str) -> dict[str, tuple[str, str]]:
    head, db = url.rsplit("/", 1)
    return {
        "wrong password": (url.replace(f":{password}@", ":not-the-password@"), "the password was refused"),
        "server down": (
            head.rsplit(":", 1)[0] + f":{free_port()}/{db}",
            r"cannot connect: the server does not answer or closed the connection \(is it running, and are "
            r"the host and port in \$CRM_DATABASE_URL right\?\)",
        ),
        "no such database": (f"{head}/nope", "the database in the URL does not exist"),
        "not a URL": ("host=127.0.0.1 password=hunter2", r"does not hold a PostgreSQL URL"),
    }


def _snapshot(folder: Path) -> dict:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("case", ["wrong password", "server down", "no such database", "not a URL"])
def test_a_failed_connection_is_one_line_without_the_secret(
    case,
    tmp_path,
    tables,
    crm_url,
    monkeypatch,
    capsys,
    postgres_server,  # noqa: F811
):
    bad, message = _bad_urls(crm_url, postgres_server.password)[case]
    fresh = write_lab(tmp_path / "fresh", "postgres", tables)  # never assigned
    drawn = write_lab(tmp_path / "drawn", "postgres", tables)  # assigned while the URL was right
    monkeypatch.setenv(URL_ENV, crm_url)
    assert main(["--lab", str(drawn), "assign", PILOT_ID]) == 0
    capsys.readouterr()
    before = _snapshot(drawn / "results")
    monkeypatch.setenv(URL_ENV, bad)
    runs = [
        (fresh, ["assign", PILOT_ID]),
        (fresh, ["plan", PILOT_ID]),
        (drawn, ["analyze", PILOT_ID, "--json"]),
        (drawn, ["assign", PILOT_ID, "--force"]),
        (drawn, ["plan", PILOT_ID, "--json"]),
    ]
    for lab, command in runs:
        assert main(["--lab", str(lab), *command]) == 1, command
        out, err = capsys.readouterr()
        assert out == ""
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("source 'customers': "), err
        assert re.search(message, err), err
        for secret in (bad, crm_url, postgres_server.password, "not-the-password", "hunter2"):
            assert secret not in err
    assert not (fresh / "results").exists()  # nothing drawn, nothing half-written
    assert _snapshot(drawn / "results") == before  # the drawn assignment untouched, nothing archived


def test_preflight_reports_a_bad_connection_before_anything_runs(tmp_path, tables, crm_url, monkeypatch):
    from labkit.data.sources import preflight

    pg = write_lab(tmp_path / "pg", "postgres", tables)
    pilot = labkit.load_pilot(PILOT_ID, lab=labkit.load_lab(pg))
    monkeypatch.setenv(URL_ENV, crm_url)
    preflight(pilot)
    monkeypatch.setenv(URL_ENV, crm_url.replace("@", "x@", 1))
    with pytest.raises(DataError, match=r"^source 'customers': .*the password was refused") as caught:
        preflight(pilot)
    assert crm_url not in str(caught.value) and caught.value.__suppress_context__
    files = write_lab(tmp_path / "files", "files", tables)
    preflight(labkit.load_pilot(PILOT_ID, lab=labkit.load_lab(files)))  # nothing to check for files
    assert not (pg / "results").exists() and not (files / "results").exists()


def test_a_lab_may_mix_files_and_postgres_when_each_pilot_keeps_to_one(tmp_path, tables, crm_env):
    """Plan after assign reads the assignment before the engine knows the pilot: it is uploaded then."""
    pure = write_lab(tmp_path / "pure", "postgres", tables)
    mixed = write_lab(tmp_path / "mixed", "postgres", tables)
    (mixed / "data").mkdir()
    pq.write_table(tables["outcomes"], mixed / "data" / "extract.parquet")
    lab_file = mixed / "configs" / "lab.yaml"
    lab_file.write_text(lab_file.read_text() + "  extract: {format: parquet, path: data/extract.parquet}\n")
    numbers = {}
    for root in (pure, mixed):
        pilot = labkit.load_pilot(PILOT_ID, lab=labkit.load_lab(root))
        assign(pilot)
        numbers[root.name] = (plan(pilot).to_dict(), analysis_numbers(pilot))
    assert_same_numbers(numbers["mixed"], numbers["pure"], "mixed")


def test_an_unset_variable_says_which_one(tmp_path, tables, monkeypatch, capsys):
    monkeypatch.delenv(URL_ENV, raising=False)
    pg = write_lab(tmp_path / "pg", "postgres", tables)
    assert main(["--lab", str(pg), "assign", PILOT_ID]) == 1
    err = capsys.readouterr().err
    assert err == (
        "source 'customers': the environment variable CRM_DATABASE_URL is not set; it must hold the database "
        "URL (postgresql://USER:PASSWORD@HOST:PORT/DATABASE), which never goes in a lab file\n"
    )


def test_a_statement_timeout_is_reported_without_the_url(tmp_path, tables, crm_env, monkeypatch, capsys):
    pg = write_lab(tmp_path / "pg", "postgres", tables)
    lab_file = pg / "configs" / "lab.yaml"
    lab_file.write_text(lab_file.read_text().replace("table: customers}", "table: slow_customers}"))
    monkeypatch.setenv("LABKIT_PG_STATEMENT_TIMEOUT", "0.5")
    assert main(["--lab", str(pg), "assign", PILOT_ID]) == 1
    err = capsys.readouterr().err
    assert err == (
        "source 'customers': PostgreSQL (the database in $CRM_DATABASE_URL): a query ran longer than the "
        "statement_timeout of 0.5 s and was cancelled (raise LABKIT_PG_STATEMENT_TIMEOUT, in seconds, for "
        "longer queries)\n"
    )
    assert crm_env not in err
    assert not (pg / "results").exists()


def test_a_missing_table_is_named(tmp_path, tables, crm_env):
    pg = write_lab(tmp_path / "pg", "postgres", tables)
    lab_file = pg / "configs" / "lab.yaml"
    lab_file.write_text(lab_file.read_text().replace("table: outcomes}", "table: no_such_table}"))
    engine = Engine.for_lab(labkit.load_lab(pg))
    try:
        with pytest.raises(
            DataError,
            match=r"source 'outcomes': no table 'no_such_table' in the PostgreSQL database of \$CRM_DATABASE_URL",
        ):
            engine.table("outcomes")
    finally:
        engine.close()


def test_a_pilot_cannot_mix_files_and_postgres(tmp_path, tables, crm_env):
    pg = write_lab(tmp_path / "pg", "postgres", tables)
    (pg / "data").mkdir()
    pq.write_table(tables["outcomes"], pg / "data" / "outcomes.parquet")
    lab_file = pg / "configs" / "lab.yaml"
    lab_file.write_text(
        lab_file.read_text().replace(
            f"outcomes: {{format: postgres, url_env: {URL_ENV}, table: outcomes}}",
            "outcomes: {format: parquet, path: data/outcomes.parquet}",
        )
    )
    pilot = labkit.load_pilot(PILOT_ID, lab=labkit.load_lab(pg))
    with pytest.raises(
        LabkitError,
        match=r"crm-pilot: its sources live in different engines \(customers, events in the PostgreSQL database of \$CRM_DATABASE_URL; outcomes in files \(DuckDB\)\)",
    ):
        assign(pilot)
    assert not (pg / "results").exists()


# --------------------------------------------------------------------------------------------------
# the URL never leaves the environment


# One interpreter runs the console script's ``main`` for each command in turn (a real process: what reaches
# its stdout and stderr file descriptors is checked, not only Python's streams), each command's output
# ended by a NUL line on both streams; one start instead of three saves two interpreters' imports.
COMMANDS = (
    "import json, sys\n"
    "from labkit.cli import main\n"
    "for command in json.loads(sys.argv[1]):\n"
    "    code = main(command)\n"
    "    print(f'\\x00{code}', flush=True)\n"
    "    print('\\x00', file=sys.stderr, flush=True)\n"
)


def test_the_connection_string_appears_in_no_output_or_file(tmp_path, tables, crm_env, postgres_server):  # noqa: F811
    pg = write_lab(tmp_path / "pg", "postgres", tables)
    env = {**os.environ, URL_ENV: crm_env, "LABKIT_DEBUG": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    commands = [["assign", PILOT_ID], ["analyze", PILOT_ID, "--json"], ["plan", PILOT_ID, "--json"]]
    done = subprocess.run(
        [sys.executable, "-c", COMMANDS, json.dumps([["--lab", str(pg), *c] for c in commands])],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    *stdouts, rest = re.split(r"\x00(-?\d+)\n", done.stdout)  # output, exit code, output, exit code, ...
    *stderrs, after = done.stderr.split("\x00\n")
    assert rest == after == "" and len(stdouts) == len(stderrs) * 2 == 2 * len(commands), done
    outputs = []
    for command, out, code, err in zip(commands, stdouts[::2], stdouts[1::2], stderrs):
        assert code == "0", (command, err)
        outputs += [out, err]
    result = json.loads(outputs[2])
    assert result["pilot"] == PILOT_ID and result["srm"]["counts"]
    secrets = [crm_env, postgres_server.password, crm_env.split("@")[0]]
    for text in outputs:
        for secret in secrets:
            assert secret not in text
    for file in (pg / "results").rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, file
