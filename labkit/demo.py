"""The demo lab's synthetic CRM: seeded, vectorised, and built in two stages around the assignment.

A real lab sees its CRM in two moments, and so does the demo:

1. ``build_base(root)`` writes what exists *before* any pilot: the customer table (a snapshot as of
   ``SNAPSHOT``), every channel's engagement history up to the first pilot on that channel, the email
   tool's send list for the newsletter test, randomised by the tool itself, and the renewal tool's send
   log of its voucher test (0/1 arms drawn within segment blocks, a few NULL arms).
2. The lab draws each pilot's cohort and arms (``labkit assign``, keyed hashing; not this module).
3. ``simulate_outcomes(root, assignments)`` writes the pilot period, which depends on the arms: each
   assigned customer's events from ``assigned_at`` on, the per-customer outcome tables, and
   ``data/truth.json`` — the effects the generator applied, so a correct analysis can be checked.

Every random draw comes from a numpy ``Generator`` on its own stream, ``SeedSequence([seed, *stream])``:
one stream for the population, one for the history, one per pilot for its events and one per pilot for
its outcomes. Outcomes are drawn for *every* customer with common random numbers and then picked by arm,
so a pilot's data never depends on another pilot's assignment or on the order of the assignments.

Pilots and eligibility. ``PILOTS`` mirrors ``experiments/*.yaml`` (ids, channels, starts, arms, primary
metrics; a test keeps them in step). Each pilot's effects act on its own columns and on its own channel,
so a customer in two pilots (possible: e.g. a consumer community member who also got the newsletter) sees
additive, non-interacting effects. Within one channel the demo pilots' eligibility is disjoint (by
lifecycle stage or segment) — except the renewal voucher test, which shares the email channel with the
newsletter test but acts on an outcome column only, never on email events; a customer two pilots on one
channel share has the events of the earlier pilot.

What the truth means. ``truth.json`` states, per pilot, the primary metric's true control mean and the
true effect of each treatment arm on the scale DESIGN.md's intent-to-treat analysis estimates: the mean
over the *assigned cohort* of each customer's expected outcome under each arm (expectations over the
outcome noise, conditional on the cohort and on which rows of the per-customer tables exist). Missing
rows (a few % per table, at random, hence equal across arms) count as 0 for proportions and are left out
of means, exactly as the analysis treats them; event metrics have no missing rows. A NULL value inside a
table (the renewal status the CRM export lacks, ``renewed_60d``) is excluded, as DESIGN.md's default
``missing`` policy does; the renewal truth is over the assigned customers whose status is not NULL.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

DEMO_SEED = 20261101
N_CUSTOMERS = 80_000
SNAPSHOT = date(2026, 2, 1)  # the customer table's as-of date (tenure, pre-period spend, complaints_90d)
HISTORY_START = date(2025, 7, 1)  # engagement history starts here (>= 90 days before the first pilot)
POST_DAYS = 120  # each assigned customer's post-period, longer than every pilot's window
MISSING = {"outcomes": 0.025, "pipeline": 0.02, "media_coverage": 0.03}  # share of rows the CRM lacks

CRM = Path("data") / "crm"
PATHS = {
    "customers": CRM / "customers.parquet",
    "engagement_events": CRM / "engagement_events.parquet",
    "email_sends": CRM / "email_sends.parquet",
    "renewal_sends": CRM / "renewal_sends.parquet",
    "outcomes": CRM / "outcomes.csv",
    "pipeline": CRM / "pipeline.parquet",
    "media_coverage": CRM / "media_coverage.csv",
}
TRUTH = Path("data") / "truth.json"
MANIFEST = Path("data") / "demo_manifest.json"

# The declared schema of every source, as DuckDB (the lab's engine) reads each file.
SCHEMAS: dict[str, dict[str, str]] = {
    "customers": {
        "customer_id": "VARCHAR",
        "email": "VARCHAR",
        "twitter_handle": "VARCHAR",
        "linkedin_url": "VARCHAR",
        "segment": "VARCHAR",
        "region": "VARCHAR",
        "lifecycle_stage": "VARCHAR",
        "plan": "VARCHAR",
        "signup_date": "DATE",
        "tenure_months": "BIGINT",
        "consent_contact": "BOOLEAN",
        "consent_marketing": "BOOLEAN",
        "has_twitter": "BOOLEAN",
        "has_linkedin": "BOOLEAN",
        "has_facebook": "BOOLEAN",
        "community_member": "BOOLEAN",
        "blogger": "BOOLEAN",
        "followers": "BIGINT",
        "lead_score": "BIGINT",
        "nps_score": "BIGINT",
        "pre_spend": "DOUBLE",
        "pre_orders": "BIGINT",
        "days_since_last_purchase": "BIGINT",
        "complaints_90d": "BIGINT",
    },
    "engagement_events": {
        "customer_id": "VARCHAR",
        "ts": "TIMESTAMP",
        "channel": "VARCHAR",
        "event_type": "VARCHAR",
        "sentiment": "DOUBLE",
        "value": "DOUBLE",
    },
    "email_sends": {
        "customer_id": "VARCHAR",
        "campaign": "VARCHAR",
        "variant": "VARCHAR",
        "sent_at": "TIMESTAMP",
    },
    "renewal_sends": {
        "customer_id": "VARCHAR",
        "treat": "BIGINT",
        "block": "VARCHAR",
        "sent_at": "TIMESTAMP",
    },
    "outcomes": {
        "customer_id": "VARCHAR",
        "pre_spend": "DOUBLE",
        "churned_60d": "BIGINT",
        "contacts": "BIGINT",
        "tickets": "BIGINT",
        "first_response_minutes": "DOUBLE",
        "activated_30d": "BIGINT",
        "tickets_30d": "BIGINT",
        "adopted_feature": "BIGINT",
        "feature_minutes_60d": "DOUBLE",
        "reactivated_90d": "BIGINT",
        "orders_90d": "BIGINT",
        "spend_90d": "DOUBLE",
        "unsubscribed": "BIGINT",
        "referrals_90d": "BIGINT",
        "renewed_60d": "BIGINT",
    },
    "pipeline": {
        "customer_id": "VARCHAR",
        "pre_spend": "DOUBLE",
        "opportunity_created": "BIGINT",
        "meetings_booked": "BIGINT",
        "pipeline_value": "DOUBLE",
        "do_not_contact": "BIGINT",
        "upgraded_90d": "BIGINT",
        "expansion_value": "DOUBLE",
    },
    "media_coverage": {
        "customer_id": "VARCHAR",
        "brand_mentions": "BIGINT",
        "category_mentions": "BIGINT",
    },
}

SEGMENTS = np.array(["consumer", "smb", "enterprise"], dtype=object)
REGIONS = np.array(["na", "emea", "apac", "latam"], dtype=object)
STAGES = np.array(["prospect", "onboarding", "active", "at_risk", "lapsed"], dtype=object)
PLANS = np.array(["basic", "plus", "pro"], dtype=object)
PROSPECT, ONBOARDING, ACTIVE, AT_RISK, LAPSED = range(5)
AOV = np.array([65.0, 420.0, 2600.0])  # typical order value by segment

# Which events each channel logs. Rates, sentiment and values are defined in _rates and _attrs.
EVENT_TYPES = {
    "twitter": ("mention", "complaint", "reply", "like"),
    "community": ("visit", "post", "question", "answer", "answer_accepted", "idea", "kudos"),
    "linkedin": ("profile_view", "content_engagement", "connection_accepted", "message_reply"),
    "facebook": ("like", "comment", "share", "click"),
    "blog": ("post", "comment"),
    "email": ("open", "click", "unsubscribe"),
}
CHANNELS = tuple(EVENT_TYPES)
ALL_EVENT_TYPES = tuple(sorted({e for types in EVENT_TYPES.values() for e in types}))


@dataclass(frozen=True)
class Fx:
    """A treatment's effect on one event type: rate x mult + add x activity; sentiment and value shifts."""

    mult: float = 1.0
    add: float = 0.0
    sentiment: float = 0.0
    value: float = 1.0


@dataclass(frozen=True)
class DemoPilot:
    """What the generator knows of a pilot: it mirrors experiments/<id>.yaml."""

    id: str
    function: str
    channel: str
    stage: str
    start: date
    arms: tuple[str, ...]  # the control first
    primary: str
    metric_type: str  # the primary's type: proportion | mean
    direction: str  # the hypothesis' direction
    expected: dict[str, str]  # treatment arm -> positive | null | harmful
    events: dict[str, dict[str, Fx]] = field(default_factory=dict)  # arm -> event_type -> effect

    @property
    def control(self) -> str:
        return self.arms[0]


PILOTS: dict[str, DemoPilot] = {
    p.id: p
    for p in (
        DemoPilot(
            id="service-twitter-fast-reply",
            function="service",
            channel="twitter",
            stage="retention",
            start=date(2026, 3, 2),
            arms=("control", "fast_reply"),
            primary="churned_60d",
            metric_type="proportion",
            direction="decrease",
            expected={"fast_reply": "positive"},
            events={"fast_reply": {"reply": Fx(1.6, 0.004, sentiment=0.15), "complaint": Fx(0.8)}},
        ),
        DemoPilot(
            id="service-community-onboarding",
            function="service",
            channel="community",
            stage="onboarding",
            start=date(2026, 3, 16),
            arms=("control", "community_circle"),
            primary="activated_30d",
            metric_type="proportion",
            direction="increase",
            expected={"community_circle": "positive"},
            events={
                "community_circle": {"visit": Fx(1.5, 0.10), "post": Fx(1.5, 0.03), "question": Fx(1.3, 0.02)}
            },
        ),
        DemoPilot(
            id="sales-linkedin-social-selling",
            function="sales",
            channel="linkedin",
            stage="acquisition",
            start=date(2026, 2, 2),
            arms=("control", "social_selling"),
            primary="opportunity_created",
            metric_type="proportion",
            direction="increase",
            expected={"social_selling": "positive"},
            events={
                "social_selling": {
                    "connection_accepted": Fx(1.0, 0.008),
                    "message_reply": Fx(1.0, 0.003),
                    "content_engagement": Fx(2.0, 0.002),
                    "profile_view": Fx(1.5, 0.002),
                }
            },
        ),
        DemoPilot(
            id="sales-community-expert-answers",
            function="sales",
            channel="community",
            stage="development",
            start=date(2026, 5, 4),
            arms=("control", "am_answers"),
            primary="upgraded_90d",
            metric_type="proportion",
            direction="increase",
            expected={"am_answers": "null"},
            events={"am_answers": {"answer_accepted": Fx(1.0, 0.008), "question": Fx(1.3, 0.002)}},
        ),
        DemoPilot(
            id="marketing-facebook-winback",
            function="marketing",
            channel="facebook",
            stage="winback",
            start=date(2026, 6, 1),
            arms=("control", "discount_post", "story_post"),
            primary="reactivated_90d",
            metric_type="proportion",
            direction="increase",
            expected={"discount_post": "positive", "story_post": "null"},
            events={
                "discount_post": {"click": Fx(1.0, 0.005), "like": Fx(1.2, 0.003)},
                "story_post": {"click": Fx(1.0, 0.0025), "like": Fx(1.5, 0.006), "comment": Fx(1.5, 0.002)},
            },
        ),
        DemoPilot(
            id="marketing-community-cocreation",
            function="marketing",
            channel="community",
            stage="development",
            start=date(2026, 4, 13),
            arms=("control", "idea_lab"),
            primary="adopted_feature",
            metric_type="proportion",
            direction="increase",
            expected={"idea_lab": "positive"},
            events={"idea_lab": {"idea": Fx(2.5, 0.004, sentiment=0.1), "post": Fx(1.3, 0.004)}},
        ),
        DemoPilot(  # the newsletter itself is a one-off burst of events: see _email_burst
            id="marketing-email-social-proof",
            function="marketing",
            channel="email",
            stage="retention",
            start=date(2026, 9, 7),
            arms=("control", "ugc_gallery"),
            primary="clicked_14d",
            metric_type="proportion",
            direction="increase",
            expected={"ugc_gallery": "harmful"},
        ),
        DemoPilot(  # imported: the renewal tool's 0/1 arms, drawn within segment blocks (see _renewal_sends)
            id="sales-email-renewal-voucher",
            function="sales",
            channel="email",
            stage="retention",
            start=date(2026, 10, 5),
            arms=("control", "voucher"),
            primary="renewed_60d",
            metric_type="proportion",
            direction="increase",
            expected={"voucher": "positive"},
        ),
        DemoPilot(
            id="pr-blogger-early-access",
            function="pr",
            channel="blog",
            stage="acquisition",
            start=date(2026, 7, 6),
            arms=("control", "early_access"),
            primary="brand_posts",
            metric_type="mean",
            direction="increase",
            expected={"early_access": "positive"},
            events={"early_access": {"post": Fx(1.45, 0.0, sentiment=0.1, value=1.2)}},
        ),
        DemoPilot(
            id="pr-facebook-advocate-stories",
            function="pr",
            channel="facebook",
            stage="development",
            start=date(2026, 6, 15),
            arms=("control", "invited"),
            primary="referrals_90d",
            metric_type="mean",
            direction="increase",
            expected={"invited": "null"},
            events={"invited": {"share": Fx(1.0, 0.006, sentiment=0.1), "comment": Fx(1.2, 0.001)}},
        ),
    )
}
IMPORTED_PILOT = "marketing-email-social-proof"  # its arms come from email_sends, not from labkit assign
EMAIL_CAMPAIGN = "newsletter-2026-09"
EMAIL_SEND_SIZE = 9_800  # the tool's send list; the pilot's max_size is 10,000
EMAIL_CONSENT_DRIFT = 40  # customers on the tool's list whose CRM marketing consent is false
# The gallery pushes the newsletter's call to action below the fold and gets clipped by mail clients:
# fewer clicks and more unsubscribes, against the lab's hypothesis that social proof would raise clicks.
EMAIL_CLICK_MULT = 0.70  # the newsletter's click chance under ugc_gallery, relative to control
EMAIL_UNSUBSCRIBE = (0.004, 0.011)  # the newsletter's unsubscribe chance: control, ugc_gallery
BLOG_WINDOW_DAYS = 60  # media_coverage counts the 60 days after each blogger's assigned_at
# The renewal tool's voucher test, a finished experiment the lab imports (no max_size, no start in its file):
# it randomised half of each segment (its blocks) to the voucher and writes the arm as 0/1; its suppression
# list held back a few listed customers (treat NULL). The CRM export lacks the renewal status of some rows
# (renewed_60d NULL), which the analysis excludes, while customers absent from the export count as 0.
RENEWAL_PILOT = "sales-email-renewal-voucher"
RENEWAL_SEND_SIZE = 8_000
RENEWAL_NULL_ARMS = 45  # rows of the send log with treat NULL
RENEWAL_NULL_SHARE = 0.05  # share of outcome rows whose renewed_60d is NULL (status unknown)
RENEWAL_BASE = np.array([0.55, 0.68, 0.82])  # chance to renew within 60 days by segment, under control
RENEWAL_UPLIFT = np.array([0.08, 0.06, 0.05])  # the voucher's absolute increase by segment
IMPORTED_PILOTS = (IMPORTED_PILOT, RENEWAL_PILOT)

DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600 * 1_000_000

_STREAM_POPULATION, _STREAM_HISTORY, _STREAM_SENDS, _STREAM_MISSING = 1, 2, 3, 4
_STREAM_RENEWAL_SENDS = 5
_STREAM_EVENTS, _STREAM_OUTCOMES = 100, 200


# --------------------------------------------------------------------------------------------- helpers


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *stream]))


def _pilot_stream(pilot_id: str) -> int:
    return zlib.crc32(pilot_id.encode())


def _us(d: date | datetime) -> int:
    """Microseconds since the epoch of a naive date or datetime (the demo's timestamps are naive UTC)."""
    if not isinstance(d, datetime):
        d = datetime(d.year, d.month, d.day)
    return int((d - datetime(1970, 1, 1)) // timedelta(microseconds=1))


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def customer_ids(n: int = N_CUSTOMERS) -> np.ndarray:
    """``CUST-0000001`` ... in index order: customer i has id ``CUST-{i+1:07d}``."""
    return np.array([f"CUST-{i + 1:07d}" for i in range(n)], dtype=object)


def channel_cutoffs() -> dict[str, int]:
    """Per channel, the end of the pre-pilot history (µs): the start of the channel's first pilot."""
    out: dict[str, int] = {}
    for p in PILOTS.values():
        out[p.channel] = min(out.get(p.channel, _us(p.start)), _us(p.start))
    return out


def _atomic_write(path: Path, write) -> None:
    """Write through a temp file in the same folder, then os.replace: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the lab's files are as readable as any other file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_parquet(path: Path, table) -> None:
    import pyarrow.parquet as pq

    _atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    _atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def _write_json(path: Path, obj: dict) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False)
            fh.write("\n")

    _atomic_write(path, write)


# ------------------------------------------------------------------------------------------ population


class Population:
    """Customer attributes (what the CRM shows) and latent traits (what drives behaviour, never written)."""

    def __init__(self, seed: int, n: int = N_CUSTOMERS):
        rng = _rng(seed, _STREAM_POPULATION)
        self.n = n
        u = rng.random((n, 16))  # a column of uniforms per attribute (a few reused where traits co-vary)
        z = rng.standard_normal((n, 8))

        # Latent traits: general activity, satisfaction, email affinity, blogging activity, buying intent.
        self.activity = rng.gamma(1.5, 1 / 1.5, n)
        self.satisfaction = z[:, 0]
        self.email_affinity = rng.gamma(2.0, 0.5, n)
        self.blog_activity = rng.gamma(1.0, 1.0, n)
        self.intent = z[:, 1]

        stage = np.searchsorted(np.cumsum([0.20, 0.075, 0.425, 0.12, 0.18]), u[:, 0], side="right")
        self.stage = np.minimum(stage, LAPSED)
        prospect = self.stage == PROSPECT
        seg_cum = np.where(prospect[:, None], [0.20, 0.75, 1.0], [0.66, 0.93, 1.0])
        self.segment = (u[:, 1:2] > seg_cum).sum(axis=1)
        self.region = np.searchsorted(np.cumsum([0.40, 0.32, 0.18, 0.10]), u[:, 2], side="right").clip(0, 3)
        b2b = self.segment > 0

        self.has_twitter = u[:, 3] < np.where(b2b, 0.22, 0.34)
        self.has_linkedin = u[:, 4] < np.where(b2b, 0.82, 0.22)
        self.has_facebook = u[:, 5] < np.where(b2b, 0.25, np.where(self.stage == LAPSED, 0.70, 0.56))
        member_p = np.array([0.03, 0.06, 0.36, 0.30, 0.10])[self.stage]
        self.community_member = u[:, 6] < member_p
        self.blogger = u[:, 7] < 0.05
        followers = np.exp(np.where(self.blogger, np.log(2500) + 1.1 * z[:, 2], np.log(180) + 1.3 * z[:, 2]))
        self.followers = np.round(followers).astype(np.int64)
        self.consent_contact = u[:, 8] < 0.88
        self.consent_marketing = np.where(self.consent_contact, u[:, 9] < 0.84, u[:, 9] < 0.10)
        self.has_email = u[:, 10] > 0.01
        self.has_linkedin_url = self.has_linkedin & (u[:, 11] < 0.93)

        months = np.select(
            [prospect, self.stage == ONBOARDING, self.stage == ACTIVE, self.stage == AT_RISK],
            [0, np.floor(u[:, 12] * 3), 3 + rng.gamma(1.3, 20, n), 6 + rng.gamma(1.3, 18, n)],
            9 + rng.gamma(1.3, 20, n),
        )
        self.tenure_months = np.minimum(months, 180).astype(np.int64)
        plan_cum = np.array([[0.60, 0.90], [0.40, 0.80], [0.10, 0.50]])[self.segment]
        self.plan = (u[:, 13:14] > plan_cum).sum(axis=1)
        self.lead_score = np.clip(np.round(50 + 15 * self.intent + 8 * b2b + 10 * z[:, 3]), 0, 100).astype(
            np.int64
        )
        self.nps_surveyed = ~prospect & (u[:, 14] < 0.5)
        self.nps_score = np.clip(np.round(7.6 + 1.6 * self.satisfaction + 1.2 * z[:, 4]), 0, 10).astype(
            np.int64
        )

        days = np.select(
            [self.stage == ACTIVE, self.stage == ONBOARDING, self.stage == AT_RISK],
            [
                np.floor(u[:, 15] * 60),
                np.floor(u[:, 15] * 30 * (self.tenure_months + 1)),
                60 + np.floor(u[:, 15] * 120),
            ],
            150 + np.floor(rng.exponential(200, n)),
        )
        self.days_since_last_purchase = np.minimum(days, 900).astype(np.int64)  # null for prospects
        # Spend: orders over the last 12 months x the customer's own order value (skewed, zero-inflated).
        self.aov = AOV[self.segment] * np.exp(0.35 * z[:, 5])
        order_rate = np.array([0.0, 3.0, 6.0, 3.0, 1.2])[self.stage] * np.where(b2b, 1.5, 1.0) * self.activity
        order_rate = np.where(
            self.stage == ONBOARDING, order_rate * (self.tenure_months + 1) / 12, order_rate
        )
        order_rate = np.where(self.days_since_last_purchase > 365, 0.0, order_rate)
        orders = rng.poisson(order_rate)
        recent = (self.stage != PROSPECT) & (self.days_since_last_purchase <= 365)
        self.pre_orders = np.where(recent, np.maximum(orders, 1), orders).astype(np.int64)
        spend = self.pre_orders * self.aov * np.exp(0.25 * z[:, 6])
        self.pre_spend = np.round(spend, 2)
        signup_days = np.round(self.tenure_months * 30.44 + np.floor(u[:, 12] * 30)).astype(np.int64)
        self.signup_date = np.datetime64(SNAPSHOT) - signup_days.astype("timedelta64[D]")
        self.ids = customer_ids(n)

    @property
    def b2b(self) -> np.ndarray:
        return self.segment > 0

    def customers_table(self, complaints_90d: np.ndarray):
        """The CRM's customer table as of SNAPSHOT (an Arrow table with the declared schema)."""
        import pyarrow as pa

        n = self.n
        first = np.array(_FIRST, dtype=object)[np.arange(n) * 7919 % len(_FIRST)]
        last = np.array(_LAST, dtype=object)[np.arange(n) * 104729 % len(_LAST)]
        domains = np.array(["example.com", "example.org", "example.net"], dtype=object)[np.arange(n) % 3]
        email = [f"{f}.{lname}.{i + 1}@{d}" for i, (f, lname, d) in enumerate(zip(first, last, domains))]
        handle = [f"@{f}{lname[:3]}{i + 1:x}" for i, (f, lname) in enumerate(zip(first, last))]
        linkedin = [
            f"https://www.linkedin.com/in/{f}-{lname}-{i + 1:x}"
            for i, (f, lname) in enumerate(zip(first, last))
        ]
        prospect = self.stage == PROSPECT

        def text(values, valid=None):
            return pa.array(list(values), pa.string(), mask=None if valid is None else ~np.asarray(valid))

        columns = {
            "customer_id": text(self.ids),
            "email": text(email, self.has_email),
            "twitter_handle": text(handle, self.has_twitter),
            "linkedin_url": text(linkedin, self.has_linkedin_url),
            "segment": text(SEGMENTS[self.segment]),
            "region": text(REGIONS[self.region]),
            "lifecycle_stage": text(STAGES[self.stage]),
            "plan": text(PLANS[self.plan], ~prospect),
            "signup_date": pa.array(self.signup_date, pa.date32(), mask=prospect),
            "tenure_months": pa.array(self.tenure_months, pa.int64()),
            "consent_contact": pa.array(self.consent_contact),
            "consent_marketing": pa.array(self.consent_marketing),
            "has_twitter": pa.array(self.has_twitter),
            "has_linkedin": pa.array(self.has_linkedin),
            "has_facebook": pa.array(self.has_facebook),
            "community_member": pa.array(self.community_member),
            "blogger": pa.array(self.blogger),
            "followers": pa.array(self.followers, pa.int64()),
            "lead_score": pa.array(self.lead_score, pa.int64()),
            "nps_score": pa.array(self.nps_score, pa.int64(), mask=~self.nps_surveyed),
            "pre_spend": pa.array(self.pre_spend, pa.float64()),
            "pre_orders": pa.array(self.pre_orders, pa.int64()),
            "days_since_last_purchase": pa.array(self.days_since_last_purchase, pa.int64(), mask=prospect),
            "complaints_90d": pa.array(complaints_90d.astype(np.int64), pa.int64()),
        }
        return pa.table(columns)


_FIRST = (
    "ada alex amir ana ben carla chen dana david elena emma farah felix grace hana ivan jada jonas kai "
    "laura leo lina luca maria mateo mei nadia nina omar paula ravi rosa sam sara sofia tariq tom yara zoe"
).split()
_LAST = (
    "adams baker berg costa diaz evans fischer garcia haas ito jensen khan kim larsen lopez meyer moreau "
    "nakamura novak okafor olsen patel perez rossi sato schmidt silva smith tanaka vargas wagner wang weber "
    "wilson young zhang"
).split()


def _rates(pop: Population) -> dict[tuple[str, str], np.ndarray]:
    """Each customer's organic daily rate of each (channel, event type); 0 off the channel."""
    a, s, e = pop.activity, pop.satisfaction, pop.email_affinity
    tw = pop.has_twitter * 1.0
    cm = pop.community_member * 1.0
    li = pop.has_linkedin * 1.0
    fb = pop.has_facebook * np.where(pop.stage == LAPSED, 0.35, 1.0)  # lapsed customers are quieter
    bl = pop.blogger * pop.blog_activity
    em = (pop.consent_marketing & pop.has_email) * e
    complaint = tw * 0.011 * a * np.exp(-0.6 * s)  # dissatisfied customers complain more
    return {
        ("twitter", "mention"): tw * 0.015 * a,
        ("twitter", "complaint"): complaint,
        ("twitter", "reply"): tw * 0.003 * a + 0.25 * complaint,  # replies mostly happen in complaint threads
        ("twitter", "like"): tw * 0.02 * a,
        ("community", "visit"): cm * 0.04 * a,
        ("community", "post"): cm * 0.02 * a,
        ("community", "question"): cm * 0.007 * a,
        ("community", "answer"): cm * 0.005 * a * (1 + pop.b2b),
        ("community", "answer_accepted"): cm * 0.001 * a,
        ("community", "idea"): cm * 0.0025 * a,
        ("community", "kudos"): cm * 0.01 * a,
        ("linkedin", "profile_view"): li * 0.006 * a,
        ("linkedin", "content_engagement"): li * 0.003 * a,
        ("linkedin", "connection_accepted"): li * 0.0004,
        ("linkedin", "message_reply"): li * 0.0005 * a,
        ("facebook", "like"): fb * 0.012 * a,
        ("facebook", "comment"): fb * 0.005 * a,
        ("facebook", "share"): fb * 0.0015 * a,
        ("facebook", "click"): fb * 0.003 * a,
        ("blog", "post"): bl * 0.01,
        ("blog", "comment"): bl * 0.02,
        ("email", "open"): em * 0.015,
        ("email", "click"): em * 0.004,
        ("email", "unsubscribe"): (em > 0) * 0.00004,
    }


# Sentiment of text events: (mean, sd) before the customer's own tone; events without text have none.
_SENTIMENT = {
    ("twitter", "mention"): (0.25, 0.35),
    ("twitter", "complaint"): (-0.6, 0.25),
    ("twitter", "reply"): (0.0, 0.45),
    ("community", "post"): (0.2, 0.35),
    ("community", "question"): (-0.05, 0.3),
    ("community", "answer"): (0.3, 0.3),
    ("community", "idea"): (0.4, 0.3),
    ("linkedin", "message_reply"): (0.2, 0.3),
    ("facebook", "comment"): (0.15, 0.4),
    ("facebook", "share"): (0.5, 0.3),
    ("blog", "post"): (0.3, 0.35),
    ("blog", "comment"): (0.1, 0.4),
}


def _attrs(rng, pop: Population, channel: str, etype: str, cust: np.ndarray, fx: Fx | None):
    """Sentiment (NaN where the event has no text) and value of each event."""
    n = cust.size
    sentiment = np.full(n, np.nan)
    if (channel, etype) in _SENTIMENT:
        mu, sd = _SENTIMENT[(channel, etype)]
        shift = fx.sentiment if fx else 0.0
        raw = mu + shift + 0.15 * pop.satisfaction[cust] + sd * rng.standard_normal(n)
        sentiment = np.round(np.clip(raw, -1, 1), 3)
    followers = pop.followers[cust]
    if (channel, etype) == ("blog", "post"):  # page views of the post
        value = np.exp(np.log(0.12 * followers + 30) + 0.9 * rng.standard_normal(n))
    elif (channel, etype) == ("facebook", "share"):  # people reached
        value = followers * rng.uniform(0.05, 0.4, n) + 1
    elif (channel, etype) == ("twitter", "mention"):  # impressions
        value = followers * rng.uniform(0.02, 0.3, n) + 1
    elif (channel, etype) == ("community", "visit"):  # minutes on the site
        value = np.exp(np.log(6) + 0.8 * rng.standard_normal(n))
    else:
        value = np.ones(n)
    if fx is not None:
        value = value * fx.value
    return sentiment, np.round(value, 1)


class _Events:
    """Columnar event chunks (customer index, µs timestamp, channel and event codes, sentiment, value)."""

    def __init__(self):
        self.chunks: list[tuple] = []

    def add(self, cust, ts, channel: str, etype: str, sentiment, value):
        if cust.size:
            ch = np.full(cust.size, CHANNELS.index(channel), np.int8)
            et = np.full(cust.size, ALL_EVENT_TYPES.index(etype), np.int16)
            self.chunks.append((cust.astype(np.int32), ts.astype(np.int64), ch, et, sentiment, value))

    def poisson(self, rng, pop, channel, etype, cust, rate, start, end, fx: Fx | None = None):
        """A Poisson process per customer at ``rate`` per day over [start, end) (µs, arrays or scalars)."""
        start = np.broadcast_to(np.asarray(start, np.int64), cust.shape)
        end = np.broadcast_to(np.asarray(end, np.int64), cust.shape)
        span = np.maximum(end - start, 0)
        n = rng.poisson(rate * span / DAY_US)
        rep = np.repeat(np.arange(cust.size), n)
        ts = start[rep] + np.floor(rng.random(rep.size) * span[rep]).astype(np.int64)
        ts = ts - ts % 1_000_000  # whole seconds, like a real event log
        sentiment, value = _attrs(rng, pop, channel, etype, cust[rep], fx)
        self.add(cust[rep], ts, channel, etype, sentiment, value)

    def arrays(self):
        if not self.chunks:
            empty = np.array([], np.int64)
            return (
                empty.astype(np.int32),
                empty,
                empty.astype(np.int8),
                empty.astype(np.int16),
                empty * 1.0,
                empty * 1.0,
            )
        cols = [np.concatenate(parts) for parts in zip(*self.chunks)]
        # By time, then customer, channel and type, as one int64 key (timestamps are whole seconds since
        # HISTORY_START < 2^28; customer < 2^20; channel < 2^3; type < 2^5): much faster than lexsort.
        seconds = (cols[1] - _us(HISTORY_START)) // 1_000_000
        key = (seconds << 28) | (cols[0].astype(np.int64) << 8) | (cols[2].astype(np.int64) << 5) | cols[3]
        order = np.argsort(key, kind="stable")
        return tuple(c[order] for c in cols)


def _events_table(arrays, ids: np.ndarray):
    import pyarrow as pa

    cust, ts, ch, et, sentiment, value = arrays
    return pa.table(
        {
            "customer_id": pa.DictionaryArray.from_arrays(
                pa.array(cust, pa.int32()), pa.array(ids, pa.string())
            ).dictionary_decode(),
            "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us")),
            "channel": pa.DictionaryArray.from_arrays(
                pa.array(ch.astype(np.int32)), pa.array(CHANNELS)
            ).dictionary_decode(),
            "event_type": pa.DictionaryArray.from_arrays(
                pa.array(et.astype(np.int32)), pa.array(ALL_EVENT_TYPES)
            ).dictionary_decode(),
            "sentiment": pa.array(sentiment, pa.float64(), mask=np.isnan(sentiment)),
            "value": pa.array(value, pa.float64()),
        }
    )


def _read_events(path: Path):
    """The events file back as the arrays _Events produces (customer ids -> indices, names -> codes)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    cust = pc.cast(pc.utf8_slice_codeunits(t["customer_id"], 5), "int64").to_numpy() - 1
    ts = t["ts"].cast("int64").to_numpy()
    ch = pc.index_in(t["channel"], value_set=pa.array(CHANNELS)).to_numpy()
    et = pc.index_in(t["event_type"], value_set=pa.array(ALL_EVENT_TYPES)).to_numpy()
    sentiment = t["sentiment"].to_numpy(zero_copy_only=False).astype(np.float64)
    value = t["value"].to_numpy()
    return cust.astype(np.int32), ts, ch.astype(np.int8), et.astype(np.int16), sentiment, value


# ------------------------------------------------------------------------------------------ stage one


def _history(pop: Population, rates, seed: int) -> _Events:
    """Every channel's organic events from HISTORY_START to the start of the channel's first pilot."""
    rng = _rng(seed, _STREAM_HISTORY)
    events = _Events()
    cutoffs = channel_cutoffs()
    start = _us(HISTORY_START)
    for channel, types in EVENT_TYPES.items():
        for etype in types:
            rate = rates[(channel, etype)]
            cust = np.flatnonzero(rate > 0)
            events.poisson(rng, pop, channel, etype, cust, rate[cust], start, cutoffs[channel])
    return events


def _email_sends(pop: Population, seed: int):
    """The email tool's newsletter test: its own send list and its own 50/50 randomisation."""
    import pyarrow as pa

    rng = _rng(seed, _STREAM_SENDS)
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
    start = _us(PILOTS[IMPORTED_PILOT].start) + 9 * HOUR_US  # a 2-hour batch from 9:00 on the start date
    sent = start + np.floor(rng.random(chosen.size) * 2 * 3600).astype(np.int64) * 1_000_000
    return pa.table(
        {
            "customer_id": pa.array(pop.ids[chosen], pa.string()),
            "campaign": pa.array([EMAIL_CAMPAIGN] * chosen.size, pa.string()),
            "variant": pa.array(variant, pa.string()),
            "sent_at": pa.array(sent, pa.int64()).cast(pa.timestamp("us")),
        }
    )


def _renewal_sends(pop: Population, seed: int):
    """The renewal tool's voucher test: its list, half of each segment block to the voucher (0/1), and a
    few rows its suppression list held back (treat NULL)."""
    import pyarrow as pa

    rng = _rng(seed, _STREAM_RENEWAL_SENDS)
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
    start = _us(PILOTS[RENEWAL_PILOT].start) + 8 * HOUR_US  # a 3-hour batch from 8:00 on the start date
    sent = start + np.floor(rng.random(chosen.size) * 3 * 3600).astype(np.int64) * 1_000_000
    return pa.table(
        {
            "customer_id": pa.array(pop.ids[chosen], pa.string()),
            "treat": pa.array(treat, pa.int64(), mask=held),
            "block": pa.array(SEGMENTS[pop.segment[chosen]], pa.string()),
            "sent_at": pa.array(sent, pa.int64()).cast(pa.timestamp("us")),
        }
    )


def build_base(root: Path, seed: int = DEMO_SEED) -> dict:
    """Write the CRM as it was before the pilots under ``root/data/crm``; returns counts and paths.

    Files: ``customers.parquet`` (snapshot as of SNAPSHOT), ``engagement_events.parquet`` (each channel's
    history up to its first pilot), ``email_sends.parquet`` (the newsletter test as the email tool
    randomised it). ``simulate_outcomes`` later adds the pilot period.
    """
    root = Path(root)
    pop = Population(seed)
    rates = _rates(pop)
    arrays = _history(pop, rates, seed).arrays()
    cust, ts, ch, et = arrays[:4]
    snap = _us(SNAPSHOT)
    complaint = (
        (ch == CHANNELS.index("twitter"))
        & (et == ALL_EVENT_TYPES.index("complaint"))
        & (ts >= snap - 90 * DAY_US)
        & (ts < snap)
    )
    complaints_90d = np.bincount(cust[complaint], minlength=pop.n)
    customers = pop.customers_table(complaints_90d)
    events = _events_table(arrays, pop.ids)
    sends = _email_sends(pop, seed)
    renewal = _renewal_sends(pop, seed)
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


# ------------------------------------------------------------------------------------------ stage two


@dataclass
class _Assigned:
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


def _parse_assignments(assignments: dict, pop: Population) -> dict[str, _Assigned]:
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
        if (at_us < _us(pilot.start)).any():
            raise AssignmentError(
                pilot_id,
                f"assigned_at before the pilot's start {pilot.start}: the demo CRM's pre-pilot "
                "history runs up to the start, so nobody can be assigned earlier",
            )
        order = np.argsort(index)
        arm_index = np.array([pilot.arms.index(a) for a in arms], np.int64)
        out[pilot_id] = _Assigned(pilot, index[order], arm_index[order], at_us[order])
    return out


def _email_burst(rng, pop: Population, events: _Events, a: _Assigned) -> dict:
    """The newsletter: one open/click/unsubscribe chance per customer, hours after the send."""
    e = pop.email_affinity[a.cohort]
    p_open = np.clip(0.32 * e**0.5, 0, 0.9)
    p_click = np.clip(0.15 * e**0.7, 0, 0.6)
    p_unsub = np.full(a.cohort.size, EMAIL_UNSUBSCRIBE[0])
    treated = a.arm == 1
    p_click_arm = np.where(treated, p_click * EMAIL_CLICK_MULT, p_click)
    p_unsub_arm = np.where(treated, EMAIL_UNSUBSCRIBE[1], p_unsub)
    u = rng.random((a.cohort.size, 3))
    clicked = u[:, 1] < p_click_arm
    opened = clicked | (u[:, 0] < p_open)
    unsub = u[:, 2] < p_unsub_arm
    for etype, hit, extra in (("open", opened, 0.3), ("click", clicked, 0.5), ("unsubscribe", unsub, 0.0)):
        count = hit * (1 + rng.poisson(extra, a.cohort.size))
        rep = np.repeat(np.arange(a.cohort.size), count)
        delay = np.minimum(rng.exponential(6 * HOUR_US, rep.size), 5 * DAY_US).astype(np.int64)
        ts = a.at[rep] + delay
        ts = ts - ts % 1_000_000
        events.add(a.cohort[rep], ts, "email", etype, np.full(rep.size, np.nan), np.ones(rep.size))
    return {
        "cohort": a.cohort,
        "click": (p_click, p_click * EMAIL_CLICK_MULT),
        "unsubscribe": (p_unsub, np.full(a.cohort.size, EMAIL_UNSUBSCRIBE[1])),
    }


def _pilot_events(pop, rates, seed: int, a: _Assigned, owned: np.ndarray, cutoff: int, events: _Events):
    """The pilot period on the pilot's channel for its cohort: organic gap-fill, then treated rates."""
    p = a.pilot
    rng = _rng(seed, _STREAM_EVENTS, _pilot_stream(p.id))
    keep = ~owned[a.cohort]  # a customer already generated on this channel by an earlier pilot keeps that
    cust, arm, at = a.cohort[keep], a.arm[keep], a.at[keep]
    owned[cust] = True
    activity = pop.activity[cust]
    for etype in EVENT_TYPES[p.channel]:
        base = rates[(p.channel, etype)][cust]
        events.poisson(rng, pop, p.channel, etype, cust, base, cutoff, at)  # between history and assignment
        for k, arm_name in enumerate(p.arms):
            sel = arm == k
            fx = p.events.get(arm_name, {}).get(etype)
            rate = base[sel] if fx is None else base[sel] * fx.mult + fx.add * activity[sel]
            events.poisson(
                rng, pop, p.channel, etype, cust[sel], rate, at[sel], at[sel] + POST_DAYS * DAY_US, fx
            )
    burst = None
    if p.id == IMPORTED_PILOT:
        burst = _email_burst(rng, pop, events, _Assigned(p, cust, arm, at))
    return burst


# Per-customer outcome blocks: each returns its columns (for every customer) and, for the metrics the
# truth reports, the expected value of every customer under each arm.


def _block_fast_reply(rng, pop, rates, arm):
    n = pop.n
    u = rng.random((n, 3))
    z = rng.standard_normal(n)
    complaint = rates[("twitter", "complaint")]
    logit = -2.35 - 0.45 * pop.satisfaction + 0.55 * (pop.stage == AT_RISK) + 0.5 * np.log1p(60 * complaint)
    p0 = _expit(logit)
    p1 = p0 * 0.62  # a reply within the hour keeps 38% of would-be churners
    churned = u[:, 0] < np.where(arm == 1, p1, p0)
    contacts = rng.poisson(0.4 + 60 * complaint)
    tickets = rng.binomial(contacts, np.where(arm == 1, 0.42, 0.60))  # more issues settled in the reply
    slow = np.exp(np.log(480) + 0.9 * z)  # the queue: median 8 hours
    fast = np.exp(np.log(38) + 0.6 * z)
    minutes = np.where((arm == 1) & (u[:, 1] < 0.85), fast, slow)  # the team meets the hour 85% of the time
    minutes = np.where(contacts > 0, np.round(minutes, 1), np.nan)
    cols = {
        "churned_60d": churned,
        "contacts": contacts,
        "tickets": tickets,
        "first_response_minutes": minutes,
    }
    return cols, {"churned_60d": [p0, p1]}


def _block_onboarding(rng, pop, rates, arm):
    u = rng.random(pop.n)
    logit = -0.4 + 0.45 * (pop.activity - 1) + 0.25 * pop.satisfaction + 0.2 * pop.b2b
    p0, p1 = _expit(logit), _expit(logit + 0.34)
    activated = u < np.where(arm == 1, p1, p0)
    tickets = rng.poisson(1.3 * np.exp(-0.2 * pop.satisfaction) * np.where(arm == 1, 0.8, 1.0))
    return {"activated_30d": activated, "tickets_30d": tickets}, {"activated_30d": [p0, p1]}


def _block_social_selling(rng, pop, rates, arm):
    n = pop.n
    u = rng.random((n, 2))
    z = rng.standard_normal(n)
    logit = -3.1 + 0.03 * (pop.lead_score - 50) + 0.4 * pop.intent + 0.3 * (pop.segment == 2)
    p0 = _expit(logit)
    p1 = np.minimum(p0 * 1.55, 0.95)
    opp = u[:, 0] < np.where(arm == 1, p1, p0)
    meetings = rng.poisson((0.25 + 2.5 * p0) * np.where(arm == 1, 1.3, 1.0))
    deal = np.exp(np.log(np.array([3000.0, 14000.0, 48000.0])[pop.segment]) + 0.7 * z)
    dnc = u[:, 1] < 0.01  # no difference between arms: reps were coached not to spam
    cols = {
        "opportunity_created": opp,
        "meetings_booked": meetings,
        "pipeline_value": np.round(opp * deal, 2),
        "do_not_contact": dnc,
    }
    return cols, {"opportunity_created": [p0, p1], "do_not_contact": [np.full(n, 0.01)] * 2}


def _block_expert_answers(rng, pop, rates, arm):
    n = pop.n
    u = rng.random(n)
    logit = -2.3 + 0.4 * pop.intent + 0.3 * (pop.plan == 0) + 0.2 * (pop.activity - 1)
    p0 = _expit(logit)
    upgraded = u < p0  # answering questions did not move upgrades: both arms share p0
    growth = rng.gamma(0.5, 0.06, n)  # organic growth of the account's spend
    uplift = np.exp(np.log(0.4) + 0.5 * rng.standard_normal(n))
    expansion = pop.pre_spend * (growth + upgraded * uplift)
    return {"upgraded_90d": upgraded, "expansion_value": np.round(expansion, 2)}, {"upgraded_90d": [p0, p0]}


def _block_winback(rng, pop, rates, arm):
    n = pop.n
    u = rng.random((n, 2))
    days = pop.days_since_last_purchase
    logit = -2.4 + 0.3 * (pop.activity - 1) - 0.0015 * (days - 180) + 0.2 * pop.satisfaction
    p0 = _expit(logit)
    p_discount = np.minimum(p0 * 1.7, 0.95)  # the comeback discount works; the story post does not
    reactivated = u[:, 0] < np.choose(arm, [p0, p_discount, p0])
    orders = reactivated * (1 + rng.poisson(0.6, n))
    spend = orders * pop.aov * np.exp(0.4 * rng.standard_normal(n)) * np.where(arm == 1, 0.9, 1.0)
    unsub = u[:, 1] < 0.012
    cols = {
        "reactivated_90d": reactivated,
        "orders_90d": orders,
        "spend_90d": np.round(spend, 2),
        "unsubscribed": unsub,
    }
    return cols, {"reactivated_90d": [p0, p_discount, p0], "unsubscribed": [np.full(n, 0.012)] * 3}


def _block_cocreation(rng, pop, rates, arm):
    n = pop.n
    u = rng.random(n)
    logit = -1.35 + 0.4 * (pop.activity - 1) + 0.2 * pop.satisfaction
    p0, p1 = _expit(logit), _expit(logit + 0.38)
    adopted = u < np.where(arm == 1, p1, p0)
    minutes = adopted * np.exp(np.log(75) + 0.3 * (pop.activity - 1) + 1.0 * rng.standard_normal(n))
    minutes = minutes * np.where(arm == 1, 1.15, 1.0)
    return {"adopted_feature": adopted, "feature_minutes_60d": np.round(minutes, 1)}, {
        "adopted_feature": [p0, p1]
    }


def _block_renewal(rng, pop, rates, arm):
    """Renewal within 60 days: the segment's base chance (lower at risk), raised by the voucher; the CRM
    export leaves some statuses NULL at random (``_nulls``: excluded by the analysis, and by the truth)."""
    n = pop.n
    u = rng.random((n, 2))
    p0 = np.clip(RENEWAL_BASE[pop.segment] - 0.12 * (pop.stage == AT_RISK), 0.02, 0.98)
    p1 = np.clip(p0 + RENEWAL_UPLIFT[pop.segment], 0.02, 0.99)
    renewed = (u[:, 0] < np.where(arm == 1, p1, p0)).astype(np.int64)
    nulls = u[:, 1] < RENEWAL_NULL_SHARE
    column = _integer_array(renewed, nulls)
    return {"renewed_60d": column}, {"renewed_60d": [p0, p1], "_nulls": nulls}


def _integer_array(values: np.ndarray, nulls: np.ndarray):
    """A nullable integer column (written as an empty CSV cell where NULL, read back as BIGINT)."""
    import pandas as pd

    return pd.arrays.IntegerArray(values.astype(np.int64), nulls.copy())


def _block_advocates(rng, pop, rates, arm):
    n = pop.n
    u = rng.random(n)
    lam = 0.5 * np.exp(0.25 * (pop.nps_score - 9)) * np.sqrt(pop.activity)
    refs = (u >= 0.55) * rng.poisson(lam)  # most customers never refer anyone; the invitation changed nothing
    mu = 0.45 * lam
    return {"referrals_90d": refs}, {"referrals_90d": [mu, mu]}


_BLOCKS = {
    "service-twitter-fast-reply": ("outcomes", _block_fast_reply),
    "service-community-onboarding": ("outcomes", _block_onboarding),
    "marketing-facebook-winback": ("outcomes", _block_winback),
    "marketing-community-cocreation": ("outcomes", _block_cocreation),
    "pr-facebook-advocate-stories": ("outcomes", _block_advocates),
    "sales-linkedin-social-selling": ("pipeline", _block_social_selling),
    "sales-community-expert-answers": ("pipeline", _block_expert_answers),
    RENEWAL_PILOT: ("outcomes", _block_renewal),
}
# The guardrail metric the truth reports besides the primary: pilot -> (metric, type).
_GUARDRAILS = {
    "sales-linkedin-social-selling": ("do_not_contact", "proportion"),
    "marketing-facebook-winback": ("unsubscribed", "proportion"),
    "marketing-email-social-proof": ("unsubscribed_14d", "proportion"),
}


def _arm_values(
    kind: str, mus: list[np.ndarray], cohort: np.ndarray, present: np.ndarray | None
) -> list[float]:
    """Expected value of the metric under each arm, on the analysis' scale, over the assigned cohort."""
    if present is None:
        return [float(np.mean(mu[cohort])) for mu in mus]
    if kind == "proportion":  # missing rows count as 0
        return [float(np.mean(mu[cohort] * present[cohort])) for mu in mus]
    kept = cohort[present[cohort]]  # missing rows are left out of means
    return [float(np.mean(mu[kept])) for mu in mus]


def _effects(pilot: DemoPilot, values: list[float]) -> dict:
    control = values[0]
    arms = {}
    for k, name in enumerate(pilot.arms[1:], start=1):
        effect = values[k] - control
        arms[name] = {
            "mean": round(values[k], 6),
            "effect": round(effect, 6),
            "lift": round(effect / control, 6) if control else None,
        }
    return {"control_mean": round(control, 6), "arms": arms}


def simulate_outcomes(root: Path, assignments: dict[str, pd.DataFrame], seed: int = DEMO_SEED) -> dict:
    """Write the pilot period for the given assignments; returns row counts and the truth.

    ``assignments`` maps pilot id -> DataFrame(customer_id, arm, assigned_at). Pilots left out run no
    treatment (everyone behaves as under control and the truth omits them). For the imported pilot pass
    ``email_sends_assignment(root)``. Rewrites ``engagement_events.parquet`` (the history, kept as built,
    plus the pilot period), ``outcomes.csv``, ``pipeline.parquet``, ``media_coverage.csv`` and
    ``data/truth.json``; calling it again with the same input writes the same files.
    """
    import pandas as pd

    from labkit.errors import LabkitError

    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file() or not (root / PATHS["engagement_events"]).is_file():
        raise LabkitError(f"no demo CRM under {root / 'data'}: build it first (labkit.demo.build_base)")
    built = json.loads(manifest_path.read_text())
    if built.get("seed") != int(seed):
        raise LabkitError(f"the demo CRM was built with seed {built.get('seed')}, not {seed}; rebuild it")

    pop = Population(seed)
    rates = _rates(pop)
    parsed = _parse_assignments(assignments, pop)
    cutoffs = channel_cutoffs()

    # Events: the history as built (everything before each channel's cutoff), then each pilot's period.
    cust, ts, ch, et, sentiment, value = _read_events(root / PATHS["engagement_events"])
    history = ts < np.array([cutoffs[c] for c in CHANNELS])[ch]
    events = _Events()
    events.chunks.append(tuple(col[history] for col in (cust, ts, ch, et, sentiment, value)))
    owned = {c: np.zeros(pop.n, bool) for c in CHANNELS}
    bursts = {}
    for pilot_id in sorted(parsed, key=lambda i: (PILOTS[i].start, i)):
        a = parsed[pilot_id]
        channel = a.pilot.channel
        bursts[pilot_id] = _pilot_events(pop, rates, seed, a, owned[channel], cutoffs[channel], events)
    arrays = events.arrays()

    # Per-customer tables: every column for every customer, picked by arm; then the CRM's missing rows.
    miss_rng = _rng(seed, _STREAM_MISSING)
    present = {name: miss_rng.random(pop.n) >= share for name, share in MISSING.items()}
    customers = pop.stage != PROSPECT
    tables: dict[str, dict] = {
        "outcomes": {"customer_id": pop.ids, "pre_spend": pop.pre_spend},
        "pipeline": {"customer_id": pop.ids, "pre_spend": pop.pre_spend},
    }
    expected: dict[str, dict[str, list[np.ndarray]]] = {}
    for pilot_id, (table, block) in _BLOCKS.items():
        rng = _rng(seed, _STREAM_OUTCOMES, _pilot_stream(pilot_id))
        arm = parsed[pilot_id].arm_full(pop.n) if pilot_id in parsed else np.zeros(pop.n, np.int64)
        cols, mus = block(rng, pop, rates, arm)
        tables[table].update(cols)
        expected[pilot_id] = mus
    rows = {"outcomes": present["outcomes"] & customers, "pipeline": present["pipeline"]}
    frames = {}
    for table, cols in tables.items():
        frame = pd.DataFrame(
            {k: (cols[k].astype(np.int64) if cols[k].dtype == bool else cols[k]) for k in SCHEMAS[table]}
        )
        frames[table] = frame.loc[rows[table]].reset_index(drop=True)
    frames["media_coverage"] = _media_coverage(
        pop, rates, seed, parsed.get("pr-blogger-early-access"), arrays, present["media_coverage"]
    )

    _write_parquet(root / PATHS["engagement_events"], _events_table(arrays, pop.ids))
    _write_csv(root / PATHS["outcomes"], frames["outcomes"])
    _write_parquet(root / PATHS["pipeline"], _pipeline_arrow(frames["pipeline"]))
    _write_csv(root / PATHS["media_coverage"], frames["media_coverage"])

    truth = _truth(seed, pop, rates, parsed, expected, bursts, present)
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
    import pyarrow as pa

    types = {"VARCHAR": pa.string(), "DOUBLE": pa.float64(), "BIGINT": pa.int64()}
    schema = pa.schema([(name, types[kind]) for name, kind in SCHEMAS["pipeline"].items()])
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False).replace_schema_metadata(None)


def _media_coverage(pop, rates, seed, a: _Assigned | None, arrays, present) -> pd.DataFrame:
    """Blog coverage per blogger over 60 days: posts mentioning us and all posts in our category.

    For the pilot's bloggers it is counted from their blog events in [assigned_at, +60 days); other
    bloggers are tracked by the media-monitoring tool only (drawn from their organic rate).
    """
    import pandas as pd

    rng = _rng(seed, _STREAM_OUTCOMES, _pilot_stream("media_coverage"))
    bloggers = pop.blogger.copy()
    rate = rates[("blog", "post")]
    brand = rng.poisson(BLOG_WINDOW_DAYS * rate)
    if a is not None:
        cust, ts, ch, et = arrays[:4]
        start = np.full(pop.n, np.iinfo(np.int64).max)
        start[a.cohort] = a.at
        post = (ch == CHANNELS.index("blog")) & (et == ALL_EVENT_TYPES.index("post"))
        inside = post & (ts >= start[cust]) & (ts < start[cust] + BLOG_WINDOW_DAYS * DAY_US)
        counted = np.bincount(cust[inside], minlength=pop.n)
        brand[a.cohort] = counted[a.cohort]
        bloggers[a.cohort] = True
    # Competitors' share of the category: the rest of the category's posts by the same blogger.
    other = rng.poisson(BLOG_WINDOW_DAYS * 0.02 * pop.blog_activity)
    keep = bloggers & present
    return pd.DataFrame(
        {
            "customer_id": pop.ids[keep],
            "brand_mentions": brand[keep].astype(np.int64),
            "category_mentions": (brand + other)[keep].astype(np.int64),
        }
    )


def _truth(seed, pop, rates, parsed: dict[str, _Assigned], expected, bursts, present) -> dict:
    pilots = {}
    for pilot_id in sorted(parsed):
        a = parsed[pilot_id]
        p = a.pilot
        cohort = a.cohort
        guardrails = {}
        if pilot_id in _BLOCKS:
            table = _BLOCKS[pilot_id][0]
            mask = present[table] if table != "outcomes" else present[table] & (pop.stage != PROSPECT)
            nulls = expected[pilot_id].get("_nulls")
            if nulls is not None:  # a NULL value inside the table is excluded (DESIGN.md's default)
                cohort = cohort[~(nulls[cohort] & mask[cohort])]
            values = _arm_values(p.metric_type, expected[pilot_id][p.primary], cohort, mask)
            if pilot_id in _GUARDRAILS:
                name, kind = _GUARDRAILS[pilot_id]
                guardrails[name] = _effects(p, _arm_values(kind, expected[pilot_id][name], cohort, mask))
        elif pilot_id == IMPORTED_PILOT:  # clicked_14d and unsubscribed_14d: 'any' over 14 days
            burst = bursts[pilot_id]
            values = _any_within(rates, burst["cohort"], "click", burst["click"], 14)
            unsub = _any_within(rates, burst["cohort"], "unsubscribe", burst["unsubscribe"], 14)
            guardrails["unsubscribed_14d"] = _effects(p, unsub)
        elif pilot_id == "pr-blogger-early-access":  # brand_posts: count of blog posts over 60 days
            base = rates[("blog", "post")][cohort] * 60
            values = [
                float(np.mean(base * fx.mult)) if fx else float(np.mean(base))
                for fx in (p.events.get(arm, {}).get("post") for arm in p.arms)
            ]
        else:  # pragma: no cover - every demo pilot is handled above
            raise AssertionError(pilot_id)
        entry = {
            "function": p.function,
            "channel": p.channel,
            "stage": p.stage,
            "primary_metric": p.primary,
            "metric_type": p.metric_type,
            "direction": p.direction,
            "control_arm": p.control,
            "n_assigned": {arm: int(np.sum(a.arm == k)) for k, arm in enumerate(p.arms)},
        }
        entry.update(_effects(p, values))
        for arm, cls in p.expected.items():
            entry["arms"][arm]["expected"] = cls
        classes = set(p.expected.values())
        entry["expected"] = (
            "harmful" if "harmful" in classes else "positive" if "positive" in classes else "null"
        )
        if guardrails:
            entry["guardrails"] = guardrails
        pilots[pilot_id] = entry
    return {
        "seed": int(seed),
        "about": (
            "True effects the demo generator applied. Per pilot: the primary metric's true control mean and, "
            "per treatment arm, its true mean, effect (treatment - control, on the metric's scale) and lift "
            "(effect / control mean), as the intent-to-treat analysis of DESIGN.md estimates them over the "
            "assigned cohort. expected: positive (moves as hypothesised, detectable at the cap), null (no "
            "effect), harmful (moves against the hypothesis, detectable)."
        ),
        "pilots": pilots,
    }


def _any_within(rates, cohort, etype: str, burst: tuple, days: int) -> list[float]:
    """P(at least one email event of the type within ``days``): organic Poisson or the newsletter's chance."""
    organic = np.exp(-days * rates[("email", etype)][cohort])
    return [float(np.mean(1 - organic * (1 - p))) for p in burst]


def load_truth(root: Path) -> dict:
    """``data/truth.json`` of a demo lab: written by ``simulate_outcomes``."""
    from labkit.errors import LabkitError

    path = Path(root) / TRUTH
    if not path.is_file():
        raise LabkitError(f"{path}: no truth yet; run `labkit demo` (or labkit.demo.simulate_outcomes)")
    return json.loads(path.read_text(encoding="utf-8"))
