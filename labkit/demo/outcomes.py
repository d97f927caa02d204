"""The pilot period's per-customer outcome tables: each pilot's outcome block, the CRM's missing rows, and
the bloggers' media coverage.

The two ambassador pilots share one block (``ambassador_block``): their outcome, purchases, spills over
inside communities, so it depends on who is an ambassador in the whole community, not on one arm alone.

Outcomes are drawn for *every* customer with common random numbers and then picked by arm, so a pilot's
data never depends on another pilot's assignment or on the order of the assignments. Each block also
returns, for the metrics the truth reports, every customer's expected value under each arm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from labkit.demo.catalog import (
    ALL_EVENT_TYPES,
    AMBASSADOR_DIRECT,
    AMBASSADOR_PILOTS,
    AMBASSADOR_SPILLOVER,
    BLOG_WINDOW_DAYS,
    CHANNELS,
    DAY_US,
    MISSING,
    RENEWAL_BASE,
    RENEWAL_NULL_SHARE,
    RENEWAL_PILOT,
    RENEWAL_UPLIFT,
    SCHEMAS,
    STREAM_MISSING,
    STREAM_OUTCOMES,
    pilot_stream,
    stream_rng,
)
from labkit.demo.cohorts import Assigned
from labkit.demo.population import AT_RISK, LAPSED, PROSPECT, Population

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# Per-customer outcome blocks: each returns its columns (for every customer) and, for the metrics the
# truth reports, the expected value of every customer under each arm.
Block = Callable[..., tuple[dict[str, Any], dict[str, Any]]]
BLOCKS: dict[str, tuple[str, Block]] = {}  # pilot id -> (the table its columns go to, its block)


def _block(pilot_id: str, table: str = "outcomes") -> Callable[[Block], Block]:
    """Register the function below as the pilot's outcome block, writing into ``table``."""

    def register(block: Block) -> Block:
        BLOCKS[pilot_id] = (table, block)
        return block

    return register


@_block("service-twitter-fast-reply")
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


@_block("service-community-onboarding")
def _block_onboarding(rng, pop, rates, arm):
    u = rng.random(pop.n)
    logit = -0.4 + 0.45 * (pop.activity - 1) + 0.25 * pop.satisfaction + 0.2 * pop.b2b
    p0, p1 = _expit(logit), _expit(logit + 0.34)
    activated = u < np.where(arm == 1, p1, p0)
    tickets = rng.poisson(1.3 * np.exp(-0.2 * pop.satisfaction) * np.where(arm == 1, 0.8, 1.0))
    return {"activated_30d": activated, "tickets_30d": tickets}, {"activated_30d": [p0, p1]}


@_block("sales-linkedin-social-selling", "pipeline")
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


@_block("sales-community-expert-answers", "pipeline")
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


@_block("marketing-facebook-winback")
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


@_block("marketing-community-cocreation")
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


@_block(RENEWAL_PILOT)
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


@_block("pr-facebook-advocate-stories")
def _block_advocates(rng, pop, rates, arm):
    n = pop.n
    u = rng.random(n)
    lam = 0.5 * np.exp(0.25 * (pop.nps_score - 9)) * np.sqrt(pop.activity)
    refs = (u >= 0.55) * rng.poisson(lam)  # most customers never refer anyone; the invitation changed nothing
    mu = 0.45 * lam
    return {"referrals_90d": refs}, {"referrals_90d": [mu, mu]}


def block_table(pilot_id: str) -> str | None:
    """The per-customer table holding the pilot's primary metric, or None (an events or coverage metric)."""
    if pilot_id in AMBASSADOR_PILOTS:
        return "outcomes"
    return BLOCKS[pilot_id][0] if pilot_id in BLOCKS else None


def _community_share(pop: Population, who: np.ndarray) -> np.ndarray:
    """Per customer, the share of the members of their community that ``who`` holds (0 without one)."""
    member = pop.community >= 0
    k = pop.community_names.size
    size = np.bincount(pop.community[member], minlength=k)
    held = np.bincount(pop.community[member & who], minlength=k)
    c = np.maximum(pop.community, 0)
    return np.where(member, held[c] / np.maximum(size[c], 1), 0.0)


def ambassador_block(rng, pop: Population, assigned: dict[str, Assigned]):
    """``purchased_90d`` for every customer, and per ambassador pilot its expected values.

    The chance to buy within 90 days: a logit of the customer's traits and their community's own effect,
    plus ``AMBASSADOR_DIRECT`` for an ambassador (any pilot's treated customer) and ``AMBASSADOR_SPILLOVER``
    x the share of the community's members who are ambassadors, for every member. Per pilot:

    - ``purchased_90d``: each customer's chance under no ambassador in the cohort's communities, and under
      the whole cohort made ambassadors: the intent-to-treat effect of treating whole communities (what
      the cluster design estimates, and what rolling the programme out would do);
    - ``_design``: the chances the pilot's own treatment - control comparison sees in expectation: the
      cluster pilot's are the above; randomising customers leaves the realised share of ambassadors in
      every community for both arms (a customer's own treatment moves it by 1 / size), so the comparison
      sees the direct effect at that share and misses the spillover;
    - ``_direct``: the direct effect alone (no spillover), to split the truth into its two parts.
    """
    n = pop.n
    u = rng.random(n)
    member = pop.community >= 0
    c = np.maximum(pop.community, 0)
    base = (
        -0.55
        + 0.35 * (pop.activity - 1)
        + 0.2 * pop.satisfaction
        - 0.6 * (pop.stage == LAPSED)
        + member * pop.community_effect[c]
    )
    treated = {pid: _treated(a, n) for pid, a in assigned.items()}
    anyone = np.logical_or.reduce([np.zeros(n, bool), *treated.values()])
    d, s = AMBASSADOR_DIRECT, AMBASSADOR_SPILLOVER
    purchased = u < _expit(base + d * anyone + s * _community_share(pop, anyone))
    size = np.bincount(pop.community[member], minlength=pop.community_names.size)[c]
    expected = {}
    for pid, a in assigned.items():
        others = np.logical_or.reduce([np.zeros(n, bool), *(t for q, t in treated.items() if q != pid)])
        cohort = np.zeros(n, bool)
        cohort[a.cohort] = True
        none = _expit(base + d * others + s * _community_share(pop, others))
        whole = _expit(base + d + s * _community_share(pop, others | cohort))
        if a.pilot.unit is not None:  # whole clusters in one arm: the comparison is the truth's
            design = [none, whole]
        else:  # the realised share of ambassadors, without the customer's own treatment
            rest = _community_share(pop, anyone) - treated[pid] / np.maximum(size, 1) * member
            design = [
                _expit(base + d * others + s * rest),
                _expit(base + d + s * (rest + member / np.maximum(size, 1))),
            ]
        alone = [none, _expit(base + d + s * _community_share(pop, others))]
        expected[pid] = {"purchased_90d": [none, whole], "_design": design, "_direct": alone}
    return {"purchased_90d": purchased}, expected


def _treated(a: Assigned, n: int) -> np.ndarray:
    out = np.zeros(n, bool)
    out[a.cohort[a.arm == 1]] = True
    return out


def media_coverage_frame(pop, rates, seed, a: Assigned | None, arrays, present) -> pd.DataFrame:
    """Blog coverage per blogger over 60 days: posts mentioning us and all posts in our category.

    For the pilot's bloggers it is counted from their blog events in [assigned_at, +60 days); other
    bloggers are tracked by the media-monitoring tool only (drawn from their organic rate).
    """
    import pandas as pd

    rng = stream_rng(seed, STREAM_OUTCOMES, pilot_stream("media_coverage"))
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


def outcome_frames(
    seed: int, pop: Population, rates, parsed: dict[str, Assigned], arrays
) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, list[np.ndarray]]], dict[str, np.ndarray]]:
    """The outcomes, pipeline and media_coverage tables of the pilot period; with them, each pilot's
    expected values under each arm and which rows of each table the CRM has (both for the truth)."""
    import pandas as pd

    # Per-customer tables: every column for every customer, picked by arm; then the CRM's missing rows.
    miss_rng = stream_rng(seed, STREAM_MISSING)
    present = {name: miss_rng.random(pop.n) >= share for name, share in MISSING.items()}
    customers = pop.stage != PROSPECT
    tables: dict[str, dict] = {
        "outcomes": {"customer_id": pop.ids, "pre_spend": pop.pre_spend},
        "pipeline": {"customer_id": pop.ids, "pre_spend": pop.pre_spend},
    }
    expected: dict[str, dict[str, list[np.ndarray]]] = {}
    for pilot_id, (table, block) in BLOCKS.items():
        rng = stream_rng(seed, STREAM_OUTCOMES, pilot_stream(pilot_id))
        arm = parsed[pilot_id].arm_full(pop.n) if pilot_id in parsed else np.zeros(pop.n, np.int64)
        cols, mus = block(rng, pop, rates, arm)
        tables[table].update(cols)
        expected[pilot_id] = mus
    ambassadors = {pid: parsed[pid] for pid in AMBASSADOR_PILOTS if pid in parsed}
    rng = stream_rng(seed, STREAM_OUTCOMES, pilot_stream("community-ambassadors"))
    cols, mus = ambassador_block(rng, pop, ambassadors)
    tables["outcomes"].update(cols)
    expected.update(mus)
    rows = {"outcomes": present["outcomes"] & customers, "pipeline": present["pipeline"]}
    frames = {}
    for table, cols in tables.items():
        frame = pd.DataFrame(
            {k: (cols[k].astype(np.int64) if cols[k].dtype == bool else cols[k]) for k in SCHEMAS[table]}
        )
        frames[table] = frame.loc[rows[table]].reset_index(drop=True)
    frames["media_coverage"] = media_coverage_frame(
        pop, rates, seed, parsed.get("pr-blogger-early-access"), arrays, present["media_coverage"]
    )
    return frames, expected, present
