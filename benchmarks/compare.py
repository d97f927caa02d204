"""`labkit compare` over stores of 500 and 5,000 recorded runs (10 runs per pilot), on the default sqlite store.

The store is grown from real runs: the demo lab copy records one pilot with `labkit run` (if its store
holds no finished run yet), then each store ``results/bench/labs/compare-<N>/`` is that store with its
finished runs cloned row by row in SQL (runs, tags, params, metrics) under new pilot ids — 10 runs per
pilot, the newest one ``labkit.latest`` — which takes seconds where recording 5,000 runs through MLflow
would take many minutes. Timed: `labkit compare --format json` as a whole process (best of
``ctx.repeat``); the baseline is a fresh process importing MLflow and running the same ``search_runs``
for the latest runs, which any comparison must do.
"""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from pathlib import Path

from benchmarks import demo_lab
from benchmarks.common import LABKIT, PYTHON, Ctx, ratio, reset, time_command, timed

RUNS_PER_PILOT = 10
TABLES = ("tags", "params", "metrics", "latest_metrics")

BASELINE = """
import os
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
from mlflow.tracking import MlflowClient
c = MlflowClient("sqlite:///results/mlflow.db")
e = c.get_experiment_by_name("social-engagement-pilots")
runs = c.search_runs([e.experiment_id], "tags.`labkit.latest` = 'true' and attributes.status = 'FINISHED'",
                     max_results=50000)
print(len(runs))
"""


def sizes(ctx: Ctx) -> list[int]:
    return {"tiny": [], "quick": [100], "full": [500, 5_000]}[ctx.mode]


def _seeded(ctx: Ctx) -> Path:
    root = demo_lab.build(ctx)
    db = root / "results" / "mlflow.db"
    if not db.is_file() or not _finished(db):
        ctx.say("compare: recording one real run to clone")
        time_command([*LABKIT, "run", "service-twitter-fast-reply", "--workers", "1"], root)
    return root


def _finished(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute(
            "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE r.status = 'FINISHED' AND t.key = 'labkit.latest' AND t.value = 'true'"
        )]  # fmt: skip
    finally:
        con.close()


def _grow(src_root: Path, dest: Path, n: int) -> None:
    """A copy of the demo store holding exactly ``n`` finished labkit runs, 10 per pilot."""
    reset(dest)
    (dest / "results").mkdir(parents=True)
    shutil.copytree(src_root / "configs", dest / "configs")
    (dest / "experiments").mkdir()
    db = dest / "results" / "mlflow.db"
    shutil.copy(src_root / "results" / "mlflow.db", db)
    con = sqlite3.connect(db)
    cols = {t: [r[1] for r in con.execute(f"PRAGMA table_info({t})")] for t in ("runs", *TABLES)}
    templates = _finished(db)
    keep = set(templates)
    # Only the template runs stay; every other run (and its rows) goes, so the store holds exactly n.
    others = [r[0] for r in con.execute("SELECT run_uuid FROM runs") if r[0] not in keep]
    for table in (*TABLES, "runs"):
        con.executemany(f"DELETE FROM {table} WHERE run_uuid = ?", [(r,) for r in others])
    con.execute("DELETE FROM input_tags")
    con.execute("DELETE FROM inputs")

    def clone(template: str, pilot: str, i: int, latest: bool) -> None:
        new = uuid.uuid4().hex
        sel = ", ".join(
            "?"
            if c == "run_uuid"
            else ("? AS name" if c == "name" else f"{c} + ?" if c.endswith("_time") else c)
            for c in cols["runs"]
        )
        params = []
        for c in cols["runs"]:
            if c == "run_uuid":
                params.append(new)
            elif c == "name":
                params.append(f"{pilot} {i}")
            elif c.endswith("_time"):
                params.append(i * 60_000)
        con.execute(
            f"INSERT INTO runs ({', '.join(cols['runs'])}) SELECT {sel} FROM runs WHERE run_uuid = ?",
            [*params, template],
        )
        for table in TABLES:
            sel = ", ".join("?" if c == "run_uuid" else c for c in cols[table])
            con.execute(
                f"INSERT INTO {table} ({', '.join(cols[table])}) SELECT {sel} FROM {table} WHERE run_uuid = ?",
                [new, template],
            )
        con.execute("UPDATE tags SET value = ? WHERE run_uuid = ? AND key = 'labkit.pilot'", [pilot, new])
        con.execute(
            "UPDATE tags SET value = ? WHERE run_uuid = ? AND key = 'labkit.run_key'", [f"{pilot}/{i}", new]
        )
        con.execute(
            "UPDATE tags SET value = ? WHERE run_uuid = ? AND key = 'labkit.latest'",
            ["true" if latest else "false", new],
        )

    for p in range(n // RUNS_PER_PILOT):
        template = templates[p % len(templates)]
        for i in range(RUNS_PER_PILOT):
            clone(template, f"bench-pilot-{p:05d}", i, latest=i == RUNS_PER_PILOT - 1)
    for table in (*TABLES, "runs"):
        con.executemany(f"DELETE FROM {table} WHERE run_uuid = ?", [(r,) for r in templates])
    con.commit()
    con.close()


def run(ctx: Ctx) -> list[dict]:
    if not sizes(ctx):
        return []
    src = _seeded(ctx)
    rows = []
    for n in sizes(ctx):
        dest = ctx.labs / f"compare-{n}-s{ctx.seed}"
        if not (dest / ".complete").is_file():
            ctx.say(f"compare: cloning runs into a {n:,}-run store")
            _grow(src, dest, n)
            (dest / ".complete").write_text("")
        ctx.say(f"compare: {n:,} runs")
        lab = timed([*LABKIT, "compare", "--format", "json"], dest, ctx.repeat)
        base = timed([PYTHON, "-c", BASELINE], dest, ctx.repeat)
        rows.append(
            {
                "benchmark": "compare",
                "runs": n,
                "pilots": n // RUNS_PER_PILOT,
                "labkit_s": round(lab["seconds"], 2),
                "baseline_s": round(base["seconds"], 2),
                "baseline": "mlflow import + search_runs",
                "ratio": ratio(lab["seconds"], base["seconds"]),
                "target_s": 2.0 if n == 500 else None,
                "met": lab["seconds"] < 2.0 if n == 500 else None,
                "labkit_all_s": lab["all"],
            }
        )
    return rows
