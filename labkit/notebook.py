"""What the analysis notebooks show: the pilot card, the data-quality table, effect figures, the verdict.

Display only: every number comes from ``labkit.analyze``; nothing here computes a statistic, and
nothing here talks to MLflow (the runner records the notebook's outputs afterwards).

:func:`open_pilot` is how a notebook finds its lab: the same notebook runs under `labkit run` (absolute
paths, working directory at the lab root) and as is in JupyterLab (its kernel's working directory is
``notebooks/``), so relative paths are read from the lab root, found upward as the CLI does.
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from labkit.spec import Pilot

if TYPE_CHECKING:
    from labkit.lab import Lab

# What a (metric, arm) result means, for the figures' colours and legend (see `meaning`).
MEANING_COLOURS = {
    "good": "tab:green",
    "harmful": "tab:red",
    "changed": "tab:blue",
    "unclear": "tab:gray",
}
MEANING_LABELS = {
    "good": "moved the way we want",
    "harmful": "moved the harmful way",
    "changed": "moved (no direction predicted)",
    "unclear": "unclear: the interval spans 0",
}
GUARDRAIL_LABEL = "guardrail (square marker)"

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


def open_pilot(
    pilot: str, lab: str = "", output_dir: str = "", *, start: os.PathLike | None = None
) -> tuple[Lab, Pilot, Path]:
    """(lab, pilot, output folder) for a notebook's parameters, the output folder created.

    ``lab`` empty: the lab found upward from ``start`` (default: the working directory), or
    $LABKIT_LAB — :func:`labkit.lab.find_root`, as the CLI does. Every *relative* path (the lab file,
    a pilot file, the output folder) is read from the lab root, never from the working directory: a
    notebook's kernel runs in ``notebooks/`` in JupyterLab and at the lab root under `labkit run`, and
    its defaults must mean the same in both. ``pilot`` is a pilot file or a pilot id. ``output_dir``
    empty: ``results/scratch/<pilot id>`` of the lab, so an interactive run writes nothing beside the
    notebook (git-ignored, like every run's output)."""
    from labkit.lab import find_root, load_lab
    from labkit.spec import load_pilot

    lab_file = Path(lab) if lab else None
    if lab_file is None or not lab_file.is_absolute():
        root = find_root(Path(start) if start is not None else None)
        lab_file = root / lab_file if lab_file is not None else root
    lab_obj = load_lab(lab_file)
    ref = Path(pilot)
    if not ref.is_absolute() and ref.suffix in (".yaml", ".yml"):
        ref = lab_obj.root / ref
    pilot_obj = load_pilot(ref if ref.suffix in (".yaml", ".yml") else pilot, lab=lab_obj)
    out = Path(output_dir) if output_dir else lab_obj.results_dir / "scratch" / pilot_obj.id
    if not out.is_absolute():
        out = lab_obj.root / out
    out.mkdir(parents=True, exist_ok=True)
    return lab_obj, pilot_obj, out


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


def _interval(row: dict, scale: str = "") -> tuple[float | None, float | None]:
    """The row's interval on the effect (``scale=""``) or lift (``"lift_"``) scale: the multiplicity-adjusted
    one where the analysis gives it (it agrees with ``p_value_adjusted``, which the decision reads), else
    the raw one (guardrails: adjusted == raw). Whether a row is adjusted is read on the effect scale, so
    an adjusted lift interval that is unbounded (Fieller) is None, never silently the raw one."""
    adjusted = row.get("ci_low_adjusted") is not None and row.get("ci_high_adjusted") is not None
    tail = "_adjusted" if adjusted else ""
    return row.get(f"{scale}ci_low{tail}"), row.get(f"{scale}ci_high{tail}")


def meaning(low: float | None, high: float | None, good: str | None) -> str:
    """What an interval of an effect says, given the direction that is good for the metric.

    ``good`` is ``"increase"``, ``"decrease"`` or None (no direction declared: a secondary metric).
    An interval wholly above 0 moved up, wholly below 0 moved down; one that touches or spans 0, or is
    missing, is ``"unclear"``. A move is ``"good"`` in the good direction, ``"harmful"`` against it, and
    ``"changed"`` when no direction was declared. Colour by meaning, not by role: a guardrail that
    improved is good news, never red."""
    if low is None or high is None or not (low > 0 or high < 0):
        return "unclear"
    if good is None:
        return "changed"
    return "good" if (low > 0) == (good == "increase") else "harmful"


def row_meaning(row: dict, pilot: Pilot) -> str:
    """:func:`meaning` of one ``metric_rows`` entry, judged as the decision judges it (labkit.decision).

    The interval is the one that agrees with the p-value the decision reads: ``*_adjusted`` where the
    analysis gives it (Holm for the primary family, the lab's correction for secondary metrics; equal to
    the raw interval for guardrails), else the raw one. The good direction is the hypothesis's for the
    primary metric, the opposite of the harmful direction for a guardrail, none for a secondary metric.
    A guardrail whose point estimate lies past ``max_harm`` in the harmful direction is harmful even when
    its interval spans 0, since that alone breaches it."""
    low, high = _interval(row)
    good = None
    if row.get("role") == "primary":
        good = pilot.spec.hypothesis.direction
    elif row.get("role") == "guardrail":
        guard = next((g for g in pilot.spec.guardrails if g.metric == row.get("metric")), None)
        if guard is not None:
            good = "decrease" if guard.direction == "increase" else "increase"
            rel = guard.max_harm.relative is not None
            value = row.get("lift") if rel else row.get("effect")
            limit = guard.max_harm.relative if rel else guard.max_harm.absolute
            if value is not None and limit is not None:
                past = value > limit if guard.direction == "increase" else value < -limit
                if past:
                    return "harmful"
    return meaning(low, high, good)


def _number(value, kind: str | None) -> str:
    """A mean as people read it: a proportion as a percentage, anything else to three significant digits
    (whole numbers from 1,000 on, with thousands separators), so 477 → 44 reads as one scale."""
    if value is None:
        return "–"
    if kind == "proportion":
        return f"{value:.1%}"
    return f"{value:,.0f}" if abs(value) >= 999.5 else f"{value:.3g}"  # never 1e+03


def _signed(value: float) -> str:
    """An absolute effect with its sign, to three significant digits, never in e-notation from 1,000 on."""
    return f"{value:+,.0f}" if abs(value) >= 999.5 else f"{value:+.3g}"


def _p(value) -> str:
    if value is None:
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def effect_table(result, role: str = "primary"):
    """The effects as a reader wants them: one row per (metric, treatment arm), indexed by the two, with
    four short columns.

    ``metric``, ``arm``, ``control → treatment`` (the two arms' means; proportions as percentages),
    ``lift (interval)`` (relative lift with its interval at 1 − alpha, the multiplicity-adjusted one where
    the analysis gives it, so that it agrees with ``p``; the absolute effect, marked Δ, when the lift is
    undefined), ``p`` (adjusted where the analysis adjusts; raw for guardrails) and ``method``. Every
    number is formatted from ``result.metric_rows``; the full rows (27 columns) stay in
    ``result.metrics`` and results.json. ``role``: ``"primary"``, ``"other"`` (secondary metrics and
    guardrails) or ``"all"``; ``result`` may be the Analysis or its list of rows."""
    import pandas as pd

    rows = getattr(result, "metric_rows", result)
    rows = [r for r in rows if role == "all" or (role == "primary") == (r.get("role") == "primary")]
    out = []
    for r in rows:
        lo, hi = _interval(r, "lift_")
        if r.get("lift") is not None:
            interval = f" ({lo:+.1%} to {hi:+.1%})" if lo is not None and hi is not None else " (unbounded)"
            lift = f"{r['lift']:+.1%}{interval}"
        elif r.get("effect") is not None:
            elo, ehi = _interval(r)
            interval = f" ({_signed(elo)} to {_signed(ehi)})" if elo is not None and ehi is not None else ""
            lift = f"Δ {_signed(r['effect'])}{interval}"
        else:
            lift = "–"
        p = r.get("p_value_adjusted") if r.get("p_value_adjusted") is not None else r.get("p_value")
        metric = r.get("metric", "")
        if role != "primary" and r.get("role") not in (None, "primary"):
            metric = f"{metric} ({r['role']})"
        out.append(
            {
                "metric": metric,
                "arm": r.get("arm"),
                "control → treatment": f"{_number(r.get('mean_control'), r.get('type'))} → "
                f"{_number(r.get('mean_treatment'), r.get('type'))}",
                "lift (interval)": lift,
                "p": _p(p),
                "method": r.get("method") or "–",
            }
        )
    columns = ["metric", "arm", "control → treatment", "lift (interval)", "p", "method"]
    return pd.DataFrame(out, columns=columns).set_index(["metric", "arm"])


def figure_effects(result, pilot: Pilot, role: str = "primary"):
    """Relative lift with its interval per (metric, arm), coloured by what it means (:func:`row_meaning`),
    with a legend; the MDE band on the primary metric.

    The interval drawn is the one :func:`row_meaning` judges (multiplicity-adjusted where the analysis
    adjusts), so a point's colour and whether its bar crosses 0 always agree. The layout is constrained
    (labels, title and legend never overlap) and the figure grows with its rows."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = [
        r
        for r in getattr(result, "metric_rows", [])
        if (role == "all") or (role == "primary") == (r["role"] == "primary")
    ]
    drawn = []
    for r in rows:
        lo, hi = _interval(r, "lift_")
        if r.get("lift") is not None and lo is not None and hi is not None:
            drawn.append((r, lo, hi))
    fig, ax = plt.subplots(figsize=(8, 1.9 + 0.45 * max(len(drawn), 1)), layout="constrained")
    labels = []
    seen: list[str] = []
    for i, (r, lo, hi) in enumerate(drawn):
        what = row_meaning(r, pilot)
        if what not in seen:
            seen.append(what)
        ax.errorbar(
            r["lift"],
            i,
            xerr=[[max(r["lift"] - lo, 0)], [max(hi - r["lift"], 0)]],
            fmt="o" if r["role"] != "guardrail" else "s",
            color=MEANING_COLOURS[what],
            capsize=3,
        )
        role_note = "" if r["role"] == "primary" else f" ({r['role']})"
        labels.append(f"{r['metric']}{role_note} · {r['arm']}")
    ax.axvline(0, color="black", lw=0.8)
    handles = [
        Line2D([], [], color=MEANING_COLOURS[w], marker="o", linestyle="-", label=MEANING_LABELS[w])
        for w in MEANING_COLOURS
        if w in seen
    ]
    if any(r["role"] == "guardrail" for r, _, _ in drawn):
        handles.append(Line2D([], [], color="black", marker="s", linestyle="none", label=GUARDRAIL_LABEL))
    h = pilot.spec.hypothesis
    if role == "primary" and h.mde.relative is not None:
        band = ax.axvspan(-h.mde.relative, h.mde.relative, color="tab:green", alpha=0.08)
        band.set_label("±MDE (relative)")
        handles.append(band)
    ax.set_yticks(range(len(drawn)), labels)
    ax.set_ylim(-0.7, max(len(drawn), 1) - 0.3)
    ax.invert_yaxis()  # the first row on top, as in the table
    ax.set_xlabel("relative lift vs control, with its interval")
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:+.0%}")
    if not drawn:
        ax.text(0.5, 0.5, "no lift to draw (undefined or unbounded)", transform=ax.transAxes, ha="center")
    ax.set_title(f"{pilot.id}: {result.decision}", loc="left")
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=8,
                   frameon=False)  # fmt: skip
    return fig


def show_figure(fig, path: Path, *, dpi: int = 110) -> None:
    """Save ``fig`` to ``path`` and show that very PNG in the notebook, at the size the inline backend would.

    One drawing, not three: ``savefig`` then ``plt.show()`` drew the figure again for the inline PNG, with a
    tight box (a layout pass and a draw), ~0.1 s of CPU per figure in every kernel. The notebook and its
    report show the file that results and MLflow keep. The figure is closed: the cell shows it once."""
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    fig.savefig(path, dpi=dpi)
    display(
        Image(data=Path(path).read_bytes(), format="png", width=round(fig.get_figwidth() * fig.get_dpi()))
    )
    plt.close(fig)  # returns nothing: the last line of a cell shows no path


# The over-time figure's band, by the kind of interval (``labkit.stats.over_time``: ``EffectOverTime.interval``).
OVER_TIME_BANDS = {
    "confidence sequence": "band: confidence sequence (valid at every look)",
    "fixed-horizon": "band: fixed-horizon interval (one planned look; not for daily peeking)",
}
OVER_TIME_KINDS = {"confidence sequence": "confidence sequence", "fixed-horizon": "fixed-horizon interval"}
_LINE_STYLES = ("-", "--", ":", "-.")


def over_time_of(result) -> tuple[list[dict], str] | None:
    """The analysis' over-time rows and the kind of their interval, or None when it has none.

    ``result`` is the Analysis or its results.json dict. The ``over_time`` block is a list of rows (DESIGN.md)
    or a mapping with ``rows`` and ``interval``; the kind is ``over_time_interval`` beside it, else read from
    ``meta.sequential``, which is what decides it (``labkit.stats.over_time``)."""
    data = result if isinstance(result, dict) else result.to_dict()
    block = data.get("over_time")
    rows, kind = (block.get("rows"), block.get("interval")) if isinstance(block, dict) else (block, None)
    kind = kind or data.get("over_time_interval")  # the JSON's top-level label (labkit.over_time)
    if not rows:
        return None
    sequential = (data.get("meta") or {}).get("sequential")
    return list(rows), kind or ("confidence sequence" if sequential else "fixed-horizon")


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


def over_time_figure(rows: list[dict], interval_label: str, *, good: str | None = None):
    """The effect at each day since the start with its interval as a band, one line per treatment arm, and
    the zero line; the title says which kind of interval it is.

    ``rows`` are the ``over_time`` rows (``labkit.stats.over_time.effect_over_time``), ``interval_label`` its
    ``interval`` ("confidence sequence" or "fixed-horizon"), ``good`` the direction that is good for the
    metric (the hypothesis's for the primary). An arm is coloured by what its last day means
    (:func:`meaning`): the curve's answer so far; arms of one meaning differ by line style. A day without an
    interval (no variance yet) is a gap in the band, its point still drawn."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    if interval_label not in OVER_TIME_KINDS:
        raise ValueError(f"interval '{interval_label}' is not one of: {', '.join(OVER_TIME_KINDS)}")
    by_arm: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["day"]):
        by_arm.setdefault(str(r["arm"]), []).append(r)
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    handles = []
    for i, (arm, days) in enumerate(by_arm.items()):
        what = meaning(days[-1].get("ci_low"), days[-1].get("ci_high"), good)
        x = [r["day"] for r in days]
        low, high = [_nan(r.get("ci_low")) for r in days], [_nan(r.get("ci_high")) for r in days]
        ax.fill_between(x, low, high, color=MEANING_COLOURS[what], alpha=0.15, linewidth=0)
        (line,) = ax.plot(
            x, [_nan(r.get("effect")) for r in days], _LINE_STYLES[i % len(_LINE_STYLES)], marker="o",
            markersize=3, color=MEANING_COLOURS[what], label=f"{arm}: {MEANING_LABELS[what]}",
        )  # fmt: skip
        handles.append(line)
    ax.axhline(0, color="black", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("day since the start")
    ax.set_ylabel("effect vs control")
    metrics = ", ".join(dict.fromkeys(str(r["metric"]) for r in rows)) or "effect"
    ax.set_title(f"{metrics}: effect over time, with its {OVER_TIME_KINDS[interval_label]}", loc="left")
    if not handles:
        ax.text(0.5, 0.5, "no days to draw", transform=ax.transAxes, ha="center")
    handles.append(Patch(color="tab:gray", alpha=0.3, label=OVER_TIME_BANDS[interval_label]))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return fig


def segment_forest(rows: list[dict], *, good: str | None = None, alpha: float = 0.05):
    """The effect with its (unadjusted) interval per ``segments`` row (``labkit.segments``), coloured by what
    it means after the correction across segments × arms (``p_value_adjusted`` below ``alpha``: the effect's
    sign against ``good``, the hypothesis's direction). Exploratory segments are hollow and say so; withheld
    cells (``privacy.min_cell_size``) are listed without a number."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.32 * max(len(rows), 1)), layout="constrained")
    labels, seen = [], {}
    for y, r in enumerate(reversed(rows)):
        name = f"{r['column']} = {'(none)' if r['value'] is None else r['value']} · {r['arm']}"
        labels.append(name + (" (exploratory)" if r.get("exploratory") else ""))
        if r.get("effect") is None:
            labels[-1] += " — withheld" if r.get("reason") == "suppressed_small_cell" else " — no estimate"
            continue
        p = r.get("p_value_adjusted")
        moved = p is not None and p < alpha  # significant after the correction: the sign says which way
        what = meaning(r["effect"], r["effect"], good) if moved else "unclear"
        seen[what] = None
        colour = MEANING_COLOURS[what]
        low, high = _nan(r.get("ci_low")), _nan(r.get("ci_high"))
        ax.plot([low, high], [y, y], color=colour, lw=2)
        face = "white" if r.get("exploratory") else colour
        ax.plot([r["effect"]], [y], "o", color=colour, markerfacecolor=face, markersize=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("effect vs control (intervals unadjusted; colours after the correction)")
    metric = next((str(r["metric"]) for r in rows), "primary metric")
    ax.set_title(f"{metric}: effect by segment", loc="left")
    handles = [Line2D([], [], color=MEANING_COLOURS[w], marker="o", label=MEANING_LABELS[w]) for w in seen]
    if any(r.get("exploratory") for r in rows):
        label = "exploratory: added after the first run"
        handles.append(Line2D([], [], color="black", marker="o", mfc="white", ls="none", label=label))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return fig


def verdict_text(result, pilot: Pilot) -> str:
    """The decision in plain words with the next step, for a manager.

    Where the analysis gives a recommendation (the decision weighed with the economics,
    ``labkit.decision.recommend``), it is the next step: a pilot that works but does not pay back must not
    read "roll the change out". Otherwise the decision's generic next step (``NEXT_STEP``)."""
    advice = getattr(result, "recommendation_text", "") or ""
    lines = [
        f"### Decision: **{result.decision}**",
        "",
        result.reason,
        "",
        f"**Recommendation:** {advice}" if advice else f"**Next step.** {NEXT_STEP[result.decision]}",
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
