"""`labkit analyze` on N-customer pilots from Parquet vs one hand-written DuckDB query plus scipy.

The pilot (benchmarks/data.py): a proportion, a CUPED mean (per-customer covariate), a ratio, and a
count of ``reply`` events in the 30-day window after assignment over an event table of ~10 events per
customer. Each side runs in a fresh interpreter with its imports warmed (labkit's import time is reported
separately); the time is the work after imports, best of ``ctx.repeat``; peak RSS is the process's
VmHWM. The baseline computes the same per-arm sums in one DuckDB query over the same files (the event
window as a CTE) and runs the same scipy tests; labkit additionally validates the pilot, checks the data
(duplicate ids, missing customers, SRM) and applies the decision rules. A second pilot adds a median
(``bench-quantile``): its raw values are pulled into memory by design, so its peak RSS is reported
against the memory model of the README.

Issue #16 (Speed): one pilot (``data.build_social``: the same metrics, its primary the 30-day event-window
count) analysed (a) as drawn per customer, (b) drawn per account (``cohort.unit_column``, 20,000 accounts at
1M customers: cluster totals) and (c) as (a) with ``over_time=True`` (the primary's effect on each day);
the three alternate in each round, every side with the same modules imported before the clock starts; best
of 3 each, and the ratios (b)/(a) and (c)/(a) against the issue's 2.
"""

from __future__ import annotations

from benchmarks import data
from benchmarks.common import LABKIT as LABKIT_CLI
from benchmarks.common import PEAK_RSS, PYTHON, Ctx, alternated, best_of, ratio, run_script

LABKIT = """
import json, time
t0 = time.perf_counter()
import labkit
import labkit.analysis, labkit.data.aggregate, labkit.stats, labkit.assignment, ibis, pandas, scipy.stats  # warm, as the baseline
ibis.duckdb.connect().disconnect()
imports = time.perf_counter() - t0
t = time.perf_counter()
lab = labkit.load_lab("configs/lab.yaml")
result = labkit.analyze(labkit.load_pilot("PILOT", lab=lab))
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rss_mb": PEAK_RSS, "decision": result.decision, "imports": imports}))
""".replace("PEAK_RSS", PEAK_RSS)

BASELINE = """
import json, time
import duckdb, numpy as np
from scipy import stats
duckdb.connect().close()
t = time.perf_counter()
con = duckdb.connect()
con.execute('SET enable_progress_bar=false')  # DuckDB prints its bar to stdout, which carries the JSON
rows = con.execute('''
  WITH a AS (SELECT customer_id, arm, assigned_at FROM 'results/bench/assignment.parquet'),
  ev AS (
    SELECT e.customer_id, count(*) AS replies
    FROM 'data/events.parquet' e JOIN a USING (customer_id)
    WHERE e.event_type = 'reply' AND e.ts >= a.assigned_at AND e.ts < a.assigned_at + INTERVAL 30 DAY
    GROUP BY e.customer_id)
  SELECT a.arm, count(*) n,
         sum(o.converted) c,
         sum(o.spend) s, sum(o.spend*o.spend) ss, sum(o.pre_spend) x, sum(o.pre_spend*o.pre_spend) xx,
         sum(o.spend*o.pre_spend) sx,
         sum(o.tickets) t, sum(o.tickets*o.tickets) tt, sum(o.contacts) k, sum(o.contacts*o.contacts) kk,
         sum(o.tickets*o.contacts) tk,
         sum(coalesce(ev.replies, 0)) r, sum(coalesce(ev.replies, 0) ** 2) rr
  FROM a JOIN 'data/outcomes.parquet' o USING (customer_id) LEFT JOIN ev USING (customer_id)
  GROUP BY a.arm ORDER BY a.arm''').fetchall()
(c, t_) = [[float(v) if i else v for i, v in enumerate(r)] for r in rows]
def var(s, ss, n): return (ss - s * s / n) / (n - 1)
# proportion z-test
p1, p2 = c[2] / c[1], t_[2] / t_[1]
pp = (c[2] + t_[2]) / (c[1] + t_[1])
z = (p2 - p1) / np.sqrt(pp * (1 - pp) * (1 / c[1] + 1 / t_[1]))
p_prop = 2 * stats.norm.sf(abs(z))
# CUPED mean
theta = ((c[7] - c[3] * c[5] / c[1]) + (t_[7] - t_[3] * t_[5] / t_[1])) / ((c[6] - c[5] ** 2 / c[1]) + (t_[6] - t_[5] ** 2 / t_[1]))
def adj(r): return var(r[3], r[4], r[1]) + theta ** 2 * var(r[5], r[6], r[1]) - 2 * theta * (r[7] - r[3] * r[5] / r[1]) / (r[1] - 1)
m1 = c[3] / c[1] - theta * (c[5] / c[1]); m2 = t_[3] / t_[1] - theta * (t_[5] / t_[1])
res = stats.ttest_ind_from_stats(m2, np.sqrt(adj(t_)), t_[1], m1, np.sqrt(adj(c)), c[1], equal_var=False)
# ratio, delta method
def rvar(r):
    R = r[8] / r[10]; n = r[1]
    vy, vx = var(r[8], r[9], n), var(r[10], r[11], n); cxy = (r[12] - r[8] * r[10] / n) / (n - 1)
    return (vy - 2 * R * cxy + R * R * vx) / ((r[10] / n) ** 2 * n)
zr = (t_[8] / t_[10] - c[8] / c[10]) / np.sqrt(rvar(c) + rvar(t_))
p_ratio = 2 * stats.norm.sf(abs(zr))
# event-window count, Welch
ev = stats.ttest_ind_from_stats(t_[13] / t_[1], np.sqrt(var(t_[13], t_[14], t_[1])), t_[1],
                                c[13] / c[1], np.sqrt(var(c[13], c[14], c[1])), c[1], equal_var=False)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rss_mb": PEAK_RSS, "p": [p_prop, float(res.pvalue), p_ratio, float(ev.pvalue)]}))
""".replace("PEAK_RSS", PEAK_RSS)


# Whole process (issue #18): the hand-written side of `labkit analyze bench-imported` — one DuckDB query
# grouping the one file by its arm column, and the same scipy tests (proportion z, CUPED Welch, ratio delta).
WHOLE_BASELINE = """
import duckdb, numpy as np
from scipy import stats
con = duckdb.connect()
con.execute('SET enable_progress_bar=false')
rows = con.execute('''
  SELECT arm, count(*) n, sum(converted) c,
         sum(spend) s, sum(spend*spend) ss, sum(pre_spend) x, sum(pre_spend*pre_spend) xx, sum(spend*pre_spend) sx,
         sum(tickets) t, sum(tickets*tickets) tt, sum(contacts) k, sum(contacts*contacts) kk, sum(tickets*contacts) tk
  FROM 'data/outcomes.parquet' WHERE arm IS NOT NULL GROUP BY arm ORDER BY arm''').fetchall()
(c, t_) = [[float(v) if i else v for i, v in enumerate(r)] for r in rows]
def var(s, ss, n): return (ss - s * s / n) / (n - 1)
p1, p2 = c[2] / c[1], t_[2] / t_[1]
pp = (c[2] + t_[2]) / (c[1] + t_[1])
p_prop = 2 * stats.norm.sf(abs((p2 - p1) / np.sqrt(pp * (1 - pp) * (1 / c[1] + 1 / t_[1]))))
theta = ((c[7] - c[3] * c[5] / c[1]) + (t_[7] - t_[3] * t_[5] / t_[1])) / ((c[6] - c[5] ** 2 / c[1]) + (t_[6] - t_[5] ** 2 / t_[1]))
def adj(r): return var(r[3], r[4], r[1]) + theta ** 2 * var(r[5], r[6], r[1]) - 2 * theta * (r[7] - r[3] * r[5] / r[1]) / (r[1] - 1)
m1 = c[3] / c[1] - theta * (c[5] / c[1]); m2 = t_[3] / t_[1] - theta * (t_[5] / t_[1])
res = stats.ttest_ind_from_stats(m2, np.sqrt(adj(t_)), t_[1], m1, np.sqrt(adj(c)), c[1], equal_var=False)
def rvar(r):
    R = r[8] / r[10]; n = r[1]
    vy, vx = var(r[8], r[9], n), var(r[10], r[11], n); cxy = (r[12] - r[8] * r[10] / n) / (n - 1)
    return (vy - 2 * R * cxy + R * R * vx) / ((r[10] / n) ** 2 * n)
p_ratio = 2 * stats.norm.sf(abs((t_[8] / t_[10] - c[8] / c[10]) / np.sqrt(rvar(c) + rvar(t_))))
print(p_prop, float(res.pvalue), p_ratio)
"""
WHOLE_TARGET = 1.5


def whole_sizes(ctx: Ctx) -> list[int]:
    return {"tiny": [2_000], "quick": [1_000_000], "full": [1_000_000, 10_000_000]}[ctx.mode]


def whole_rows(ctx: Ctx) -> list[dict]:
    """`labkit analyze` as a user runs it (imports, validation, queries, statistics, printing) against the
    hand-written script, both whole processes, alternated after a warm-up round; median of
    ``2 * ctx.repeat + 1`` runs each (one, unwarmed, in tiny)."""
    rows = []
    repeat = 1 if ctx.mode == "tiny" else 2 * ctx.repeat + 1
    for n in whole_sizes(ctx):
        root = data.build_imported(ctx, n)
        ctx.say(f"analysis: whole process, {n:,} customers (arms imported from the outcomes file)")
        got = alternated(
            {
                "labkit": [*LABKIT_CLI, "analyze", data.IMPORTED_ID, "--json"],
                "baseline": [PYTHON, "-c", WHOLE_BASELINE],
            },
            root,
            repeat,
            warm=0 if ctx.mode == "tiny" else 1,
            env={"MLFLOW_DISABLE_TELEMETRY": "true"},
        )
        lab, base = got["labkit"], got["baseline"]
        r = ratio(lab["median"], base["median"])
        rows.append(
            {
                "benchmark": "analyze, whole process",
                "customers": n,
                "labkit_s": round(lab["median"], 3),
                "baseline_s": round(base["median"], 3),
                "ratio": r,
                "target_ratio": WHOLE_TARGET,
                "met": r is not None and r <= WHOLE_TARGET,
                "labkit_rss_mb": round(lab["rss_mb"]),
                "baseline_rss_mb": round(base["rss_mb"]),
                "labkit_cpu_s": round(lab["cpu_s"], 2),
                "baseline_cpu_s": round(base["cpu_s"], 2),
                "cpu_ratio": ratio(lab["cpu_s"], base["cpu_s"]),
                "labkit_all_s": lab["all"],
                "baseline_all_s": base["all"],
            }
        )
    return rows


# (a), (b) and (c) of issue #16: PILOT and OVER replaced; every side imports what any of them uses.
SOCIAL = """
import json, time
t0 = time.perf_counter()
import labkit
import labkit.analysis, labkit.data.aggregate, labkit.stats, labkit.assignment, ibis, pandas, scipy.stats
import labkit.clustered, labkit.data.clusters, labkit.stats.cluster, labkit.over_time, labkit.data.over_time
import labkit.stats.over_time
ibis.duckdb.connect().disconnect()
imports = time.perf_counter() - t0
t, cpu = time.perf_counter(), time.process_time()
lab = labkit.load_lab("configs/lab.yaml")
result = labkit.analyze(labkit.load_pilot("PILOT", lab=lab), over_time=OVER)
seconds, cpu = time.perf_counter() - t, time.process_time() - cpu  # CPU: every thread's, DuckDB's included
ot = result.over_time
print(json.dumps({"seconds": seconds, "cpu_s": cpu, "rss_mb": PEAK_RSS, "decision": result.decision,
                  "imports": imports, "over_time_rows": len(ot.rows) if ot else None,
                  "note": ot.note if ot else None}))
""".replace("PEAK_RSS", PEAK_RSS)
SOCIAL_TARGET = 2.0


def social_sizes(ctx: Ctx) -> list[int]:
    return {"tiny": [2_000], "quick": [100_000], "full": [1_000_000]}[ctx.mode]


def social_rows(ctx: Ctx) -> list[dict]:
    """Issue #16's two rows: the cluster pilot and the over-time analysis, each against the plain analysis
    of the same pilot (module docstring); sides alternated per round, best of 3 (1 in tiny)."""
    rows = []
    repeat = 1 if ctx.mode == "tiny" else 3
    sides = {
        "plain": (data.SOCIAL_ID, False),
        "cluster": (data.CLUSTER_ID, False),
        "over_time": (data.SOCIAL_ID, True),
    }
    for n in social_sizes(ctx):
        root = data.build_social(ctx, n)
        k = data.clusters_of(n)
        ctx.say(f"analysis: {n:,} customers plain, in {k:,} clusters, and over time")
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for _ in range(repeat):
            for side, (pid, over) in sides.items():
                runs[side].append(run_script(SOCIAL.replace("PILOT", pid).replace("OVER", str(over)), root))
        best = {side: min(rs, key=lambda r: r["seconds"]) for side, rs in runs.items()}
        base = best["plain"]
        for side, what in (
            ("cluster", f"analyze, cluster pilot ({k:,} clusters)"),
            ("over_time", "analyze, over time"),
        ):
            got = best[side]
            r = ratio(got["seconds"], base["seconds"])
            rows.append(
                {
                    "benchmark": what,
                    "customers": n,
                    "clusters": k if side == "cluster" else None,
                    "days": data.WINDOW_DAYS if side == "over_time" else None,
                    "labkit_s": round(got["seconds"], 3),
                    "baseline_s": round(base["seconds"], 3),  # the same pilot's plain analysis
                    "ratio": r,
                    "target_ratio": SOCIAL_TARGET,
                    "met": r is not None and r <= SOCIAL_TARGET,
                    "labkit_rss_mb": round(got["rss_mb"]),
                    "baseline_rss_mb": round(base["rss_mb"]),
                    # CPU seconds (least of the runs), which the machine's load hardly moves
                    "labkit_cpu_s": round(min(x["cpu_s"] for x in runs[side]), 2),
                    "baseline_cpu_s": round(min(x["cpu_s"] for x in runs["plain"]), 2),
                    "cpu_ratio": ratio(
                        min(x["cpu_s"] for x in runs[side]), min(x["cpu_s"] for x in runs["plain"])
                    ),
                    "labkit_all_s": [round(x["seconds"], 3) for x in runs[side]],
                    "baseline_all_s": [round(x["seconds"], 3) for x in runs["plain"]],
                    "over_time_rows": got["over_time_rows"] if side == "over_time" else None,
                    "notes": [got["note"]] if side == "over_time" and got["note"] else [],
                }
            )
    return rows


def sizes(ctx: Ctx) -> list[int]:
    return {"tiny": [2_000], "quick": [10_000, 100_000], "full": [100_000, 1_000_000, 10_000_000]}[ctx.mode]


def run(ctx: Ctx) -> list[dict]:
    rows = []
    for n in sizes(ctx):
        root = data.build(ctx, n)
        ctx.say(f"analysis: {n:,} customers")
        lab = best_of(LABKIT.replace("PILOT", "bench"), root, ctx.repeat)
        base = best_of(BASELINE, root, ctx.repeat)
        quant = best_of(LABKIT.replace("PILOT", "bench-quantile"), root, 1) if ctx.mode != "tiny" else {}
        rows.append(
            {
                "benchmark": "analyze, after imports",
                "customers": n,
                "events": n * data.EVENTS_PER_CUSTOMER,
                "labkit_s": round(lab["seconds"], 3),
                "baseline_s": round(base["seconds"], 3),
                "ratio": ratio(lab["seconds"], base["seconds"]),
                "target_ratio": 1.5,
                "met": lab["seconds"] <= 1.5 * base["seconds"],
                "labkit_imports_s": round(lab["imports"], 2),
                "labkit_rss_mb": round(lab["rss_mb"]),
                "baseline_rss_mb": round(base["rss_mb"]),
                "quantile_s": round(quant["seconds"], 3) if quant else None,
                "quantile_rss_mb": round(quant["rss_mb"]) if quant else None,
                "labkit_all_s": lab["all"],
                "baseline_all_s": base["all"],
            }
        )
    return rows + whole_rows(ctx) + social_rows(ctx)
