"""What the analysis notebooks show: the pilot card, the data-quality table, effect figures, the verdict.

Display only: every number comes from ``labkit.analyze``; nothing here computes a statistic, and
nothing here talks to MLflow (the runner records the notebook's outputs afterwards).
"""

from __future__ import annotations

from html import escape

from labkit.spec import Pilot

NEXT_STEP = {
    "ship": "Roll the change out to the whole eligible population, keep the guardrails monitored, and log "
    "the decision.",
    "harm": "Stop the pilot, revert the change for the treated customers, and review what went wrong before "
    "any re-test.",
    "no-effect": "Stop spending on this channel for this goal; the effect, if any, is too small to matter.",
    "inconclusive": "Keep the pilot running or widen the cap (see the plan) before deciding; do not act on "
    "the point estimate.",
    "invalid": "Fix the assignment or the data first; no effect from this run can be trusted.",
}


def _text(value) -> str:
    """Free text of a pilot or lab file as Markdown text: HTML in it is shown, never run (nbconvert's HTML
    export, attached to every MLflow run, keeps raw tags from Markdown)."""
    return escape(str(value), quote=False)


def pilot_card(pilot: Pilot) -> str:
    """Markdown: hypothesis, cohort, arms, metrics and budget; the file's free text escaped."""
    s = pilot.spec
    h, c = s.hypothesis, s.cohort
    mde = f"{h.mde.relative:.0%} relative" if h.mde.relative is not None else f"{h.mde.absolute:g} absolute"
    arms = ", ".join(f"`{a}` {w:.0%}" for a, w in pilot.arms.items())  # normalised: ratios too
    where = (
        "; ".join(f"`{f.column} {f.op} {'' if f.value is None else f.value}`" for f in c.where) or "everyone"
    )
    lines = [
        f"### {_text(s.title)}",
        f"**{s.function}** · {s.channel} · {s.stage} · owner {_text(s.owner)} · pilot `{s.id}`",
        "",
        f"> {_text(h.statement)}",
        "",
        f"- **Primary metric**: `{h.metric}`, predicted to **{h.direction}**; smallest effect worth acting on: {mde}",
        f"- **Cohort**: `{c.source}` where {where}; at most {pilot.cap or 0:,} customers from {pilot.start}",
        f"- **Arms**: {arms} (control `{c.control}`)"
        + (f", stratified by {', '.join(c.stratify_by)}" if c.stratify_by else ""),
        f"- **Metrics**: {', '.join(f'`{m.name}` ({m.type})' for m in s.metrics)}",
    ]
    if s.guardrails:
        lines.append(
            "- **Guardrails**: " + ", ".join(f"`{g.metric}` must not {g.direction}" for g in s.guardrails)
        )
    if s.budget:
        lines.append(
            f"- **Budget**: {s.budget.cost:,.0f} {_text(pilot.lab.spec.currency)}; one unit of `{h.metric}` per "
            f"customer is worth {s.budget.value_per_unit:,.0f}"
        )
    st = pilot.settings
    lines.append(
        f"- **Analysis**: {st.engine}, alpha {st.alpha:g}, correction {st.correction}"
        + (", sequential (always-valid)" if st.sequential else "")
    )
    return "\n".join(lines)


def quality_table(result):
    """Assigned and missing customers per metric and arm, and the sample-ratio check, as a DataFrame."""
    import pandas as pd

    rows = [
        {
            "check": "sample ratio",
            "arm": arm,
            "assigned": n,
            "missing": None,
            "note": f"SRM p = {result.srm['p_value']:.3g} ({'ok' if result.srm['ok'] else 'MISMATCH'})",
        }
        for arm, n in result.srm["counts"].items()
    ]
    for metric, q in result.data_quality.items():
        for arm, n in q["assigned"].items():
            rows.append(
                {
                    "check": metric,
                    "arm": arm,
                    "assigned": n,
                    "missing": q["missing"].get(arm, 0),
                    "note": "; ".join(
                        x
                        for x in (
                            f"missing: {q['missing_policy']}" if q.get("missing_policy") else "",
                            q.get("covariate"),
                        )
                        if x
                    ),
                }
            )
    return pd.DataFrame(rows)


def figure_effects(result, pilot: Pilot, role: str = "primary"):
    """Relative lift with its interval per (metric, arm); the MDE band on the primary metric."""
    import matplotlib.pyplot as plt

    rows = [
        r for r in result.metric_rows if (role == "all") or (role == "primary") == (r["role"] == "primary")
    ]
    rows = [r for r in rows if r["lift"] is not None and r["lift_ci_low"] is not None]
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.45 * max(len(rows), 1)))
    labels = [f"{r['metric']} · {r['arm']}" for r in rows]
    for i, r in enumerate(rows):
        colour = {"primary": "tab:blue", "guardrail": "tab:red"}.get(r["role"], "tab:gray")
        ax.errorbar(
            r["lift"],
            i,
            xerr=[[r["lift"] - r["lift_ci_low"]], [r["lift_ci_high"] - r["lift"]]],
            fmt="o",
            color=colour,
            capsize=3,
        )
    ax.axvline(0, color="black", lw=0.8)
    h = pilot.spec.hypothesis
    if role == "primary" and h.mde.relative is not None:
        ax.axvspan(-h.mde.relative, h.mde.relative, color="tab:green", alpha=0.08, label="±MDE (relative)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels)
    ax.set_xlabel("relative lift vs control (interval at 1 − alpha)")
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:+.0%}")
    ax.set_title(f"{pilot.id}: {result.decision}")
    fig.tight_layout()
    return fig


def verdict_text(result, pilot: Pilot) -> str:
    """The decision in plain words with the next step, for a manager."""
    lines = [
        f"### Decision: **{result.decision}**",
        "",
        result.reason,
        "",
        f"**Next step.** {NEXT_STEP[result.decision]}",
    ]
    roi = result.roi
    if roi and roi.get("value") is not None:
        cur = _text(pilot.lab.spec.currency)
        lines += [
            "",
            f"**Value.** {roi['value']:,.0f} {cur} (interval {roi['value_ci_low']:,.0f} to "
            f"{roi['value_ci_high']:,.0f}) for a cost of {roi['cost']:,.0f} {cur}"
            + (f": ROI {roi['roi']:+.0%}." if roi.get("roi") is not None else "."),
        ]
    plan = result.plan or {}
    if result.decision == "inconclusive" and plan.get("required_per_arm"):
        lines += [
            "",
            f"**Plan.** {plan['required_per_arm']:,} customers per arm detect the MDE with the planned "
            "power.",
        ]
    return "\n".join(lines)
