"""Every timestamp is UTC end to end, whatever the host's time zone (RELIABILITY.md case 36, issue 12.2).

The lab of tests/tz_lab.py has event times a few hours either side of the pilot's start and of its
window's end, in five shapes (parquet TIMESTAMPTZ in UTC and in another zone, parquet naive, a CSV with
mixed UTC offsets, a CSV of naive times). The pilot is assigned and analysed by the CLI's ``main`` in
subprocesses under ``TZ=UTC``, ``TZ=Pacific/Kiritimati`` (UTC+14) and ``TZ=Etc/GMT+12`` (UTC−12): the
assignment and ``analyze --json`` are byte-identical (``meta.analysed_at``, the wall clock, aside), and
the event counts equal a reference counted in plain Python on UTC instants. Before the fix, DuckDB's
cursors (``aggregate._fetch`` runs queries on them) kept the host's zone and the naive-event windows
moved by its offset. On PostgreSQL the session zone is UTC even when the client asks for another one
(``PGTZ``, or ``-c TimeZone=`` in the URL). Spark: tests/data/test_spark.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import tz_lab
from backend_lab import analysis_numbers, assert_same_numbers
from pg_server import postgres_server  # noqa: F401 -- the session fixture

ZONES = ("UTC", "Pacific/Kiritimati", "Etc/GMT+12")


# One interpreter per zone runs the console script's ``main`` twice (assign, then analyze --json): a
# zone is a process's, and one start instead of two halves the test's time.
BOTH = (
    "import sys\n"
    "from labkit.cli import main\n"
    "code = main(['assign', 'p'])\n"
    "print('\\x00', flush=True)\n"
    "sys.exit(code or main(['analyze', 'p', '--json']))\n"
)


def _labkit(root, zone: str) -> subprocess.Popen:
    env = {**os.environ, "TZ": zone}
    return subprocess.Popen(
        [sys.executable, "-c", BOTH],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _outputs(procs: dict) -> dict[str, tuple[str, str]]:
    """Each process's (assign, analyze) stdout, once every one of them has ended well (they run at the
    same time)."""
    out = {}
    for zone, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, (zone, stderr)
        assert stderr == "", (zone, stderr)
        assigned, analysed = stdout.split("\x00\n")
        out[zone] = assigned, analysed
    return out


def _clockless(text: str) -> str:
    """The --json text without the one field that differs between two runs: the wall clock."""
    return re.sub(r'"analysed_at": "[^"]*"', '"analysed_at": "-"', text)


@pytest.mark.slow
def test_one_pilot_gives_byte_identical_results_in_every_host_time_zone(tmp_path):
    labs = {z: tz_lab.write_lab(tmp_path / re.sub(r"\W", "_", z)) for z in ZONES}
    outputs = _outputs({z: _labkit(labs[z], z) for z in ZONES})
    assigned = {z: out[0] for z, out in outputs.items()}
    analysed = {z: out[1] for z, out in outputs.items()}

    def assignment(zone):
        folder = labs[zone] / "results" / "p"
        meta = json.loads((folder / "assignment.json").read_text())
        meta.pop("created_at")
        return (folder / "assignment.parquet").read_bytes(), meta

    utc = ZONES[0]
    for zone in ZONES[1:]:
        assert assigned[zone] == assigned[utc]
        assert assignment(zone) == assignment(utc)
        assert _clockless(analysed[zone]) == _clockless(analysed[utc]), zone

    result = json.loads(analysed[utc])
    assert result["meta"]["analysed_at"]
    metrics = {m["metric"]: m for m in result["metrics"]}
    assert set(metrics) >= {f"{s}_sum" for s in tz_lab.FILE_SOURCES}
    ref = tz_lab.reference_counts(labs[utc])
    for source in tz_lab.FILE_SOURCES:  # the sums' means are CUPED-adjusted: covered by the identity
        m = metrics[f"{source}_count"]
        got = (m["mean_control"], m["mean_treatment"])
        assert got == pytest.approx((ref["control"], ref["fast"]), rel=1e-12), source


def test_duckdb_sessions_and_their_cursors_run_in_utc_whatever_the_host_zone(tmp_path, monkeypatch):
    """The engine's connection and every cursor made from it (aggregate._fetch runs queries on cursors)."""
    from labkit.data.sources import Engine
    from labkit.lab import load_lab

    tz_lab.write_lab(tmp_path / "lab")
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    try:
        engine = Engine.for_lab(load_lab(tmp_path / "lab"))
        raw = engine.con.con
        naive = "SELECT TIMESTAMPTZ '2026-11-01 00:00:00+00'::TIMESTAMP"
        for con in (raw, raw.cursor()):
            assert con.execute("SELECT current_setting('TimeZone')").fetchone()[0] == "UTC"
            assert con.execute(naive).fetchone()[0] == dt.datetime(2026, 11, 1)
        engine.close()
    finally:
        monkeypatch.undo()
        time.tzset()


def test_postgres_sessions_run_in_utc_whatever_the_client_asks(tmp_path, postgres_server, monkeypatch):  # noqa: F811
    """PGTZ and a URL's own ``-c TimeZone=`` would set the session zone; labkit's session is UTC anyway,
    and the analysis on PostgreSQL (TIMESTAMPTZ and naive TIMESTAMP events) equals the one on files."""
    import psycopg

    from labkit import load_lab, load_pilot
    from labkit.assignment import assign
    from labkit.data.sources import Engine

    url = postgres_server.create_database("tz_crm")
    with psycopg.connect(url, autocommit=True) as con:
        tz_lab.load_postgres(con)
    files = tz_lab.write_lab(tmp_path / "files", events_=tz_lab.TABLE_SOURCES)
    pg = tz_lab.write_lab(tmp_path / "pg", "postgres")
    monkeypatch.setenv(tz_lab.URL_ENV, f"{url}?options=-c%20TimeZone%3DPacific/Kiritimati")
    monkeypatch.setenv("PGTZ", "Etc/GMT+12")

    engine = Engine.for_lab(load_lab(pg))
    try:
        engine.table("customers")
        assert engine.con.raw_sql("SHOW TimeZone").fetchone()[0] == "UTC"
    finally:
        engine.close()

    pilots = {name: load_pilot("p", lab=load_lab(root)) for name, root in (("files", files), ("pg", pg))}
    assign(pilots["files"])  # the draw on PostgreSQL is tests/data/test_postgres.py's; here the same units
    shutil.copytree(files / "results", pg / "results")
    result = analysis_numbers(pilots["pg"])
    assert_same_numbers(result, analysis_numbers(pilots["files"]), "postgres")
    ref = tz_lab.reference_counts(pg)
    got = {m["metric"]: m for m in result["metrics"]}
    for source in tz_lab.TABLE_SOURCES:
        m = got[f"{source}_count"]
        assert (m["mean_control"], m["mean_treatment"]) == pytest.approx((ref["control"], ref["fast"]))
