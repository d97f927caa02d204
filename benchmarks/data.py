"""Synthetic benchmark labs: N customers, their outcomes, and an event log of about 10 events per customer.

Built once per (N, seed) under ``results/bench/labs/n<N>-s<seed>/`` and reused by later runs (a
``.complete`` marker is written last, so an interrupted build is redone). Written in chunks of 1M
customers, so building the 10M lab (100M events) needs well under 2 GB. Ids are integers, as in most
CRMs. The lab holds three pilots over the same customers: ``bench`` (a proportion, a CUPED mean, a
ratio and an event-window count), ``bench-quantile`` (a proportion and a median, the raw-value path),
both assigned once by ``labkit assign`` when the lab is built, and ``bench-assign``, which the
assignment benchmark draws afresh on every repetition.

A second kind of lab (``social-n<N>-s<seed>``, ``build_social``) gives each customer an ``account_id`` (N / 50
accounts: 20,000 at 1M) and holds the same metrics with the event-window count first, so that the
effect over time applies: ``social`` drawn per customer, ``social-cluster`` drawn per account
(``cohort.unit_column``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from benchmarks.common import Ctx, reset, run_script

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
WINDOW_DAYS = 30
EVENTS_PER_CUSTOMER = 10
CHUNK = 1_000_000

LAB = """\
lab: bench
tracking_uri: sqlite:///results/mlflow.db
sources:
  customers: {format: FMT, path: data/customers.parquet}
  outcomes: {format: FMT, path: data/outcomes.parquet}
  events: {format: FMT, path: data/events.parquet, timestamp: ts}
functions: [sales, marketing, service, pr]
channels: [email]
"""

PILOT = """\
id: {id}
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
  - name: replies
    type: mean
    source: events
    event: {{column: event_type, equals: reply}}
    aggregate: count
    window_days: {window}
"""

# The raw-value path: a median is computed from the customers' values, not from per-arm sums.
ASSIGN = """
import labkit
lab = labkit.load_lab("configs/lab.yaml")
for pid in ("bench", "bench-quantile"):
    labkit.assign(labkit.load_pilot(pid, lab=lab))
print("{}")
"""

QUANTILE_PILOT = (
    PILOT.split("metrics:")[0]
    + """metrics:
  - {{name: converted, type: proportion, source: outcomes, column: converted}}
  - {{name: spend_median, type: quantile, quantile: 0.5, source: outcomes, column: spend}}
"""
)


# The issue-#18 pilot: a proportion, a CUPED mean and a ratio of one Parquet file that also holds the arms
# a channel tool drew (``arm``), imported with `labkit assign` (``cohort.assignment``); no event table.
IMPORTED_LAB = """\
lab: bench-imported
tracking_uri: sqlite:///results/mlflow.db
sources:
  outcomes: {format: parquet, path: data/outcomes.parquet}
functions: [marketing]
channels: [email]
"""

IMPORTED_PILOT = (
    PILOT.split("cohort:")[0]
    + """cohort:
  source: outcomes
  id_column: customer_id
  arms: {{control: 0.5, treatment: 0.5}}
  control: control
  start: 2026-01-01
  assignment: {{source: outcomes, arm_column: arm}}
metrics:
  - {{name: converted, type: proportion, source: outcomes, column: converted}}
  - {{name: spend, type: mean, source: outcomes, column: spend, covariate: pre_spend}}
  - name: tickets_per_contact
    type: ratio
    numerator: {{source: outcomes, column: tickets}}
    denominator: {{source: outcomes, column: contacts}}
"""
)
IMPORTED_ID = "bench-imported"


def imported_root(ctx: Ctx, n: int) -> Path:
    return ctx.labs / f"imported-n{n}-s{ctx.seed}"


def build_imported(ctx: Ctx, n: int) -> Path:
    """The lab of n customers whose outcomes file holds their arm, imported with `labkit assign`; cached."""
    root = imported_root(ctx, n)
    if (root / ".complete").is_file():
        return root
    reset(root)
    ctx.say(f"building the {n:,}-customer imported-arms lab (cached for later runs) under {root}")
    for sub in ("configs", "experiments", "data"):
        (root / sub).mkdir(parents=True)
    (root / "configs" / "lab.yaml").write_text(IMPORTED_LAB)
    (root / "experiments" / f"{IMPORTED_ID}.yaml").write_text(IMPORTED_PILOT.format(id=IMPORTED_ID))
    _write_tables(root / "data", n, ctx.seed, arms=True)
    run_script(
        f"import labkit\nlabkit.assign(labkit.load_pilot({IMPORTED_ID!r}, lab=labkit.load_lab('configs/lab.yaml')))"
        "\nprint('{}')",
        root,
    )
    (root / ".complete").write_text("")
    return root


# Issue #16 (Speed): the same pilot drawn per customer and per account, its primary the 30-day event-window
# count (the metric an over-time analysis follows); customers hold an account_id, CUSTOMERS_PER_CLUSTER each
# on average.
CUSTOMERS_PER_CLUSTER = 50
SOCIAL_ID, CLUSTER_ID = "social", "social-cluster"
SOCIAL_PILOT = (
    PILOT.replace("metric: converted, direction: increase", "metric: replies, direction: increase")
    .split("metrics:")[0]
    .replace("  start: 2026-01-01\n", "  start: 2026-01-01\n{unit}")
    + """metrics:
  - name: replies
    type: mean
    source: events
    event: {{column: event_type, equals: reply}}
    aggregate: count
    window_days: {window}
  - {{name: converted, type: proportion, source: outcomes, column: converted}}
  - {{name: spend, type: mean, source: outcomes, column: spend, covariate: pre_spend}}
  - name: tickets_per_contact
    type: ratio
    numerator: {{source: outcomes, column: tickets}}
    denominator: {{source: outcomes, column: contacts}}
"""
)
ASSIGN_SOCIAL = f"""
import labkit
lab = labkit.load_lab("configs/lab.yaml")
for pid in ({SOCIAL_ID!r}, {CLUSTER_ID!r}):
    labkit.assign(labkit.load_pilot(pid, lab=lab))
print("{{}}")
"""


def clusters_of(n: int) -> int:
    return max(2, n // CUSTOMERS_PER_CLUSTER)


def build_social(ctx: Ctx, n: int) -> Path:
    """The lab of n customers in ``clusters_of(n)`` accounts, with ``social`` and ``social-cluster``
    assigned; cached."""
    root = ctx.labs / f"social-n{n}-s{ctx.seed}"
    if (root / ".complete").is_file():
        return root
    reset(root)
    ctx.say(
        f"building the {n:,}-customer lab in {clusters_of(n):,} accounts (cached for later runs) under {root}"
    )
    for sub in ("configs", "experiments", "data"):
        (root / sub).mkdir(parents=True)
    (root / "configs" / "lab.yaml").write_text(LAB.replace("FMT", "parquet"))
    for pid, unit in ((SOCIAL_ID, ""), (CLUSTER_ID, "  unit_column: account_id\n")):
        text = SOCIAL_PILOT.format(id=pid, n=n, window=WINDOW_DAYS, unit=unit)
        (root / "experiments" / f"{pid}.yaml").write_text(text)
    _write_tables(root / "data", n, ctx.seed, clusters=clusters_of(n))
    run_script(ASSIGN_SOCIAL, root)
    (root / ".complete").write_text("")
    return root


def lab_root(ctx: Ctx, n: int) -> Path:
    return ctx.labs / f"n{n}-s{ctx.seed}"


def build(ctx: Ctx, n: int) -> Path:
    """The lab of n customers, built (and ``bench`` assigned) unless it is cached."""
    root = lab_root(ctx, n)
    if (root / ".complete").is_file():
        return root
    reset(root)
    ctx.say(f"building the {n:,}-customer lab (cached for later runs) under {root}")
    (root / "configs").mkdir(parents=True)
    (root / "experiments").mkdir()
    (root / "data").mkdir()
    (root / "configs" / "lab.yaml").write_text(LAB.replace("FMT", "parquet"))
    for pid in ("bench", "bench-assign"):
        (root / "experiments" / f"{pid}.yaml").write_text(PILOT.format(id=pid, n=n, window=WINDOW_DAYS))
    (root / "experiments" / "bench-quantile.yaml").write_text(QUANTILE_PILOT.format(id="bench-quantile", n=n))
    _write_tables(root / "data", n, ctx.seed)
    run_script(ASSIGN, root)
    (root / ".complete").write_text("")
    return root


def _write_tables(
    folder: Path, n: int, seed: int, *, arms: bool = False, clusters: int | None = None
) -> None:
    """customers, outcomes and events; with ``arms``, outcomes only, with a 50/50 ``arm`` column; with
    ``clusters``, customers hold an ``account_id`` drawn uniformly among that many accounts."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng([seed, n])
    start_us = int(START.timestamp() * 1_000_000)
    day_us = 86_400 * 1_000_000
    kinds = pa.array(["view", "click", "reply"])
    writers = {}
    try:
        for lo in range(0, n, CHUNK):
            m = min(CHUNK, n - lo)
            ids = np.arange(lo, lo + m, dtype=np.int64)
            pre = rng.gamma(2.0, 50.0, m)
            contacts = rng.poisson(2.0, m)
            tables = {
                "customers": pa.table(
                    {
                        "customer_id": ids,
                        "segment": pa.DictionaryArray.from_arrays(
                            rng.integers(0, 3, m).astype(np.int8), pa.array(["smb", "mid", "enterprise"])
                        ).cast(pa.string()),
                    }
                ),
                "outcomes": pa.table(
                    {
                        "customer_id": ids,
                        "converted": rng.binomial(1, 0.1, m).astype(np.int64),
                        "spend": pre * 0.8 + rng.gamma(2.0, 20.0, m),
                        "pre_spend": pre,
                        "tickets": rng.binomial(contacts, 0.4).astype(np.int64),
                        "contacts": contacts.astype(np.int64),
                    }
                ),
            }
            if clusters is not None:  # only in the social lab: the other labs draw as before
                account = rng.integers(0, clusters, m).astype(np.int64)
                tables["customers"] = tables["customers"].append_column("account_id", pa.array(account))
            if arms:
                arm = pa.DictionaryArray.from_arrays(
                    rng.integers(0, 2, m).astype(np.int8), pa.array(["control", "treatment"])
                ).cast(pa.string())
                tables = {"outcomes": tables["outcomes"].add_column(1, "arm", arm)}
            else:
                tables["events"] = _events(rng, ids, start_us, day_us, kinds)
            for name, table in tables.items():
                if name not in writers:
                    writers[name] = pq.ParquetWriter(
                        folder / f"{name}.parquet", table.schema, compression="zstd"
                    )
                writers[name].write_table(table, row_group_size=CHUNK)
    finally:
        for writer in writers.values():
            writer.close()


def _events(rng, ids, start_us: int, day_us: int, kinds):
    """A Poisson number of events per customer (mean 10), uniform over [start - window, start + window)."""
    import numpy as np
    import pyarrow as pa

    counts = rng.poisson(EVENTS_PER_CUSTOMER, len(ids))
    k = int(counts.sum())
    offsets = rng.integers(-WINDOW_DAYS * day_us, WINDOW_DAYS * day_us, k)
    return pa.table(
        {
            "customer_id": np.repeat(ids, counts),
            "ts": pa.array(start_us + offsets, type=pa.timestamp("us", tz="UTC")),
            "event_type": pa.DictionaryArray.from_arrays(
                rng.choice(np.array([0, 1, 2], dtype=np.int8), k, p=[0.6, 0.3, 0.1]), kinds
            ).cast(pa.string()),
        }
    )
