"""What the demo lab holds: its files and their schemas, the demo pilots, the random streams, the clock.

``PILOTS`` mirrors ``experiments/*.yaml`` (ids, channels, starts, arms, primary metrics; a test keeps them
in step). Every other demo module reads its constants from here, so the generator has one catalogue.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

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
        "community_id": "VARCHAR",  # appended last, so the columns before it read as they always did
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
        "purchased_90d": "BIGINT",
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

# Which events each channel logs. Rates: population.daily_rates; sentiment and values: events.py.
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
    unit: str | None = None  # cohort.unit_column: the cluster a cluster-randomised pilot draws

    @property
    def control(self) -> str:
        return self.arms[0]


# One row per demo pilot, as its experiments/<id>.yaml declares it (type: the primary metric's type).
_PILOT_TABLE = """
id                             function  channel   stage       start      primary             type       direction
service-twitter-fast-reply     service   twitter   retention   2026-03-02 churned_60d         proportion decrease
service-community-onboarding   service   community onboarding  2026-03-16 activated_30d       proportion increase
sales-linkedin-social-selling  sales     linkedin  acquisition 2026-02-02 opportunity_created proportion increase
sales-community-expert-answers sales     community development 2026-05-04 upgraded_90d        proportion increase
marketing-facebook-winback     marketing facebook  winback     2026-06-01 reactivated_90d     proportion increase
marketing-community-cocreation marketing community development 2026-04-13 adopted_feature     proportion increase
marketing-email-social-proof   marketing email     retention   2026-09-07 clicked_14d         proportion increase
sales-email-renewal-voucher    sales     email     retention   2026-10-05 renewed_60d         proportion increase
pr-blogger-early-access        pr        blog      acquisition 2026-07-06 brand_posts         mean       increase
pr-facebook-advocate-stories   pr        facebook  development 2026-06-15 referrals_90d       mean       increase
marketing-ambassadors-by-customer  marketing community retention 2026-06-01 purchased_90d proportion increase
marketing-ambassadors-by-community marketing community retention 2026-08-03 purchased_90d proportion increase
"""
# Each pilot's treatment arms, in order after its control arm "control": the effect each is built to have
# (positive | null | harmful) and its effects on the channel's event types (none: the arm changes no events).
Treatments = dict[str, tuple[str, dict[str, Fx]]]  # arm -> (expected, event type -> effect)
_TREATMENTS: dict[str, Treatments] = {
    "service-twitter-fast-reply": {
        "fast_reply": ("positive", {"reply": Fx(1.6, 0.004, sentiment=0.15), "complaint": Fx(0.8)}),
    },
    "service-community-onboarding": {
        "community_circle": (
            "positive",
            {"visit": Fx(1.5, 0.10), "post": Fx(1.5, 0.03), "question": Fx(1.3, 0.02)},
        ),
    },
    "sales-linkedin-social-selling": {
        "social_selling": (
            "positive",
            {
                "connection_accepted": Fx(1.0, 0.008),
                "message_reply": Fx(1.0, 0.003),
                "content_engagement": Fx(2.0, 0.002),
                "profile_view": Fx(1.5, 0.002),
            },
        ),
    },
    "sales-community-expert-answers": {
        "am_answers": ("null", {"answer_accepted": Fx(1.0, 0.008), "question": Fx(1.3, 0.002)}),
    },
    "marketing-facebook-winback": {
        "discount_post": ("positive", {"click": Fx(1.0, 0.005), "like": Fx(1.2, 0.003)}),
        "story_post": ("null", {"click": Fx(1.0, 0.0025), "like": Fx(1.5, 0.006), "comment": Fx(1.5, 0.002)}),
    },
    "marketing-community-cocreation": {
        "idea_lab": ("positive", {"idea": Fx(2.5, 0.004, sentiment=0.1), "post": Fx(1.3, 0.004)}),
    },
    # the newsletter itself is a one-off burst of events: see events.email_burst
    "marketing-email-social-proof": {"ugc_gallery": ("harmful", {})},
    # imported: the renewal tool's 0/1 arms, drawn within segment blocks (see cohorts.renewal_sends_table)
    "sales-email-renewal-voucher": {"voucher": ("positive", {})},
    "pr-blogger-early-access": {
        "early_access": ("positive", {"post": Fx(1.45, 0.0, sentiment=0.1, value=1.2)}),
    },
    "pr-facebook-advocate-stories": {
        "invited": ("null", {"share": Fx(1.0, 0.006, sentiment=0.1), "comment": Fx(1.2, 0.001)}),
    },
    # the same programme twice: ambassadors post tips and stories; the purchases it brings spill over to
    # every member of the ambassador's community (see outcomes.ambassador_block)
    "marketing-ambassadors-by-customer": {
        "ambassador": ("positive", {"post": Fx(1.0, 0.03, sentiment=0.1), "answer": Fx(1.0, 0.01)}),
    },
    "marketing-ambassadors-by-community": {
        "ambassador": ("positive", {"post": Fx(1.0, 0.03, sentiment=0.1), "answer": Fx(1.0, 0.01)}),
    },
}
# The cluster each cluster-randomised pilot draws (cohort.unit_column); the other pilots draw customers.
_UNITS = {"marketing-ambassadors-by-community": "community_id"}


def _catalogue(table: str, treatments: dict[str, Treatments]) -> dict[str, DemoPilot]:
    """The demo pilots from the table's rows and each pilot's treatment arms."""
    pilots = {}
    for row in table.strip().splitlines()[1:]:
        pilot_id, function, channel, stage, start, primary, metric_type, direction = row.split()
        arms = treatments[pilot_id]
        pilots[pilot_id] = DemoPilot(
            id=pilot_id,
            function=function,
            channel=channel,
            stage=stage,
            start=date.fromisoformat(start),
            arms=("control", *arms),
            primary=primary,
            metric_type=metric_type,
            direction=direction,
            expected={arm: expected for arm, (expected, _) in arms.items()},
            events={arm: effects for arm, (_, effects) in arms.items() if effects},
            unit=_UNITS.get(pilot_id),
        )
    return pilots


PILOTS: dict[str, DemoPilot] = _catalogue(_PILOT_TABLE, _TREATMENTS)

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
# Communities (customers.community_id): every community member belongs to one, nested in its region (the
# members of a region pick its communities by uneven weights); non-members have none (NULL).
COMMUNITIES_PER_REGION = (24, 20, 10, 6)  # na, emea, apac, latam: 60 communities
COMMUNITY_SIZE_SD = 0.7  # log-normal spread of the communities' weights: sizes from ~60 to ~900 members
COMMUNITY_EFFECT_SD = 0.25  # each community's own shift of the purchase logit (its ICC)
# The ambassador programme (purchased_90d, a logit model): an ambassador's own purchases rise by
# DIRECT; every member of a community rises by SPILLOVER x the share of its members who are ambassadors
# (their posts are read by all). Randomising customers leaves the control arm in the same communities as
# the ambassadors, so it gets the spillover too and the comparison sees only the direct effect.
AMBASSADOR_PILOTS = ("marketing-ambassadors-by-community", "marketing-ambassadors-by-customer")
AMBASSADOR_DIRECT = 0.30
AMBASSADOR_SPILLOVER = 0.45

DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600 * 1_000_000

# Every random draw comes from its own stream, SeedSequence([seed, *stream]) (see labkit.demo).
STREAM_POPULATION, STREAM_HISTORY, STREAM_SENDS, STREAM_MISSING = 1, 2, 3, 4
STREAM_RENEWAL_SENDS = 5
STREAM_COMMUNITIES = 6  # community membership and each community's effect: new, so no older draw moves
STREAM_EVENTS, STREAM_OUTCOMES = 100, 200


def stream_rng(seed: int, *stream: int) -> np.random.Generator:
    """The generator of one stream: independent of every other stream and of the order of the draws."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *stream]))


def pilot_stream(pilot_id: str) -> int:
    """A pilot's own stream number (stable across runs and Python versions)."""
    return zlib.crc32(pilot_id.encode())


def micros(d: date | datetime) -> int:
    """Microseconds since the epoch of a naive date or datetime (the demo's timestamps are naive UTC)."""
    if not isinstance(d, datetime):
        d = datetime(d.year, d.month, d.day)
    return int((d - datetime(1970, 1, 1)) // timedelta(microseconds=1))


def channel_cutoffs() -> dict[str, int]:
    """Per channel, the end of the pre-pilot history (µs): the start of the channel's first pilot."""
    out: dict[str, int] = {}
    for p in PILOTS.values():
        out[p.channel] = min(out.get(p.channel, micros(p.start)), micros(p.start))
    return out
