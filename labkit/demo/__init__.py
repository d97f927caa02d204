"""The demo lab's synthetic CRM: seeded, vectorised, and built in two stages around the assignment.

A real lab sees its CRM in two moments, and so does the demo:

1. ``build_base(root)`` writes what exists *before* any pilot: the customer table (a snapshot as of
   ``SNAPSHOT``), every channel's engagement history up to the first pilot on that channel, the email
   tool's send list for the newsletter test, randomised by the tool itself, and the renewal tool's send
   log of its voucher test (0/1 arms drawn within segment blocks, a few NULL arms).
2. The lab draws each pilot's cohort and arms (``labkit assign``, keyed hashing; not this package).
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

Spillover (#16). Community members belong to communities (``customers.community_id``, nested in regions).
The two ambassador pilots run the same programme, one randomised by community (``cohort.unit_column``),
one by customer, in disjoint regions, after every other community pilot's start (so they take no other
pilot's community events; bloggers, whose blog posts the PR pilot counts, are not eligible). Their outcome,
purchases, rises for the ambassadors and for every member of an ambassador's community
(``outcomes.ambassador_block``): randomising customers lets the control arm share in it. What the truth
means: ``labkit.demo.truth``.

The modules, in the order data flows through them:
``catalog`` (files, schemas, pilots, streams), ``population`` (customers and their rates), ``cohorts``
(assignments as arrays; the imported tests' send logs), ``events`` (engagement history and pilot
periods), ``outcomes`` (per-customer outcome tables), ``truth`` (the true effects), ``build`` (writes
the files), ``run`` (``labkit demo``: the whole workflow).
"""

from labkit.demo.build import build_base, simulate_outcomes
from labkit.demo.catalog import (
    ALL_EVENT_TYPES,
    AMBASSADOR_PILOTS,
    CHANNELS,
    DEMO_SEED,
    EVENT_TYPES,
    HISTORY_START,
    IMPORTED_PILOT,
    IMPORTED_PILOTS,
    MANIFEST,
    MISSING,
    N_CUSTOMERS,
    PATHS,
    PILOTS,
    POST_DAYS,
    RENEWAL_NULL_ARMS,
    RENEWAL_NULL_SHARE,
    RENEWAL_PILOT,
    RENEWAL_SEND_SIZE,
    SCHEMAS,
    SNAPSHOT,
    TRUTH,
    DemoPilot,
    Fx,
    channel_cutoffs,
)
from labkit.demo.cohorts import email_sends_assignment, imported_assignment, renewal_sends_assignment
from labkit.demo.population import SEGMENTS, Population, customer_ids
from labkit.demo.truth import load_truth

__all__ = [
    "ALL_EVENT_TYPES",
    "AMBASSADOR_PILOTS",
    "CHANNELS",
    "DEMO_SEED",
    "EVENT_TYPES",
    "HISTORY_START",
    "IMPORTED_PILOT",
    "IMPORTED_PILOTS",
    "MANIFEST",
    "MISSING",
    "N_CUSTOMERS",
    "PATHS",
    "PILOTS",
    "POST_DAYS",
    "RENEWAL_NULL_ARMS",
    "RENEWAL_NULL_SHARE",
    "RENEWAL_PILOT",
    "RENEWAL_SEND_SIZE",
    "SCHEMAS",
    "SEGMENTS",
    "SNAPSHOT",
    "TRUTH",
    "DemoPilot",
    "Fx",
    "Population",
    "build_base",
    "channel_cutoffs",
    "customer_ids",
    "email_sends_assignment",
    "imported_assignment",
    "load_truth",
    "renewal_sends_assignment",
    "simulate_outcomes",
]
