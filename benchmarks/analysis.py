"""`labkit analyze` on N-customer pilots from Parquet vs one hand-written DuckDB query plus scipy.

Each measurement runs in a fresh subprocess (so peak RSS is that step's own) and reports wall time of
the work after imports, and the process's peak RSS. The baseline computes exactly the same per-arm
sums in one DuckDB query over the same files and runs the same scipy tests; labkit additionally
validates the pilot, checks the data and applies the decision rules. Ratios are reported, not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

LAB = """\
lab: bench
tracking_uri: sqlite:///results/mlflow.db
sources:
  customers: {format: parquet, path: data/customers.parquet}
  outcomes: {format: parquet, path: data/outcomes.parquet}
functions: [sales, marketing, service, pr]
channels: [email]
"""

PILOT = """\
id: bench
title: Benchmark pilot
function: marketing
channel: email
stage: retention
owner: bench@example.com
hypothesis: {{statement: Bench., metric: converted, direction: increase, mde: {{relative: 0.05}}}}
cohort:
  source: customers
  id_column: customer_id
  max_size: {n}
  arms: {{control: 0.5, treatment: 0.5}}
  control: control
  start: 2026-01-01
metrics:
  - {{name: converted, type: proportion, source: outcomes, column: converted}}
  - {{name: spend, type: mean, source: outcomes, column: spend, covariate: pre_spend}}
  - name: tickets_per_contact
    type: ratio
    numerator: {{source: outcomes, column: tickets}}
    denominator: {{source: outcomes, column: contacts}}
"""


def build(root: Path, n: int) -> None:
    """A lab with n customers and their outcomes, assigned once (not timed here)."""
    import numpy as np
    import pandas as pd

    if (root / "results" / "bench" / "assignment.parquet").exists():
        return
    rng = np.random.default_rng(n)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "experiments").mkdir(exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    (root / "configs" / "lab.yaml").write_text(LAB)
    (root / "experiments" / "bench.yaml").write_text(PILOT.format(n=n))
    ids = np.char.add("C", np.arange(n).astype(str))
    pd.DataFrame({"customer_id": ids}).to_parquet(root / "data" / "customers.parquet")
    pre = rng.gamma(2.0, 50.0, n)
    contacts = rng.poisson(2.0, n)
    pd.DataFrame({
        "customer_id": ids,
        "converted": rng.binomial(1, 0.1, n),
        "spend": pre * 0.8 + rng.gamma(2.0, 20.0, n),
        "pre_spend": pre,
        "tickets": rng.binomial(contacts, 0.4),
        "contacts": contacts,
    }).to_parquet(root / "data" / "outcomes.parquet")
    subprocess.run([sys.executable, "-m", "labkit.cli", "assign", "bench"], cwd=root, check=True,
                   capture_output=True)


LABKIT = """
import json, resource, time
t0 = time.perf_counter()
import labkit
import labkit.analysis, labkit.data.aggregate, labkit.stats, labkit.assignment, ibis, scipy.stats  # warm, as the baseline
imports = time.perf_counter() - t0
t = time.perf_counter()
lab = labkit.load_lab("configs/lab.yaml")
result = labkit.analyze(labkit.load_pilot("bench", lab=lab))
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rss_mb": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024,
                  "decision": result.decision, "imports": imports}))
"""

BASELINE = """
import json, resource, time
import duckdb, numpy as np
from scipy import stats
t = time.perf_counter()
con = duckdb.connect()
rows = con.execute('''
  SELECT a.arm, count(*) n,
         sum(o.converted) c,
         sum(o.spend) s, sum(o.spend*o.spend) ss, sum(o.pre_spend) x, sum(o.pre_spend*o.pre_spend) xx,
         sum(o.spend*o.pre_spend) sx,
         sum(o.tickets) t, sum(o.tickets*o.tickets) tt, sum(o.contacts) k, sum(o.contacts*o.contacts) kk,
         sum(o.tickets*o.contacts) tk
  FROM 'results/bench/assignment.parquet' a JOIN 'data/outcomes.parquet' o USING (customer_id)
  GROUP BY a.arm ORDER BY a.arm''').fetchall()
(c, t_) = rows
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
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rss_mb": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024,
                  "p": [p_prop, float(res.pvalue), p_ratio]}))
"""


def measure(code: str, cwd: Path, repeat: int = 3) -> dict:
    best = None
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                             check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if best is None or result["seconds"] < best["seconds"]:
            best = result
    return best


def run(work: Path, sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        root = work / f"analysis-{n}"
        build(root, n)
        labkit = measure(LABKIT, root)
        base = measure(BASELINE, root)
        rows.append({
            "benchmark": "analyze (proportion + CUPED mean + ratio)",
            "customers": n,
            "labkit_s": round(labkit["seconds"], 3),
            "baseline_s": round(base["seconds"], 3),
            "ratio": round(labkit["seconds"] / base["seconds"], 2),
            "labkit_imports_s": round(labkit["imports"], 2),
            "labkit_rss_mb": round(labkit["rss_mb"]),
            "baseline_rss_mb": round(base["rss_mb"]),
        })
    return rows
