"""The known truth of the demo: the effects the generator applied, so that a correct analysis can be checked.

``truth.json`` states, per pilot, the primary metric's true control mean and the true effect of each
treatment arm on the scale DESIGN.md's intent-to-treat analysis estimates: the mean over the *assigned
cohort* of each customer's expected outcome under each arm (expectations over the outcome noise,
conditional on the cohort and on which rows of the per-customer tables exist). Missing rows (a few % per
table, at random, hence equal across arms) count as 0 for proportions and are left out of means, exactly
as the analysis treats them; event metrics have no missing rows. A NULL value inside a table (the renewal
status the CRM export lacks, ``renewed_60d``) is excluded, as DESIGN.md's default ``missing`` policy does;
the renewal truth is over the assigned customers whose status is not NULL.

The ambassador pilots' outcome spills over inside communities (``outcomes.ambassador_block``). Their truth
is the intent-to-treat effect of treating whole communities (the cohort's) against none, for both pilots;
``interference`` adds what each pilot's own comparison estimates in expectation (``expected_estimate``),
its ``bias`` against the truth (none for the pilot randomised by community; for the one randomised by
customer, about the spillover: its control arm shares the ambassadors' communities), and the truth split
into the ambassadors' ``direct`` effect and the ``spillover``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from labkit.demo.catalog import IMPORTED_PILOT, TRUTH, DemoPilot
from labkit.demo.cohorts import Assigned
from labkit.demo.outcomes import block_table
from labkit.demo.population import PROSPECT

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
    """The control mean and, per treatment arm, its mean, effect and lift, rounded as truth.json states them."""
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


def compute_truth(seed, pop, rates, parsed: dict[str, Assigned], expected, bursts, present) -> dict:
    """``truth.json``: per assigned pilot, the true control mean and effects of its primary metric (and of
    its guardrail, where it has one), from the outcome blocks' expected values or the events' rates."""
    pilots = {}
    for pilot_id in sorted(parsed):
        a = parsed[pilot_id]
        p = a.pilot
        cohort = a.cohort
        guardrails = {}
        interference = None
        table = block_table(pilot_id)
        if table is not None:
            mask = present[table] if table != "outcomes" else present[table] & (pop.stage != PROSPECT)
            nulls = expected[pilot_id].get("_nulls")
            if nulls is not None:  # a NULL value inside the table is excluded (DESIGN.md's default)
                cohort = cohort[~(nulls[cohort] & mask[cohort])]
            values = _arm_values(p.metric_type, expected[pilot_id][p.primary], cohort, mask)
            if pilot_id in _GUARDRAILS:
                name, kind = _GUARDRAILS[pilot_id]
                guardrails[name] = _effects(p, _arm_values(kind, expected[pilot_id][name], cohort, mask))
            if "_design" in expected[pilot_id]:
                mus = expected[pilot_id]
                design, direct = (
                    _arm_values(p.metric_type, mus[k], cohort, mask) for k in ("_design", "_direct")
                )
                interference = _interference(p, values, design, direct)
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
        if p.unit is not None:  # the demo's one cluster column: communities (SRM is tested on clusters)
            clusters = pop.community[a.cohort]
            entry["n_clusters"] = {
                arm: int(np.unique(clusters[a.arm == k]).size) for k, arm in enumerate(p.arms)
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
        if interference:
            entry["interference"] = interference
        pilots[pilot_id] = entry
    return {
        "seed": int(seed),
        "about": (
            "True effects the demo generator applied. Per pilot: the primary metric's true control mean and, "
            "per treatment arm, its true mean, effect (treatment - control, on the metric's scale) and lift "
            "(effect / control mean), as the intent-to-treat analysis of DESIGN.md estimates them over the "
            "assigned cohort (for the ambassador pilots, whose effect spills over inside communities: of "
            "treating the cohort's whole communities vs none; interference: what each pilot's own comparison "
            "estimates and its bias). expected: positive (moves as hypothesised, detectable at the cap), null (no "
            "effect), harmful (moves against the hypothesis, detectable)."
        ),
        "pilots": pilots,
    }


def _interference(pilot: DemoPilot, values: list[float], design: list[float], direct: list[float]) -> dict:
    """What the pilot's comparison estimates against the truth (whole communities treated vs none)."""
    effect = values[1] - values[0]
    estimate = design[1] - design[0]
    alone = direct[1] - direct[0]
    return {
        "randomised_by": pilot.unit or "customer",
        "expected_estimate": round(estimate, 6),
        "bias": round(estimate - effect, 6),
        "relative_bias": round((estimate - effect) / effect, 6) if effect else None,
        "direct": round(alone, 6),
        "spillover": round(effect - alone, 6),
    }


def _any_within(rates, cohort, etype: str, burst: tuple, days: int) -> list[float]:
    """P(at least one email event of the type within ``days``): organic Poisson or the newsletter's chance."""
    organic = np.exp(-days * rates[("email", etype)][cohort])
    return [float(np.mean(1 - organic * (1 - p))) for p in burst]


def load_truth(root: Path) -> dict:
    """``data/truth.json`` of a demo lab: written by ``simulate_outcomes``."""
    from labkit.data.backends import engine_error  # a DataError whose line names no one source

    path = Path(root) / TRUTH
    if not path.is_file():
        raise engine_error(f"{path}: no truth yet; run `labkit demo` (or labkit.demo.simulate_outcomes)")
    return json.loads(path.read_text(encoding="utf-8"))
