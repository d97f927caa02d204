"""Who is in which pilot's cohort and arm: the assignments the demo simulates, as arrays over the
population, and the two imported tests' own send logs (each tool randomised its test itself).

The send logs are written with the base CRM (stage one); ``imported_assignment`` reads one back in the
shape ``simulate_outcomes`` takes, as ``labkit assign`` imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labkit.demo.catalog import (
    EMAIL_CAMPAIGN,
    EMAIL_CONSENT_DRIFT,
    EMAIL_SEND_SIZE,
    HOUR_US,
    IMPORTED_PILOT,
    PATHS,
    PILOTS,
    RENEWAL_NULL_ARMS,
    RENEWAL_PILOT,
    RENEWAL_SEND_SIZE,
    STREAM_RENEWAL_SENDS,
    STREAM_SENDS,
    DemoPilot,
    micros,
    stream_rng,
)
from labkit.demo.population import ACTIVE, AT_RISK, SEGMENTS, Population

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


@dataclass
class Assigned:
    """One pilot's assignment as arrays over the population."""

    pilot: DemoPilot
    cohort: np.ndarray  # customer indices, sorted
    arm: np.ndarray  # arm index per cohort member (0 = control)
    at: np.ndarray  # assigned_at per cohort member, µs

    def arm_full(self, n: int) -> np.ndarray:
        """Arm index for every customer; customers outside the cohort behave as under control."""
        out = np.zeros(n, np.int64)
        out[self.cohort] = self.arm
        return out


def parse_assignments(assignments: dict, pop: Population) -> dict[str, Assigned]:
    """Each pilot's assignment frame (customer_id, arm, assigned_at) as arrays over the population; refuses
    a frame the demo cannot simulate (unknown pilot, customer or arm, a duplicate, assigned before the start)."""
    import pandas as pd

    from labkit.errors import AssignmentError

    out = {}
    for pilot_id, frame in assignments.items():
        if pilot_id not in PILOTS:
            raise AssignmentError(pilot_id, f"not a demo pilot; demo pilots: {', '.join(PILOTS)}")
        pilot = PILOTS[pilot_id]
        missing = {"customer_id", "arm", "assigned_at"} - set(frame.columns)
        if missing:
            raise AssignmentError(pilot_id, f"assignment lacks column(s) {', '.join(sorted(missing))}")
        ids = frame["customer_id"].astype(str)
        ok = ids.str.fullmatch(r"CUST-\d{7}")
        index = pd.to_numeric(ids.str.slice(5), errors="coerce").fillna(0).astype(np.int64).to_numpy() - 1
        if not ok.all() or (index < 0).any() or (index >= pop.n).any():
            raise AssignmentError(pilot_id, "assignment names customers that are not in the demo CRM")
        if len(np.unique(index)) != len(index):
            raise AssignmentError(pilot_id, "assignment lists a customer twice")
        arms = frame["arm"].astype(str).to_numpy()
        unknown = sorted(set(arms) - set(pilot.arms))
        if unknown:
            raise AssignmentError(
                pilot_id, f"unknown arm(s) {', '.join(unknown)}; arms: {', '.join(pilot.arms)}"
            )
        at = pd.to_datetime(frame["assigned_at"])
        if at.dt.tz is not None:
            at = at.dt.tz_convert("UTC").dt.tz_localize(None)
        at_us = at.astype("datetime64[us]").astype(np.int64).to_numpy()
        if (at_us < micros(pilot.start)).any():
            raise AssignmentError(
                pilot_id,
                f"assigned_at before the pilot's start {pilot.start}: the demo CRM's pre-pilot "
                "history runs up to the start, so nobody can be assigned earlier",
            )
        order = np.argsort(index)
        arm_index = np.array([pilot.arms.index(a) for a in arms], np.int64)
        out[pilot_id] = Assigned(pilot, index[order], arm_index[order], at_us[order])
    return out


def email_sends_table(pop: Population, seed: int):
    """The email tool's newsletter test: its own send list and its own 50/50 randomisation."""
    import pyarrow as pa

    rng = stream_rng(seed, STREAM_SENDS)
    listed = pop.has_email & np.isin(pop.stage, [ACTIVE, AT_RISK])
    eligible = np.flatnonzero(listed & pop.consent_marketing)
    drifted = np.flatnonzero(listed & ~pop.consent_marketing)  # the tool's list is not synced with the CRM
    chosen = np.concatenate(
        [
            rng.choice(eligible, EMAIL_SEND_SIZE - EMAIL_CONSENT_DRIFT, replace=False),
            rng.choice(drifted, EMAIL_CONSENT_DRIFT, replace=False),
        ]
    )
    chosen.sort()
    variant = np.where(rng.random(chosen.size) < 0.5, "control", "ugc_gallery")
    start = micros(PILOTS[IMPORTED_PILOT].start) + 9 * HOUR_US  # a 2-hour batch from 9:00 on the start date
    sent = start + np.floor(rng.random(chosen.size) * 2 * 3600).astype(np.int64) * 1_000_000
    return pa.table(
        {
            "customer_id": pa.array(pop.ids[chosen], pa.string()),
            "campaign": pa.array([EMAIL_CAMPAIGN] * chosen.size, pa.string()),
            "variant": pa.array(variant, pa.string()),
            "sent_at": pa.array(sent, pa.int64()).cast(pa.timestamp("us")),
        }
    )


def renewal_sends_table(pop: Population, seed: int):
    """The renewal tool's voucher test: its list, half of each segment block to the voucher (0/1), and a
    few rows its suppression list held back (treat NULL)."""
    import pyarrow as pa

    rng = stream_rng(seed, STREAM_RENEWAL_SENDS)
    listed = np.flatnonzero(pop.has_email & pop.consent_marketing & np.isin(pop.stage, [ACTIVE, AT_RISK]))
    chosen = np.sort(rng.choice(listed, RENEWAL_SEND_SIZE, replace=False))
    treat = np.zeros(chosen.size, np.int64)
    # complete randomisation within each block: half of it, the odd customer to a random arm
    for block in range(len(SEGMENTS)):
        members = np.flatnonzero(pop.segment[chosen] == block)
        k = members.size // 2 + (members.size % 2) * int(rng.random() < 0.5)
        treat[rng.choice(members, k, replace=False)] = 1
    held = np.zeros(chosen.size, bool)
    held[rng.choice(chosen.size, RENEWAL_NULL_ARMS, replace=False)] = True
    start = micros(PILOTS[RENEWAL_PILOT].start) + 8 * HOUR_US  # a 3-hour batch from 8:00 on the start date
    sent = start + np.floor(rng.random(chosen.size) * 3 * 3600).astype(np.int64) * 1_000_000
    return pa.table(
        {
            "customer_id": pa.array(pop.ids[chosen], pa.string()),
            "treat": pa.array(treat, pa.int64(), mask=held),
            "block": pa.array(SEGMENTS[pop.segment[chosen]], pa.string()),
            "sent_at": pa.array(sent, pa.int64()).cast(pa.timestamp("us")),
        }
    )


def email_sends_assignment(root: Path) -> pd.DataFrame:
    """The imported pilot's assignment in the shape ``simulate_outcomes`` takes: customer_id, arm, assigned_at."""
    import pandas as pd

    sends = pd.read_parquet(Path(root) / PATHS["email_sends"])
    return pd.DataFrame(
        {
            "customer_id": sends["customer_id"].astype(object),
            "arm": sends["variant"].astype(object),
            "assigned_at": sends["sent_at"],
        }
    )


def renewal_sends_assignment(root: Path) -> pd.DataFrame:
    """The renewal pilot's assignment as ``labkit assign`` imports it: NULL arms skipped, 0/1 mapped."""
    import pandas as pd

    sends = pd.read_parquet(Path(root) / PATHS["renewal_sends"])
    sends = sends[sends["treat"].notna()]
    return pd.DataFrame(
        {
            "customer_id": sends["customer_id"].astype(object).to_numpy(),
            "arm": np.where(sends["treat"].to_numpy() == 1, "voucher", "control").astype(object),
            "assigned_at": sends["sent_at"].to_numpy(),
        }
    )


def imported_assignment(root: Path, pilot_id: str) -> pd.DataFrame:
    """An imported demo pilot's assignment (``IMPORTED_PILOTS``) in the shape ``simulate_outcomes`` takes."""
    return {IMPORTED_PILOT: email_sends_assignment, RENEWAL_PILOT: renewal_sends_assignment}[pilot_id](root)
