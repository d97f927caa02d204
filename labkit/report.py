"""The portfolio of ``labkit compare`` as a terminal table, JSON, CSV or one self-contained HTML file.

The HTML report is a single file: its style is inline, the forest plot is an SVG embedded as base64 in an
``<img>`` at the page's width (no external asset, no script), every string that came from a pilot file or
a tag is HTML-escaped, and run descriptions are rendered from their small Markdown, never shown raw.
``log_portfolio`` records the report in the lab's MLflow experiment as a *portfolio* run: tag
``labkit.kind=portfolio`` and no ``labkit.pilot`` tag, so it never counts as a pilot (``latest_runs`` and
the stale-run sweep only look at pilot runs); it always ends FINISHED or FAILED.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import NamedTuple

from labkit.compare import GroupSummary, PilotRow, Portfolio

FORMATS = ("table", "json", "csv", "html")
COLOURS = {"ship": "#1a7f37", "harm": "#cf222e", "no-effect": "#57606a", "inconclusive": "#bf8700",
           "invalid": "#8250df"}  # fmt: skip
RICH = {"ship": "green", "harm": "red", "no-effect": "cyan", "inconclusive": "yellow", "invalid": "magenta"}
CLIP = 3.0  # the forest plot shows gains within ±300 %; a longer interval ends in an arrow
DEFINITIONS = [
    ("gain", "the relative lift of the primary metric signed so that positive is the direction the "
             "hypothesis predicted (a 12 % drop in churn is a gain of +12 %)"),
    ("win rate", "ship / decided pilots, decided = ship + harm + no-effect; inconclusive and invalid pilots "
                 "are tallied but have no verdict yet"),
    ("pooled gain", "DerSimonian–Laird random effects over the group's pilots (τ² truncated at 0); each "
                    "pilot's variance is ((hi − lo) / (2·z))² from its lift interval, z = Φ⁻¹(1 − α/2); "
                    "a group with one pilot is shown as that pilot, not pooled"),
    ("value", "effect per customer × value_per_unit × customers in the treatment arms, signed so a move "
              "in the predicted direction is worth money; its interval from the effect's interval"),
    ("group value", "the sum of the pilots' values; its interval sums their bounds, which is conservative "
                    "(wider than for independent pilots)"),
    ("ROI", "(value − cost) / cost; a group's cost includes pilots without a value estimate"),
    ("recommendation", "the decision weighed with the ROI: scale (ship, and ROI ≥ 0 or no budget), rework "
                       "(ship but ROI < 0: it works, it does not pay back yet), extend (inconclusive), stop "
                       "(harm or no-effect), fix (invalid); with the arm to scale"),
]  # fmt: skip


# --------------------------------------------------------------------------- small formatting


def _num(x, spec: str = ",.0f") -> str:
    return "–" if x is None else format(x, spec)


def _pct(x) -> str:
    if x is None:
        return "–"
    return f"{x:+.0%}" if abs(x) >= 10 else f"{x:+.1%}"


def _short(x) -> str:
    """Money for the terminal: 4,500 · 787k · 1.18M."""
    if x is None:
        return "–"
    if abs(x) >= 1e6:
        return f"{x / 1e6:,.2f}M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:,.0f}k"
    return f"{x:,.0f}"


def _interval(lo, hi, fmt=_pct) -> str:
    return "–" if lo is None or hi is None else f"[{fmt(lo)}, {fmt(hi)}]"


def _sig(x) -> str:
    return format(x, "+.3g")


def _money(x) -> str:
    return _num(x, ",.0f")


def _flags(row: PilotRow) -> list[str]:
    return [name for name, on in (("spec changed", row.spec_changed), ("running", row.running),
                                  ("data changed", row.data_changed)) if on]  # fmt: skip


def _decisions(tally: dict[str, int]) -> str:
    return ", ".join(f"{n} {d}" for d, n in tally.items() if n) or "–"


def _pooled(group, sep: str = " ") -> str:
    if group.pooled_gain is not None:
        return (
            f"{_pct(group.pooled_gain)}{sep}{_interval(group.pooled_gain_ci_low, group.pooled_gain_ci_high)}"
        )
    return "not pooled" if group.pooled_k == 1 else "–"


# --------------------------------------------------------------------------- table, JSON, CSV


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
        from labkit.render import _console

        console = _console()
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
        flags = "".join(f"\n[yellow]{escape(f)}[/]" for f in _flags(r))
        where = " · ".join(getattr(r, d) or "?" for d in others)
        pilots.add_row(
            escape(group) if group != previous else "",
            f"[bold]{escape(r.pilot)}[/]\n[dim]{escape(where)}[/]",
            escape(f"{r.primary_metric or '?'} {'↑' if r.direction == 'increase' else '↓'}{arm}"),
            f"{_pct(r.gain)}\n{_interval(r.gain_ci_low, r.gain_ci_high)}",
            f"[{colour}]{escape(r.decision or '?')}[/]\n→ [bold]{escape(_advice(r))}[/]{flags}",
            _num(r.exposed, ","),
            _short(r.cost),
            f"{_short(r.value)}\n{_interval(r.value_ci_low, r.value_ci_high, _short)}",
            f"{_pct(r.roi)}\n{_interval(r.roi_ci_low, r.roi_ci_high)}",
        )
        previous = group
    _print_fitted(console, pilots, heading="pilot")
    groups = Table(title=f"by {by}, highest ROI first")
    for col in (by, "pilots", "decisions", "win rate", "pooled gain", "τ²", "I²", f"value ({p.currency})",
                "cost", "ROI"):  # fmt: skip
        groups.add_column(col, overflow="fold")
    for g in p.groups:
        pooled = _pooled(g, "\n")
        if g.pooled_k == 1:
            only = next((r for r in p.pilots if r.pilot in g.pilot_ids and r.gain_ci_low is not None), None)
            if only is not None:
                interval = _interval(only.gain_ci_low, only.gain_ci_high)
                pooled = f"1 pilot, not pooled:\n{_pct(only.gain)} {interval}"
        groups.add_row(
            escape(g.group),
            str(g.pilots),
            _decisions(g.decisions),
            "–" if g.win_rate is None else f"{g.win_rate:.0%} of {g.decided}",
            pooled,
            _num(g.tau2, ".3g"),
            "–" if g.i2 is None else f"{g.i2:.0%}",
            f"{_short(g.value)}\n{_interval(g.value_ci_low, g.value_ci_high, _short)}",
            _short(g.cost),
            f"{_pct(g.roi)}\n{_interval(g.roi_ci_low, g.roi_ci_high)}",
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
    """One row per pilot, the fields of ``PilotRow`` as columns; ``pandas.read_csv`` reads it back."""
    import pandas as pd

    from labkit.compare import PilotRow as Row

    columns = list(Row.__dataclass_fields__)
    frame = pd.DataFrame([r.to_dict() for r in p.pilots], columns=columns)
    return frame.to_csv(index=False, lineterminator="\n")


# --------------------------------------------------------------------------- forest plot


class ForestLine(NamedTuple):
    """One row of the forest plot: ``kind`` is group (a heading), pilot (its gain and interval), pooled (the
    group's diamond) or note; ``item`` is the ``GroupSummary`` or ``PilotRow`` it draws."""

    kind: str
    label: str
    item: GroupSummary | PilotRow


def forest_lines(p: Portfolio) -> list[ForestLine]:
    """The forest plot's rows, top to bottom: per group (in the portfolio's order) its heading, its pilots
    (in the portfolio's order), then its pooled diamond — or a note when the group has one pilot."""
    lines: list[ForestLine] = []
    for g in p.groups:
        lines.append(ForestLine("group", g.group, g))
        for r in p.pilots:
            if r.pilot in g.pilot_ids:
                flags = "".join(f" ({f})" for f in _flags(r))
                lines.append(ForestLine("pilot", r.pilot + (f" [{r.arm}]" if r.arms > 1 else "") + flags, r))
        if g.pooled_gain is not None:
            i2 = "" if g.i2 is None else f", I² {g.i2:.0%}"
            lines.append(ForestLine("pooled", f"pooled: {g.pooled_k} pilots{i2}", g))
        elif g.pooled_k == 1:
            lines.append(ForestLine("note", "one pilot: not pooled", g))
    return lines


def forest_png(p: Portfolio) -> bytes:
    """The forest plot (:func:`forest_figure`) as a PNG at 100 dpi."""
    buffer = io.BytesIO()
    forest_figure(p).savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def forest_svg(p: Portfolio) -> bytes:
    """The forest plot as SVG: the HTML report scales it to the page's width, sharp at any size. Text is
    drawn as paths (matplotlib's default ``svg.fonttype``), so no label reaches the file as markup."""
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "labkit"}):
        forest_figure(p).savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return buffer.getvalue()


def forest_figure(p: Portfolio):
    """Every pilot's gain with its interval, grouped as the portfolio is, a pooled diamond per group: the
    rows of ``forest_lines``.

    Drawn with collections (one artist for all intervals, one per decision for the points) and a margin
    sized from the labels instead of ``tight_layout``: a hundred pilots stay well under a second.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import PercentFormatter

    lines = forest_lines(p)
    values = [0.0]
    for kind, _, item in lines:
        if kind == "pilot":
            values += [v for v in (item.gain, item.gain_ci_low, item.gain_ci_high) if v is not None]
        elif kind == "pooled":
            values += [item.pooled_gain_ci_low, item.pooled_gain_ci_high]
    lo, hi = max(min(values), -CLIP), min(max(values), CLIP)
    pad = (hi - lo) * 0.08 or 0.1
    lo, hi = lo - pad, hi + pad

    n = len(lines)
    height = 1.3 + 0.22 * n
    fig = Figure(figsize=(9, height), dpi=100)
    FigureCanvasAgg(fig)
    width_labels = min(0.45, 0.02 + 0.0075 * max(len(label) for _, label, _ in lines))
    fig.subplots_adjust(left=width_labels, right=0.97, top=1 - 0.45 / height, bottom=1.0 / height)
    ax = fig.add_subplot(1, 1, 1)
    segments, seg_colours, clipped, diamonds, separators = [], [], [], [], []
    points: dict[str, list[tuple[float, float]]] = {}
    for i, (kind, _, item) in enumerate(lines):
        y = n - i
        if kind == "group" and i:
            separators.append(y + 0.5)
        elif kind == "pilot":
            colour = COLOURS.get(item.decision or "", "#24292f")
            if item.gain_ci_low is not None and item.gain_ci_high is not None:
                segments.append([(max(item.gain_ci_low, lo), y), (min(item.gain_ci_high, hi), y)])
                seg_colours.append(colour)
                clipped += [(lo, y, "<", colour)] if item.gain_ci_low < lo else []
                clipped += [(hi, y, ">", colour)] if item.gain_ci_high > hi else []
            if item.gain is not None:
                points.setdefault(item.decision or "?", []).append((min(max(item.gain, lo), hi), y))
        elif kind == "pooled":
            a, m, b = item.pooled_gain_ci_low, item.pooled_gain, item.pooled_gain_ci_high
            diamonds.append([(max(a, lo), y), (m, y + 0.3), (min(b, hi), y), (m, y - 0.3)])
    ax.add_collection(LineCollection(segments, colors=seg_colours, linewidths=1.6))
    ax.add_collection(PolyCollection(diamonds, facecolors="#0969da", edgecolors="#0969da"))
    for decision, xy in points.items():
        xs, ys = zip(*xy)
        ax.scatter(xs, ys, marker="s", s=22, color=COLOURS.get(decision, "#24292f"), zorder=3)
    for x, y, marker, colour in clipped:
        ax.scatter([x], [y], marker=marker, s=22, color=colour, zorder=3)
    for y in separators:
        ax.axhline(y, color="#d0d7de", linewidth=0.6)
    ax.axvline(0, color="#57606a", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(n, 0, -1))
    ax.set_yticklabels([label for _, label, _ in lines], fontsize=8)
    for tick, (kind, _, _) in zip(ax.get_yticklabels(), lines):
        if kind == "group":
            tick.set_fontweight("bold")
        elif kind in ("pooled", "note"):
            tick.set_color("#0969da")
    ax.set_ylim(0.4, n + 0.6)
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel(f"gain: relative lift in the predicted direction, {1 - p.alpha:.0%} interval", fontsize=9)
    ax.set_title(f"Pilots by {p.by}: gain with interval; blue diamonds: pooled (random effects)", fontsize=10,
                 loc="left")  # fmt: skip
    shown = [d for d in COLOURS if d in points]
    if shown:
        handles = [Line2D([], [], marker="s", linestyle="", color=COLOURS[d], label=d) for d in shown]
        fig.legend(handles=handles, loc="lower center", fontsize=8, frameon=False, ncols=len(shown))
    return fig


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;color:#24292f}
p,ul{max-width:90rem}img.forest{width:100%;height:auto;display:block}
.recommendation{font-weight:600}
table{border-collapse:collapse;margin:1rem 0;font-size:.85rem}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}th{background:#f6f8fa}
.answer{font-size:1.1rem;font-weight:600}
.flag{color:#9a6700;font-weight:600}.muted{color:#57606a;font-size:.85rem}.note{white-space:pre-wrap}
img{max-width:100%}section.pilot{border-top:1px solid #d0d7de;padding-top:.5rem}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _tr(cells, header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    """One line of a run description's Markdown as HTML: escaped first, then ``**bold**`` and
    ```code```; a stray ``**`` is dropped rather than shown."""
    out = _CODE.sub(r"<code>\1</code>", _BOLD.sub(r"<b>\1</b>", _e(text)))
    return out.replace("**", "")


def markdown_html(text: str) -> str:
    """The small Markdown a run description uses (labkit.pipeline.build_record): paragraphs, ``- `` lists,
    ``**bold**`` and ```code```, as HTML — every character of the text escaped (a pilot file's free text
    is never markup)."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        para: list[str] = []
        items: list[str] = []
        for line in block.splitlines():
            if line.startswith("- "):
                if para:
                    out.append("<p>" + "<br>".join(para) + "</p>")
                    para = []
                items.append(f"<li>{_inline(line[2:])}</li>")
            else:
                if items:
                    out.append("<ul>" + "".join(items) + "</ul>")
                    items = []
                para.append(_inline(line))
        if para:
            out.append("<p>" + "<br>".join(para) + "</p>")
        if items:
            out.append("<ul>" + "".join(items) + "</ul>")
    return "".join(out)


def _href(target: str) -> str:
    return _e(urllib.parse.quote(target, safe="/:#?&=.-_~"))


def _links(r: PilotRow, root: str | None, here: Path) -> str:
    """Links of a pilot row: its MLflow run (a tracking server only: a local store has no address until
    `labkit ui` serves it) and its notebook report (a relative file link, from where the report is written)."""
    links = []
    if r.run_url:
        links.append(f'<a href="{_href(r.run_url)}">MLflow run</a>')
    if r.notebook_report and root:
        relative = os.path.relpath(Path(root) / r.notebook_report, here)
        links.append(f'<a href="{_href(Path(relative).as_posix())}">notebook report</a>')
    return " · ".join(links)


def _advice(r: PilotRow) -> str:
    if not r.recommendation:
        return "–"
    arm = f" ({r.recommendation_arm})" if r.recommendation_arm else ""
    return f"{r.recommendation}{arm}"


def to_html(p: Portfolio, *, output: str | Path | None = None) -> str:
    """One self-contained HTML file: answer, forest plot, group summary, the pilots and their decisions.

    The forest plot is an SVG embedded as a data URI, drawn at the page's width. Each pilot row links to
    its MLflow run when the store is a tracking server, and to its notebook report by a path relative to
    ``output`` (the file being written; the current folder when the report goes to stdout, as with
    ``labkit compare --format html > report.html``). No local path appears as text: the store is named only
    when it is a server. Run descriptions are rendered from their Markdown (:func:`markdown_html`)."""
    svg = base64.b64encode(forest_svg(p)).decode("ascii")
    here = Path(output).resolve().parent if output else Path.cwd()
    by = _e(p.by)
    group_rows = [_tr([by, "pilots", "decisions", "win rate", "pooled gain", "τ²", "I²",
                       f"value ({_e(p.currency)})", "cost", "ROI", "note"], header=True)]  # fmt: skip
    for g in p.groups:
        group_rows.append(_tr([
            _e(g.group), g.pilots, _e(_decisions(g.decisions)),
            "–" if g.win_rate is None else f"{g.win_rate:.0%} of {g.decided}", _e(_pooled(g)),
            _num(g.tau2, ".3g"), "–" if g.i2 is None else f"{g.i2:.0%}",
            f"{_money(g.value)} {_interval(g.value_ci_low, g.value_ci_high, _money)}", _money(g.cost),
            f"{_pct(g.roi)} {_interval(g.roi_ci_low, g.roi_ci_high)}", _e(g.note or ""),
        ]))  # fmt: skip
    pilot_rows = [_tr(["pilot", "function", "channel", "stage", "primary (arm)", "effect", "lift", "gain",
                       "decision", "recommendation", "exposed", "cost", "value", "ROI", "flags", "links"],
                      header=True)]  # fmt: skip
    for r in p.pilots:
        arm = f" ({_e(r.arm)}, best of {r.arms})" if r.arms > 1 else (f" ({_e(r.arm)})" if r.arm else "")
        pilot_rows.append(_tr([
            f'<a href="#pilot-{_e(r.pilot)}">{_e(r.pilot)}</a>', _e(r.function), _e(r.channel), _e(r.stage),
            f"{_e(r.primary_metric)} {'↑' if r.direction == 'increase' else '↓'}{arm}",
            f"{_num(r.effect, '+.4g')} {_interval(r.effect_ci_low, r.effect_ci_high, _sig)}",
            f"{_pct(r.lift)} {_interval(r.lift_ci_low, r.lift_ci_high)}",
            f"{_pct(r.gain)} {_interval(r.gain_ci_low, r.gain_ci_high)}",
            f'<b style="color:{COLOURS.get(r.decision or "", "#24292f")}">{_e(r.decision or "?")}</b>',
            f'<span class="recommendation">{_e(_advice(r))}</span>',
            _num(r.exposed, ","), _money(r.cost),
            f"{_money(r.value)} {_interval(r.value_ci_low, r.value_ci_high, _money)}",
            f"{_pct(r.roi)} {_interval(r.roi_ci_low, r.roi_ci_high)}",
            f'<span class="flag">{_e(", ".join(_flags(r)))}</span>', _links(r, p.root, here),
        ]))  # fmt: skip
    sections = []
    for r in p.pilots:
        flags = f' <span class="flag">({_e(", ".join(_flags(r)))})</span>' if _flags(r) else ""
        if r.description and r.description != r.hypothesis:
            body = markdown_html(r.description)  # decision, recommendation, ROI, hypothesis: said once
        else:
            body = (
                f"<p><b>Hypothesis.</b> {_e(r.hypothesis or '–')}</p>"
                f"<p><b>Decision:</b> {_e(r.decision or '?')}; recommendation: {_e(_advice(r))}</p>"
            )
        links = _links(r, p.root, here)
        sections.append(
            f'<section class="pilot" id="pilot-{_e(r.pilot)}">'
            f"<h3>{_e(r.pilot)}: {_e(r.title or '')}{flags}</h3>{body}"
            f'<p class="muted">Gain {_pct(r.gain)} {_interval(r.gain_ci_low, r.gain_ci_high)} on '
            f"{_e(r.primary_metric)}{f' (arm {_e(r.arm)})' if r.arm else ''}; run {_e(r.run_name)} "
            f"({_e(r.run_id)}), started {_e(r.started_at)}.{f' {links}' if links else ''}</p></section>"
        )
    filters = ", ".join(f"{_e(k)} = {_e(v)}" for k, v in p.filters.items()) or "none"
    warnings = "".join(f"<li>{_e(w)}</li>" for w in p.warnings)
    definitions = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in DEFINITIONS)
    server = p.store if p.store.startswith(("http://", "https://")) else None
    where = f" at {_e(server)}" if server else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>labkit portfolio: {_e(p.lab)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Portfolio of {_e(p.lab)}</h1>"
        f'<p class="muted">{len(p.pilots)} pilot(s), latest finished run of each, from the MLflow experiment '
        f"{_e(p.experiment)}{where}; grouped by {by}; filters: {filters}; "
        f"generated {_e(p.generated_at)}.</p>"
        f'<p class="answer">{_e(p.answer)}</p>'
        + (f'<ul class="flag">{warnings}</ul>' if warnings else "")
        + f'<h2>Gain of every pilot</h2><img class="forest" alt="forest plot of every pilot\'s gain by {by}" '
        f'src="data:image/svg+xml;base64,{svg}">'
        f"<h2>By {by}</h2><table>{''.join(group_rows)}</table>"
        f"<h2>Pilots</h2><table>{''.join(pilot_rows)}</table>"
        f"<h2>Decisions and recommendations</h2>{''.join(sections)}"
        f'<h2>Definitions</h2><ul class="muted">{definitions}</ul>'
        "</body></html>\n"
    )


def render(p: Portfolio, fmt: str, *, output: str | Path | None = None) -> str:
    """The portfolio as text in ``fmt`` (json, csv, html); ``table`` renders to plain text. ``output``: the
    file the text goes to (the HTML report's relative links start there)."""
    if fmt == "json":
        return to_json(p)
    if fmt == "csv":
        return to_csv(p)
    if fmt == "html":
        return to_html(p, output=output)
    if fmt == "table":
        from rich.console import Console

        console = Console(file=io.StringIO(), width=200, no_color=True, force_terminal=False)
        render_table(p, console)
        return console.file.getvalue()
    from labkit.errors import LabkitError

    raise LabkitError(f"--format: unknown format '{fmt}'; allowed: {', '.join(FORMATS)}")


def write_output(text: str, target: str | Path) -> Path:
    """Write a report atomically (temp file, fsync, rename)."""
    import os

    from labkit.analysis import write_atomic

    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # a report is for sharing: the usual file mode, not the temp file's 0600
    return path


# --------------------------------------------------------------------------- MLflow


def log_portfolio(lab, p: Portfolio, html_text: str | None = None) -> str:
    """Record the report as one FINISHED portfolio run (tag ``labkit.kind=portfolio``); returns its id."""
    import tempfile
    import time

    from mlflow.entities import Metric, Param

    from labkit.compare import TAG_KIND, open_tracker
    from labkit.tracking import NOTE

    html_text = html_text if html_text is not None else to_html(p)
    tracker = open_tracker(lab)
    tracker.prepare()
    client = tracker._client
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    tags = {TAG_KIND: "portfolio", "labkit.by": p.by, NOTE: f"Portfolio by {p.by}: {p.answer}."}
    tracker._check_tags(tags)
    run = tracker._call(
        "creating the portfolio run", client.create_run, tracker.experiment_id,
        run_name=f"portfolio by {p.by} {stamp}", tags=tags,
    )  # fmt: skip
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        metrics = {"pilots": float(len(p.pilots))}
        for g in p.groups:
            for key in ("roi", "value", "cost", "win_rate", "pooled_gain"):
                value = getattr(g, key)
                if value is not None:
                    metrics[f"{p.by}.{g.group}.{key}"] = float(value)
        params = {"by": p.by, **{f"filter.{k}": v for k, v in p.filters.items()}}
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in list(metrics.items())[:1000]],
            params=[Param(k, v) for k, v in params.items()],
        )
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "portfolio.html").write_text(html_text, encoding="utf-8")
            (Path(folder) / "portfolio.json").write_text(to_json(p), encoding="utf-8")
            client.log_artifact(run_id, str(Path(folder) / "portfolio.html"))
            client.log_artifact(run_id, str(Path(folder) / "portfolio.json"))
        client.set_terminated(run_id, status="FINISHED")
    except BaseException as exc:
        try:
            client.set_terminated(run_id, status="FAILED")
        except Exception:
            pass
        if isinstance(exc, Exception):
            raise tracker._error("recording the portfolio run", exc) from exc
        raise
    return run_id
