"""The analysis pilot, and the draw, through Spark local mode: time, and the rows that reach the driver.

The lab ``results/bench/labs/spark-n<N>/`` reads the same Parquet files as the N-customer DuckDB lab
(``format: spark`` sources under its ``data_root``) with the same pilot and assignment. In a fresh
process the Spark session is started first (``session_s``, not part of the time), then
``labkit.analyze`` is timed. Every query result that comes back to Python is counted through labkit's
engine guard (the same spy as tests/backend_lab.py ``Fetched``): for non-quantile metrics only per-arm
rows may come back, so ``driver_rows_max`` must stay far below the number of customers. The baseline is
the same `labkit analyze` on DuckDB, in its own fresh process. The draw: ``labkit assign`` of the uncapped
``bench-assign`` on Spark (its JVM's start included) against the same on DuckDB (benchmarks/assign.py's
script), each in a fresh process; ``same_bytes`` says the two assignment files are byte-identical. At 10M the draw brings 10M rows
back to the driver: it ran out of Spark's default 1 GB (and of 2 GB), hence labkit's driver memory.
"""

from __future__ import annotations

import shutil

from benchmarks import data
from benchmarks.analysis import LABKIT as DUCKDB
from benchmarks.assign import LABKIT as ASSIGN
from benchmarks.common import PEAK_RSS, Ctx, best_of, reset, same_drawn_files, versus

LAB = """\
lab: bench-spark
tracking_uri: sqlite:///results/mlflow.db
data_root: {data}
sources:
  customers: {{format: spark, path: {data}/customers.parquet}}
  outcomes: {{format: spark, path: {data}/outcomes.parquet}}
  events: {{format: spark, path: {data}/events.parquet, timestamp: ts}}
functions: [sales, marketing, service, pr]
channels: [email]
"""

SPARK = """
import json, time
import labkit, labkit.analysis
from labkit.data import backends, spark
t = time.perf_counter()
spark.spark_session()
session_s = time.perf_counter() - t
fetched = []
original = backends.Guarded.__getattr__
def spy(guarded, name):
    value = original(guarded, name)
    if name not in ("to_pyarrow", "execute") or not callable(value):
        return value
    def run(*args, **kwargs):
        result = value(*args, **kwargs)
        fetched.append(getattr(result, "num_rows", None) or (len(result) if hasattr(result, "__len__") else 1))
        return result
    return run
backends.Guarded.__getattr__ = spy
t = time.perf_counter()
lab = labkit.load_lab("configs/lab.yaml")
result = labkit.analyze(labkit.load_pilot("bench", lab=lab))
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "session_s": session_s, "rss_mb": PEAK_RSS, "decision": result.decision,
                  "fetched": fetched}))
""".replace("PEAK_RSS", PEAK_RSS)


def sizes(ctx: Ctx) -> list[int]:
    # 10M: the size at which a broadcast join overflowed the local session's 1 GB driver (2026-12-07)
    return {"tiny": [], "quick": [100_000], "full": [1_000_000, 10_000_000]}[ctx.mode]


def _lab(ctx: Ctx, n: int):
    src = data.build(ctx, n)
    root = ctx.labs / f"spark-n{n}-s{ctx.seed}"
    reset(root)
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "lab.yaml").write_text(LAB.format(data=(src / "data").resolve()))
    shutil.copytree(src / "experiments", root / "experiments")
    for pid in ("bench", "bench-quantile"):
        shutil.copytree(src / "results" / pid, root / "results" / pid)
    return src, root


def run(ctx: Ctx) -> list[dict]:
    rows = []
    for n in sizes(ctx):
        src, root = _lab(ctx, n)
        ctx.say(f"spark: {n:,} customers")
        spark = best_of(SPARK, root, 1 if n >= 10_000_000 else ctx.repeat)  # ~1 min a run at 10M
        duck = best_of(DUCKDB.replace("PILOT", "bench"), src, ctx.repeat)
        rows.append(
            {
                **versus("analyze on Spark local", n, spark, duck, "the same labkit analyze on DuckDB"),
                "session_s": round(spark["session_s"], 1),
                "labkit_rss_mb": round(spark["rss_mb"]),
                "driver_rows_max": max(spark["fetched"], default=0),
                "driver_rows_total": sum(spark["fetched"]),
                "queries": len(spark["fetched"]),
                "met": max(spark["fetched"], default=0) < 100,
                "labkit_all_s": spark["all"],
            }
        )
        rows.append(_draw(ctx, n, src, root))
    return rows


def _draw(ctx: Ctx, n: int, src, root) -> dict:
    """`labkit assign bench-assign` on Spark and on DuckDB, each in a fresh process, and their files compared."""
    ctx.say(f"spark: assign {n:,} customers")
    spark = best_of(ASSIGN, root, 1 if n >= 10_000_000 else ctx.repeat)  # ~80 s a run at 10M
    duck = best_of(ASSIGN, src, 1 if n >= 10_000_000 else ctx.repeat)
    same = same_drawn_files(root, src)
    return {
        **versus("assign on Spark local", n, spark, duck, "the same labkit assign on DuckDB"),
        "labkit_rss_mb": round(spark["rss_mb"]),
        "same_bytes": same,
        "met": same,
        "labkit_all_s": spark["all"],
    }
