"""Terminal rendering of plans, assignments and analyses (rich), and JSON printing."""

from __future__ import annotations

import json
import sys


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _console():
    from rich.console import Console

    return Console()


def _f(v, spec: str = ".4g") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) or (isinstance(v, int) and spec == ","):  # a count reads with its thousands
        return format(v, spec)
    return str(v)


def render_plan(plan) -> None:
    from rich.table import Table

    table = Table(title=f"plan: {plan.pilot} (primary metric {plan.metric})", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for label, value in [
        ("baseline mean", _f(plan.baseline_mean)),
        ("baseline SD per customer", _f(plan.baseline_sd)),
        ("baseline from", _baseline_source(plan)),
        ("MDE (absolute)", _f(plan.mde_abs)),
        ("alpha / power", f"{plan.alpha:g} / {plan.power:g}"),
        ("customers needed per arm", _per_arm(plan)),
        ("customers needed in all", _f(plan.required_total, ",")),
        (
            "MDE reachable at the cap",
            f"{_f(plan.mde_at_cap)} ({_f(plan.mde_at_cap_relative, '.1%')} relative)",
        ),
        ("powered at the cap", _f(plan.powered)),
    ]:
        table.add_row(label, value)
    console = _console()
    console.print(table)
    for w in plan.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")


def _baseline_source(plan) -> str:
    """Which baseline the plan rests on: data (and how many customers) or the pilot's assumption."""
    if plan.baseline_from == "assumption":
        return "assumed (hypothesis.baseline): no usable data yet"
    return f"data: {plan.baseline_n:,} customers ({plan.baseline_from})"


def _per_arm(plan) -> str:
    """One number when the arms are equal, else each arm's: the planned allocation sizes them apart."""
    by_arm = plan.required_by_arm or {}
    if len(set(by_arm.values())) > 1:
        return ", ".join(f"{arm} {n:,}" for arm, n in by_arm.items())
    return _f(plan.required_per_arm, ",")


def render_assignment(pilot, assignment) -> None:
    meta = assignment.meta
    counts = ", ".join(f"{arm} {n:,}" for arm, n in assignment.counts.items())
    console = _console()
    console.print(
        f"{pilot.id}: {sum(assignment.counts.values()):,} customers assigned ({counts}) "
        f"of {meta.get('eligible', '?'):,} eligible -> {pilot.lab.display(assignment.path)}"
    )
    for w in meta.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {w}")


def render_analysis(result) -> None:
    from rich.table import Table

    console = _console()
    colour = {
        "ship": "green",
        "harm": "red",
        "no-effect": "cyan",
        "inconclusive": "yellow",
        "invalid": "magenta",
    }
    console.print(
        f"[bold]{result.pilot}[/bold]: [bold {colour.get(result.decision, 'white')}]{result.decision}"
        f"[/] — {result.reason}"
    )
    srm = result.srm
    console.print(
        f"sample ratio: {', '.join(f'{k} {v:,}' for k, v in srm['counts'].items())} "
        f"(SRM p = {_f(srm['p_value'], '.3g')}, {srm['method']})"
    )
    table = Table()
    for col in (
        "metric",
        "role",
        "arm",
        "control",
        "treatment",
        "effect",
        "interval",
        "lift",
        "p (adj.)",
        "method",
    ):
        table.add_column(col)
    for r in result.metric_rows:
        interval = f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}]" if r["ci_low"] is not None else "–"
        lift = f"{_f(r['lift'], '+.1%')}" if r["lift"] is not None else "–"
        table.add_row(
            r["metric"],
            r["role"],
            r["arm"],
            _f(r["mean_control"]),
            _f(r["mean_treatment"]),
            _f(r["effect"], "+.4g"),
            interval,
            lift,
            _f(r["p_value_adjusted"], ".3g"),
            r["method"] + (f" ({r['reason']})" if r.get("reason") else ""),
        )
    console.print(table)
    roi = result.roi
    if roi and roi.get("value") is not None:
        console.print(
            f"value {roi['value']:,.0f} [{roi['value_ci_low']:,.0f}, {roi['value_ci_high']:,.0f}] "
            f"for a cost of {roi['cost']:,.0f}: ROI {_f(roi['roi'], '+.1%')}"
        )
    advice = getattr(result, "advice", None)
    if advice is not None:  # the decision weighed with the ROI: what to do next
        from rich.markup import escape

        arm = f" (arm {escape(advice.arm)})" if advice.arm else ""
        console.print(f"recommendation: [bold]{advice.recommendation}[/bold]{arm} — {escape(advice.reason)}")
    for w in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
