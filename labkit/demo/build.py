"""Writing the demo lab's data, in the two moments a real lab sees its CRM (see ``labkit.demo``).

``build_base`` writes what exists before any pilot; ``simulate_outcomes`` writes the pilot period for the
arms the lab assigned, and the truth. Every file goes through ``labkit._files.write_atomic``: a reader
never sees half of one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labkit._files import write_atomic
from labkit.demo.catalog import (
    ALL_EVENT_TYPES,
    CHANNELS,
    DAY_US,
    DEMO_SEED,
    HISTORY_START,
    MANIFEST,
    PATHS,
    PILOTS,
    SCHEMAS,
    SNAPSHOT,
    TRUTH,
    channel_cutoffs,
    micros,
)
from labkit.demo.cohorts import email_sends_table, parse_assignments, renewal_sends_table
from labkit.demo.events import Events, events_table, history_events, pilot_events, read_events
from labkit.demo.outcomes import outcome_frames
from labkit.demo.population import Population, daily_rates
from labkit.demo.truth import compute_truth

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def _write_parquet(path: Path, table) -> None:
    import pyarrow.parquet as pq

    write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def _write_json(path: Path, obj: dict) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def build_base(root: Path, seed: int = DEMO_SEED) -> dict:
    """Write the CRM as it was before the pilots under ``root/data/crm``; returns counts and paths.

    Files: ``customers.parquet`` (snapshot as of SNAPSHOT), ``engagement_events.parquet`` (each channel's
    history up to its first pilot), ``email_sends.parquet`` (the newsletter test as the email tool
    randomised it). ``simulate_outcomes`` later adds the pilot period.
    """
    root = Path(root)
    pop = Population(seed)
    rates = daily_rates(pop)
    arrays = history_events(pop, rates, seed).arrays()
    cust, ts, ch, et = arrays[:4]
    snap = micros(SNAPSHOT)
    complaint = (
        (ch == CHANNELS.index("twitter"))
        & (et == ALL_EVENT_TYPES.index("complaint"))
        & (ts >= snap - 90 * DAY_US)
        & (ts < snap)
    )
    complaints_90d = np.bincount(cust[complaint], minlength=pop.n)
    customers = pop.customers_table(complaints_90d)
    events = events_table(arrays, pop.ids)
    sends = email_sends_table(pop, seed)
    renewal = renewal_sends_table(pop, seed)
    _write_parquet(root / PATHS["customers"], customers)
    _write_parquet(root / PATHS["engagement_events"], events)
    _write_parquet(root / PATHS["email_sends"], sends)
    _write_parquet(root / PATHS["renewal_sends"], renewal)
    for stale in ("outcomes", "pipeline", "media_coverage"):  # outcomes of an earlier pilot period
        (root / PATHS[stale]).unlink(missing_ok=True)
    (root / TRUTH).unlink(missing_ok=True)
    manifest = {
        "seed": int(seed),
        "snapshot": SNAPSHOT.isoformat(),
        "history_start": HISTORY_START.isoformat(),
        "channel_cutoffs": {c: str(np.datetime64(v, "us")) for c, v in channel_cutoffs().items()},
        "rows": {
            "customers": customers.num_rows,
            "engagement_events": events.num_rows,
            "email_sends": sends.num_rows,
            "renewal_sends": renewal.num_rows,
        },
    }
    _write_json(root / MANIFEST, manifest)
    return {
        "seed": int(seed),
        "rows": dict(manifest["rows"]),
        "paths": {
            name: str(PATHS[name])
            for name in ("customers", "engagement_events", "email_sends", "renewal_sends")
        },
    }


def simulate_outcomes(root: Path, assignments: dict[str, pd.DataFrame], seed: int = DEMO_SEED) -> dict:
    """Write the pilot period for the given assignments; returns row counts and the truth.

    ``assignments`` maps pilot id -> DataFrame(customer_id, arm, assigned_at). Pilots left out run no
    treatment (everyone behaves as under control and the truth omits them). For the imported pilot pass
    ``email_sends_assignment(root)``. Rewrites ``engagement_events.parquet`` (the history, kept as built,
    plus the pilot period), ``outcomes.csv``, ``pipeline.parquet``, ``media_coverage.csv`` and
    ``data/truth.json``; calling it again with the same input writes the same files.
    """
    from labkit.data.backends import engine_error  # a DataError whose line names no one source

    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file() or not (root / PATHS["engagement_events"]).is_file():
        raise engine_error(f"no demo CRM under {root / 'data'}: build it first (labkit.demo.build_base)")
    built = json.loads(manifest_path.read_text())
    if built.get("seed") != int(seed):
        raise engine_error(f"the demo CRM was built with seed {built.get('seed')}, not {seed}; rebuild it")

    pop = Population(seed)
    rates = daily_rates(pop)
    parsed = parse_assignments(assignments, pop)
    cutoffs = channel_cutoffs()

    # Events: the history as built (everything before each channel's cutoff), then each pilot's period.
    cust, ts, ch, et, sentiment, value = read_events(root / PATHS["engagement_events"])
    history = ts < np.array([cutoffs[c] for c in CHANNELS])[ch]
    events = Events()
    events.chunks.append(tuple(col[history] for col in (cust, ts, ch, et, sentiment, value)))
    owned = {c: np.zeros(pop.n, bool) for c in CHANNELS}
    bursts = {}
    for pilot_id in sorted(parsed, key=lambda i: (PILOTS[i].start, i)):
        a = parsed[pilot_id]
        channel = a.pilot.channel
        bursts[pilot_id] = pilot_events(pop, rates, seed, a, owned[channel], cutoffs[channel], events)
    arrays = events.arrays()

    frames, expected, present = outcome_frames(seed, pop, rates, parsed, arrays)

    _write_parquet(root / PATHS["engagement_events"], events_table(arrays, pop.ids))
    _write_csv(root / PATHS["outcomes"], frames["outcomes"])
    _write_parquet(root / PATHS["pipeline"], _pipeline_arrow(frames["pipeline"]))
    _write_csv(root / PATHS["media_coverage"], frames["media_coverage"])

    truth = compute_truth(seed, pop, rates, parsed, expected, bursts, present)
    _write_json(root / TRUTH, truth)
    return {
        "seed": int(seed),
        "rows": {
            "engagement_events": int(arrays[0].size),
            "outcomes": len(frames["outcomes"]),
            "pipeline": len(frames["pipeline"]),
            "media_coverage": len(frames["media_coverage"]),
        },
        "paths": {
            name: str(PATHS[name]) for name in ("engagement_events", "outcomes", "pipeline", "media_coverage")
        }
        | {"truth": str(TRUTH)},
        "truth": truth,
    }


def _pipeline_arrow(frame: pd.DataFrame):
    """The pipeline table with its declared column types and without pandas' metadata."""
    import pyarrow as pa

    types = {"VARCHAR": pa.string(), "DOUBLE": pa.float64(), "BIGINT": pa.int64()}
    schema = pa.schema([(name, types[kind]) for name, kind in SCHEMAS["pipeline"].items()])
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False).replace_schema_metadata(None)
