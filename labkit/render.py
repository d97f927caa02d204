"""Terminal rendering of plans, assignments and analyses (rich), and JSON printing."""

from __future__ import annotations

import json
import os
import sys

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


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, allow_nan=False)
    if isinstance(value, bool):
        return "true" if value else "false"
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


def _console():
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


def _metric_cells(r: dict) -> tuple[str, ...]:
    """One metric row of an analysis as the strings printed in either layout (table or stacked)."""
    interval = f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}]" if r["ci_low"] is not None else "–"
    lift = f"{_f(r['lift'], '+.1%')}" if r["lift"] is not None else "–"
    return (
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
    columns = ("metric", "role", "arm", "control", "treatment", "effect", "interval", "lift", "p (adj.)", "method")
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
