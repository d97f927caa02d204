"""The demo CRM's engagement events: each channel's organic history and each pilot's period on its channel.

Events are Poisson processes per customer at the customer's daily rate (``population.daily_rates``),
multiplied and shifted by a treatment arm's effects (``catalog.Fx``) from the customer's ``assigned_at``
on; the newsletter of the imported email test is a one-off burst instead. They are held as columnar arrays
(customer index, µs timestamp, channel and event codes, sentiment, value) until written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labkit.demo.catalog import (
    ALL_EVENT_TYPES,
    CHANNELS,
    DAY_US,
    EMAIL_CLICK_MULT,
    EMAIL_UNSUBSCRIBE,
    EVENT_TYPES,
    HISTORY_START,
    HOUR_US,
    IMPORTED_PILOT,
    POST_DAYS,
    STREAM_EVENTS,
    STREAM_HISTORY,
    Fx,
    channel_cutoffs,
    micros,
    pilot_stream,
    stream_rng,
)
from labkit.demo.cohorts import Assigned
from labkit.demo.population import Population

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


class Events:
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
        seconds = (cols[1] - micros(HISTORY_START)) // 1_000_000
        key = (seconds << 28) | (cols[0].astype(np.int64) << 8) | (cols[2].astype(np.int64) << 5) | cols[3]
        order = np.argsort(key, kind="stable")
        return tuple(c[order] for c in cols)


def events_table(arrays, ids: np.ndarray):
    """The event arrays as the engagement_events file's Arrow table (codes back to ids and names)."""
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


def read_events(path: Path):
    """The events file back as the arrays Events produces (customer ids -> indices, names -> codes)."""
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


def history_events(pop: Population, rates, seed: int) -> Events:
    """Every channel's organic events from HISTORY_START to the start of the channel's first pilot."""
    rng = stream_rng(seed, STREAM_HISTORY)
    events = Events()
    cutoffs = channel_cutoffs()
    start = micros(HISTORY_START)
    for channel, types in EVENT_TYPES.items():
        for etype in types:
            rate = rates[(channel, etype)]
            cust = np.flatnonzero(rate > 0)
            events.poisson(rng, pop, channel, etype, cust, rate[cust], start, cutoffs[channel])
    return events


def _email_burst(rng, pop: Population, events: Events, a: Assigned) -> dict:
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


def pilot_events(pop, rates, seed: int, a: Assigned, owned: np.ndarray, cutoff: int, events: Events):
    """The pilot period on the pilot's channel for its cohort: organic gap-fill, then treated rates."""
    p = a.pilot
    rng = stream_rng(seed, STREAM_EVENTS, pilot_stream(p.id))
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
        burst = _email_burst(rng, pop, events, Assigned(p, cust, arm, at))
    return burst
