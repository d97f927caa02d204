"""`labkit assign` over N eligible customers vs one DuckDB query that hashes and buckets the same ids.

labkit draws ``bench-assign`` (50/50, no cap, no strata) afresh each repetition: id checks, the eligible
count, the keyed SHA-256 ranking and the streamed, fsynced Parquet write with its metadata. The baseline
is the same draw written as one ``COPY (...) TO`` statement: SHA-256 of salt, pilot and id, ``ROW_NUMBER``
over the hash, the largest-remainder count of control (n // 2, plus the odd customer when control wins the
tie: the smaller SHA-256 of the stratum key, from the smallest id, and the arm), the arm by rank, sorted by
id, into zstd Parquet. Both
run in fresh interpreters with imports warmed; the parent then checks that both files give every
customer the same arm (``same_arms``), so the baseline is doing the same work.
"""

from __future__ import annotations

import shutil

from benchmarks import data
from benchmarks.common import PEAK_RSS, Ctx, best_of, ratio

LABKIT = """
import json, shutil, time
import labkit, labkit.assignment, labkit.cohort, labkit.data.sources, ibis, pyarrow.parquet
ibis.duckdb.connect().disconnect()
shutil.rmtree("results/bench-assign", ignore_errors=True)
t = time.perf_counter()
lab = labkit.load_lab("configs/lab.yaml")
a = labkit.assign(labkit.load_pilot("bench-assign", lab=lab))
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rss_mb": PEAK_RSS, "counts": a.counts}))
""".replace("PEAK_RSS", PEAK_RSS)

BASELINE = """
import json, time
import duckdb
duckdb.connect().close()
t = time.perf_counter()
con = duckdb.connect()
con.execute('SET enable_progress_bar=false')  # DuckDB prints its bar to stdout, which carries the JSON
con.execute('''
  COPY (
    WITH h AS (
      SELECT customer_id, customer_id::VARCHAR AS k,
             sha256('bench-assign' || chr(31) || 'bench-assign' || chr(31) || customer_id::VARCHAR) AS h
      FROM 'data/customers.parquet'),
    s AS (
      SELECT count(*) AS n,
             sha256('stratum' || chr(31) || 'bench-assign' || chr(31) || 'bench-assign' || chr(31) || min(k)) AS key
      FROM h),
    c AS (
      SELECT n // 2 + CASE WHEN n % 2 = 1
                            AND sha256(key || chr(31) || 'control') < sha256(key || chr(31) || 'treatment')
                           THEN 1 ELSE 0 END AS c0
      FROM s),
    r AS (SELECT customer_id, row_number() OVER (ORDER BY h, k) - 1 AS r FROM h)
    SELECT customer_id,
           CASE WHEN r < (SELECT c0 FROM c) THEN 'control' ELSE 'treatment' END AS arm,
           'all' AS stratum, TIMESTAMPTZ '2026-01-01 00:00:00+00' AS assigned_at
    FROM r ORDER BY customer_id
  ) TO 'results/baseline-assignment.parquet' (FORMAT parquet, COMPRESSION zstd)''')
n = con.execute("SELECT count(*) FROM 'results/baseline-assignment.parquet'").fetchall()[0][0]
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rss_mb": PEAK_RSS, "rows": n}))
""".replace("PEAK_RSS", PEAK_RSS)


def sizes(ctx: Ctx) -> list[int]:
    return {"tiny": [2_000], "quick": [100_000], "full": [1_000_000, 10_000_000]}[ctx.mode]


def _same_arms(root) -> bool:
    import duckdb

    a, b = (
        root / "results" / "bench-assign" / "assignment.parquet",
        root / "results" / "baseline-assignment.parquet",
    )
    con = duckdb.connect()
    con.execute("SET enable_progress_bar=false")
    differ, total = con.execute(
        f"SELECT count(*) FILTER (WHERE x.arm IS DISTINCT FROM y.arm), count(*) "
        f"FROM '{a}' x FULL JOIN '{b}' y USING (customer_id)"
    ).fetchall()[0]
    con.close()
    return differ == 0 and total > 0


def run(ctx: Ctx) -> list[dict]:
    rows = []
    for n in sizes(ctx):
        root = data.build(ctx, n)
        ctx.say(f"assign: {n:,} customers")
        lab = best_of(LABKIT, root, ctx.repeat)
        base = best_of(BASELINE, root, ctx.repeat)
        same = _same_arms(root)
        shutil.rmtree(root / "results" / "bench-assign", ignore_errors=True)
        (root / "results" / "baseline-assignment.parquet").unlink(missing_ok=True)
        rows.append(
            {
                "benchmark": "assign",
                "customers": n,
                "labkit_s": round(lab["seconds"], 3),
                "baseline_s": round(base["seconds"], 3),
                "ratio": ratio(lab["seconds"], base["seconds"]),
                "target_ratio": 2.0,
                "labkit_rss_mb": round(lab["rss_mb"]),
                "baseline_rss_mb": round(base["rss_mb"]),
                "same_arms": same,
                "labkit_all_s": lab["all"],
                "baseline_all_s": base["all"],
            }
        )
    return rows
