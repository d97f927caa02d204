"""The demo CRM's customers: their attributes (what the CRM shows), their latent traits (what drives their
behaviour, never written) and each customer's organic daily rate of every engagement event.

All of it is drawn from the population stream alone, so every other stream sees the same customers; the
communities came later and have their own stream (``communities``), so adding them moved no other draw.
"""

from __future__ import annotations

import numpy as np

from labkit.demo.catalog import (
    COMMUNITIES_PER_REGION,
    COMMUNITY_EFFECT_SD,
    COMMUNITY_SIZE_SD,
    N_CUSTOMERS,
    SNAPSHOT,
    STREAM_COMMUNITIES,
    STREAM_POPULATION,
    stream_rng,
)

SEGMENTS = np.array(["consumer", "smb", "enterprise"], dtype=object)
REGIONS = np.array(["na", "emea", "apac", "latam"], dtype=object)
STAGES = np.array(["prospect", "onboarding", "active", "at_risk", "lapsed"], dtype=object)
PLANS = np.array(["basic", "plus", "pro"], dtype=object)
PROSPECT, ONBOARDING, ACTIVE, AT_RISK, LAPSED = range(5)
AOV = np.array([65.0, 420.0, 2600.0])  # typical order value by segment


def customer_ids(n: int = N_CUSTOMERS) -> np.ndarray:
    """``CUST-0000001`` ... in index order: customer i has id ``CUST-{i+1:07d}``."""
    return np.array([f"CUST-{i + 1:07d}" for i in range(n)], dtype=object)


class Population:
    """Customer attributes (what the CRM shows) and latent traits (what drives behaviour, never written)."""

    def __init__(self, seed: int, n: int = N_CUSTOMERS):
        rng = stream_rng(seed, STREAM_POPULATION)
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
        self.community, self.community_names, self.community_effect = communities(self, seed)

    @property
    def b2b(self) -> np.ndarray:
        return self.segment > 0

    def customers_table(self, complaints_90d: np.ndarray):
        """The CRM's customer table as of SNAPSHOT (an Arrow table with the declared schema)."""
        import pyarrow as pa

        n = self.n
        first = np.array(FIRST_NAMES, dtype=object)[np.arange(n) * 7919 % len(FIRST_NAMES)]
        last = np.array(LAST_NAMES, dtype=object)[np.arange(n) * 104729 % len(LAST_NAMES)]
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
            "community_id": text(self.community_names[np.maximum(self.community, 0)], self.community >= 0),
        }
        return pa.table(columns)


def communities(pop: Population, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each customer's community (an index into the names; -1 for non-members), the communities' names
    (``<region>-<nn>``) and each community's own effect on purchases (latent, never written).

    Communities are nested in regions: a region's members pick one of its communities by weights drawn
    log-normal, so sizes are uneven. From ``STREAM_COMMUNITIES`` alone: no older draw changes.
    """
    rng = stream_rng(seed, STREAM_COMMUNITIES)
    index = np.full(pop.n, -1, np.int64)
    names: list[str] = []
    for region, count in enumerate(COMMUNITIES_PER_REGION):
        weights = rng.lognormal(0.0, COMMUNITY_SIZE_SD, count)
        members = np.flatnonzero(pop.community_member & (pop.region == region))
        index[members] = len(names) + rng.choice(count, members.size, p=weights / weights.sum())
        names += [f"{REGIONS[region]}-{k + 1:02d}" for k in range(count)]
    effect = rng.normal(0.0, COMMUNITY_EFFECT_SD, len(names))
    return index, np.array(names, dtype=object), effect


FIRST_NAMES = (
    "ada alex amir ana ben carla chen dana david elena emma farah felix grace hana ivan jada jonas kai "
    "laura leo lina luca maria mateo mei nadia nina omar paula ravi rosa sam sara sofia tariq tom yara zoe"
).split()
LAST_NAMES = (
    "adams baker berg costa diaz evans fischer garcia haas ito jensen khan kim larsen lopez meyer moreau "
    "nakamura novak okafor olsen patel perez rossi sato schmidt silva smith tanaka vargas wagner wang weber "
    "wilson young zhang"
).split()


# Each event type's organic daily rate for a customer the channel reaches, and whether it grows with the
# customer's activity; daily_rates adds what depends on more than that (complaints, replies, answers).
_RATE_TABLE = """
twitter   mention             0.015   activity
twitter   complaint           0.011   activity
twitter   reply               0.003   activity
twitter   like                0.02    activity
community visit               0.04    activity
community post                0.02    activity
community question            0.007   activity
community answer              0.005   activity
community answer_accepted     0.001   activity
community idea                0.0025  activity
community kudos               0.01    activity
linkedin  profile_view        0.006   activity
linkedin  content_engagement  0.003   activity
linkedin  connection_accepted 0.0004  -
linkedin  message_reply       0.0005  activity
facebook  like                0.012   activity
facebook  comment             0.005   activity
facebook  share               0.0015  activity
facebook  click               0.003   activity
blog      post                0.01    -
blog      comment             0.02    -
email     open                0.015   -
email     click               0.004   -
"""


def daily_rates(pop: Population) -> dict[tuple[str, str], np.ndarray]:
    """Each customer's organic daily rate of each (channel, event type); 0 off the channel."""
    a, s, e = pop.activity, pop.satisfaction, pop.email_affinity
    em = (pop.consent_marketing & pop.has_email) * e
    reach = {  # how much of each channel a customer has: 0 off it
        "twitter": pop.has_twitter * 1.0,
        "community": pop.community_member * 1.0,
        "linkedin": pop.has_linkedin * 1.0,
        "facebook": pop.has_facebook
        * np.where(pop.stage == LAPSED, 0.35, 1.0),  # lapsed customers are quieter
        "blog": pop.blogger * pop.blog_activity,
        "email": em,
    }
    rates = {}
    for row in _RATE_TABLE.strip().splitlines():
        channel, etype, rate, scale = row.split()
        base = reach[channel] * float(rate)
        rates[(channel, etype)] = base * a if scale == "activity" else base
    complaint = rates[("twitter", "complaint")] * np.exp(-0.6 * s)  # dissatisfied customers complain more
    rates[("twitter", "complaint")] = complaint
    rates[("twitter", "reply")] = (
        rates[("twitter", "reply")] + 0.25 * complaint
    )  # mostly in complaint threads
    rates[("community", "answer")] = rates[("community", "answer")] * (1 + pop.b2b)
    rates[("email", "unsubscribe")] = (em > 0) * 0.00004
    return rates
