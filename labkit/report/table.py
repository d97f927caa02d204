"""The portfolio in the terminal (two rich tables, or blocks where they do not fit), as JSON and as CSV."""

from __future__ import annotations

import json

from labkit.leadership import PilotRow, Portfolio
from labkit.report import cells

RICH = {"ship": "green", "harm": "red", "no-effect": "cyan", "inconclusive": "yellow", "invalid": "magenta"}


def _print_fitted(console, table, heading: str | None = None) -> None:
    """The table when it fits the width; else each row as a block of "column  value" lines, so no pilot
    id, decision or number is cut or folded. The block's heading is the ``heading`` field (else the first
    column); a two-line header over two-line cells gives two fields, and a blank cell repeats the one above
    (the table leaves a group's name blank after its first row)."""
    from rich.text import Text

    from labkit.render import fits, print_stacked

    if fits(console, table):
        console.print(table)
        return

    def lines(cell) -> list[str]:
        return [" ".join(line.split()) for line in Text.from_markup(str(cell)).plain.splitlines()]

    headers = [lines(c.header) for c in table.columns]
    columns = [list(c.cells) for c in table.columns]
    blocks, above = [], [""] * len(columns)
    for i in range(table.row_count):
        fields = []
        for j, (header, column) in enumerate(zip(headers, columns)):
            value = lines(column[i]) or [above[j]]
            above[j] = " ".join(value)
            pairs = zip(header, value) if len(header) == len(value) else [(" ".join(header), " ".join(value))]
            fields += [(k, v) for k, v in pairs]
        key = heading if any(k == heading for k, _ in fields) else fields[0][0]
        blocks.append((dict(fields)[key], [(k, v) for k, v in fields if k != key]))
    print_stacked(console, " ".join(lines(table.title or "")), blocks)


def render_table(p: Portfolio, console=None) -> None:
    """Two rich tables (pilots, then groups), the answer, the definitions' short form and the warnings."""
    from rich.markup import escape
    from rich.table import Table

    if console is None:  # a terminal's width, COLUMNS, or piped: plain text at full width (labkit.render)
        from labkit.render import terminal_console

        console = terminal_console()
    by = p.by
    others = [d for d in ("function", "channel", "stage") if d != by]
    pilots = Table(title=f"{len(p.pilots)} pilot(s): the latest finished run of each, by {by}")
    for col in (by, f"pilot\n{' · '.join(others)}", "primary ↑↓\n(arm)", "gain", "decision\n→ next", "exposed",
                f"cost\n({p.currency})", "value", "ROI"):  # fmt: skip
        pilots.add_column(col, overflow="fold")
    previous = None
    for r in p.pilots:
        arm = f"\n({r.arm}, best of {r.arms})" if r.arms > 1 else (f"\n({r.arm})" if r.arm else "")
        colour = RICH.get(r.decision or "", "white")
        group = getattr(r, by) or "unknown"
        flags = "".join(f"\n[yellow]{escape(f)}[/]" for f in cells.flags(r))
        where = " · ".join(getattr(r, d) or "?" for d in others)
        pilots.add_row(
            escape(group) if group != previous else "",
            f"[bold]{escape(r.pilot)}[/]\n[dim]{escape(where)}[/]",
            escape(f"{r.primary_metric or '?'} {'↑' if r.direction == 'increase' else '↓'}{arm}"),
            f"{cells.pct(r.gain)}\n{cells.interval(r.gain_ci_low, r.gain_ci_high)}",
            f"[{colour}]{escape(r.decision or '?')}[/]\n→ [bold]{escape(cells.advice(r))}[/]{flags}",
            cells.num(r.exposed, ","),
            cells.short(r.cost),
            f"{cells.short(r.value)}\n{cells.interval(r.value_ci_low, r.value_ci_high, cells.short)}",
            f"{cells.pct(r.roi)}\n{cells.interval(r.roi_ci_low, r.roi_ci_high)}",
        )
        previous = group
    _print_fitted(console, pilots, heading="pilot")
    groups = Table(title=f"by {by}, highest ROI first")
    for col in (by, "pilots", "decisions", "win rate", "pooled gain", "τ²", "I²", f"value ({p.currency})",
                "cost", "ROI"):  # fmt: skip
        groups.add_column(col, overflow="fold")
    for g in p.groups:
        pooled = cells.pooled(g, "\n")
        if g.pooled_k == 1:
            only = next((r for r in p.pilots if r.pilot in g.pilot_ids and r.gain_ci_low is not None), None)
            if only is not None:
                interval = cells.interval(only.gain_ci_low, only.gain_ci_high)
                pooled = f"1 pilot, not pooled:\n{cells.pct(only.gain)} {interval}"
        groups.add_row(
            escape(g.group),
            str(g.pilots),
            cells.decisions(g.decisions),
            "–" if g.win_rate is None else f"{g.win_rate:.0%} of {g.decided}",
            pooled,
            cells.num(g.tau2, ".3g"),
            "–" if g.i2 is None else f"{g.i2:.0%}",
            f"{cells.short(g.value)}\n{cells.interval(g.value_ci_low, g.value_ci_high, cells.short)}",
            cells.short(g.cost),
            f"{cells.pct(g.roi)}\n{cells.interval(g.roi_ci_low, g.roi_ci_high)}",
        )
    _print_fitted(console, groups)
    console.print(f"[bold]{escape(p.answer)}[/bold]")
    level = f"{1 - p.alpha:.0%}"
    console.print(
        f"gain = relative lift of the primary metric in the direction the hypothesis predicted (↑/↓); "
        f"intervals at each pilot's level ({level} by default), pooled gain by DerSimonian–Laird at {level}; "
        "win rate = ship / (ship + harm + no-effect); a group's value interval adds its pilots' bounds "
        "(conservative); ROI = (value − cost) / cost. Definitions: README, labkit/compare.py.",
        style="dim",
    )
    for w in p.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}")


def to_json(p: Portfolio) -> str:
    return json.dumps(p.to_dict(), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def to_csv(p: Portfolio) -> str:
    """One row per pilot, the fields of ``PilotRow`` as columns; ``pandas.read_csv`` reads it back. Text a
    spreadsheet would run as a formula (a title starting with ``=``) gets a leading apostrophe
    (labkit.render.spreadsheet_text)."""
    import pandas as pd

    from labkit.render import spreadsheet_text

    columns = list(PilotRow.__dataclass_fields__)
    rows = [
        {k: spreadsheet_text(v) if isinstance(v, str) else v for k, v in r.to_dict().items()}
        for r in p.pilots
    ]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.to_csv(index=False, lineterminator="\n")
