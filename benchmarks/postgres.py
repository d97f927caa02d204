"""The analysis pilot, and the draw, on a real PostgreSQL CRM: whole `labkit` commands against DuckDB's.

A PostgreSQL server is started on 127.0.0.1 for the section (tests/pg_server.py's ``start_server``: initdb
and pg_ctl, stopped by pid at the end), and the N-customer lab's three tables (customers, outcomes and
events, ~10 events a customer) are loaded with COPY. The lab ``results/bench/labs/postgres-n<N>/`` names
them as ``format: postgres`` sources. ``labkit assign bench-assign`` (uncapped) and ``labkit analyze
bench-assign --json`` run as users run them, each a whole process, against the same two commands in the
DuckDB lab of the same files. ``same_bytes``: the two assignment files are identical; ``same_numbers``:
both analyses give the same decision and every metric's effect and p-value to 1e-9.

Found with it (2026-12-07): at 1M the analyze failed after the 300 s statement timeout — the data digest
of the 10M-row events table computed each row's SHA-256 32 times (``labkit.data.backends.pg_digest_sql``).
Needs PostgreSQL's server binaries (``make test`` installs them, tools/system-deps); without them the
section fails saying so, and the other sections keep their figures.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks import data
from benchmarks.common import PYTHON, REPO, Ctx, reset, same_drawn_files, time_command, versus

URL_ENV = "BENCH_CRM_URL"
LAB = f"""\
lab: bench-postgres
tracking_uri: sqlite:///results/mlflow.db
sources:
  customers: {{format: postgres, url_env: {URL_ENV}, table: customers}}
  outcomes: {{format: postgres, url_env: {URL_ENV}, table: outcomes}}
  events: {{format: postgres, url_env: {URL_ENV}, table: events, timestamp: ts}}
functions: [sales, marketing, service, pr]
channels: [email]
"""
TABLES = {
    "customers": "customer_id bigint PRIMARY KEY, segment text",
    "outcomes": "customer_id bigint, converted bigint, spend double precision, pre_spend double precision, "
    "tickets bigint, contacts bigint",
    "events": "customer_id bigint, ts timestamptz, event_type text",
}


def sizes(ctx: Ctx) -> list[int]:
    return {"tiny": [], "quick": [100_000], "full": [1_000_000]}[ctx.mode]


def _load(url: str, src) -> None:
    """The lab's Parquet files as PostgreSQL tables (COPY of DuckDB's CSV export), analysed."""
    import duckdb
    import psycopg

    con = duckdb.connect()
    with tempfile.TemporaryDirectory() as folder, psycopg.connect(url, autocommit=True) as pg:
        for name, columns in TABLES.items():
            pg.execute(f"CREATE TABLE {name} ({columns})")
            csv = Path(folder) / f"{name}.csv"
            con.execute(
                f"COPY (SELECT * FROM '{src / 'data' / f'{name}.parquet'}') TO '{csv}' (HEADER false)"
            )
            with pg.cursor() as cur, cur.copy(f"COPY {name} FROM STDIN (FORMAT csv)") as copy:
                with open(csv, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        copy.write(chunk)
            csv.unlink()
        pg.execute("ANALYZE")
    con.close()


def _commands(root, env: dict) -> tuple[dict, dict, dict]:
    """`labkit assign` then `labkit analyze --json` in ``root``, whole processes: their times and the JSON."""
    shutil.rmtree(root / "results" / "bench-assign", ignore_errors=True)
    labkit = [PYTHON, "-m", "labkit.cli"]
    drawn = time_command([*labkit, "assign", "bench-assign"], root, env=env)
    analysed = time_command([*labkit, "analyze", "bench-assign", "--json"], root, env=env)
    return drawn, analysed, json.loads(analysed["stdout"])


def _same_numbers(a: dict, b: dict) -> bool:
    if a["decision"] != b["decision"] or len(a["metrics"]) != len(b["metrics"]):
        return False
    for x, y in zip(a["metrics"], b["metrics"]):
        for key in ("effect", "p_value"):
            if (x.get(key) is None) != (y.get(key) is None):
                return False
            if x.get(key) is not None and abs(x[key] - y[key]) > 1e-9 * max(1.0, abs(y[key])):
                return False
    return True


def run(ctx: Ctx) -> list[dict]:
    if not sizes(ctx):
        return []
    sys.path.insert(0, str(REPO / "tests"))
    from pg_server import _stop, start_server

    server = start_server()
    rows = []
    try:
        for n in sizes(ctx):
            src = data.build(ctx, n)
            ctx.say(f"postgres: loading {n:,} customers")
            database = f"crm_{n}"
            url = server.create_database(database)
            _load(url, src)
            root = ctx.labs / f"postgres-n{n}-s{ctx.seed}"
            reset(root)
            (root / "configs").mkdir(parents=True)
            (root / "configs" / "lab.yaml").write_text(LAB)
            shutil.copytree(src / "experiments", root / "experiments")
            env = {URL_ENV: url}
            ctx.say(f"postgres: assign and analyze {n:,} customers")
            pg_draw, pg_analysis, pg_json = _commands(root, env)
            duck_draw, duck_analysis, duck_json = _commands(src, {})
            same_bytes = same_drawn_files(root, src)
            same_numbers = _same_numbers(pg_json, duck_json)
            baseline = "the same labkit command on DuckDB (the same files), whole process"
            rows += [
                {**versus("assign on PostgreSQL", n, pg_draw, duck_draw, baseline), "same_bytes": same_bytes,
                 "met": same_bytes},
                {**versus("analyze on PostgreSQL", n, pg_analysis, duck_analysis, baseline),
                 "same_numbers": same_numbers, "met": same_numbers},
            ]  # fmt: skip
    finally:
        _stop(server.pid)
        shutil.rmtree(server.folder, ignore_errors=True)
    return rows
