"""The portfolio as one self-contained HTML page.

The page is a single file: its style is inline, the forest plot is an SVG embedded as base64 in an
``<img>`` at the page's width (no external asset, no script), every string that came from a pilot file or
a tag is HTML-escaped, and run descriptions are rendered from their small Markdown, never shown raw.
"""

from __future__ import annotations

import base64
import html
import os
import re
import urllib.parse
from pathlib import Path

from labkit.leadership import PilotRow, Portfolio
from labkit.report import cells
from labkit.report.forest import forest_svg

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


def _tr(items, header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in items) + "</tr>"


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    """One line of a run description's Markdown as HTML: escaped first, then ``**bold**`` and
    ```code```; a stray ``**`` is dropped rather than shown."""
    out = _CODE.sub(r"<code>\1</code>", _BOLD.sub(r"<b>\1</b>", _e(text)))
    return out.replace("**", "")


def markdown_html(text: str) -> str:
    """The small Markdown a run description uses (labkit.tracking.record.build_record): paragraphs, ``- `` lists,
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
        # a file path, every character literal: ``#``, ``?`` and ``%`` in a folder's name are escaped
        links.append(
            f'<a href="{_e(urllib.parse.quote(Path(relative).as_posix(), safe="/"))}">notebook report</a>'
        )
    return " · ".join(links)


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
            _e(g.group), g.pilots, _e(cells.decisions(g.decisions)),
            "–" if g.win_rate is None else f"{g.win_rate:.0%} of {g.decided}", _e(cells.pooled(g)),
            cells.num(g.tau2, ".3g"), "–" if g.i2 is None else f"{g.i2:.0%}",
            f"{cells.money(g.value)} {cells.interval(g.value_ci_low, g.value_ci_high, cells.money)}", cells.money(g.cost),
            f"{cells.pct(g.roi)} {cells.interval(g.roi_ci_low, g.roi_ci_high)}", _e(g.note or ""),
        ]))  # fmt: skip
    pilot_rows = [_tr(["pilot", "function", "channel", "stage", "primary (arm)", "effect", "lift", "gain",
                       "decision", "recommendation", "exposed", "cost", "value", "ROI", "flags", "links"],
                      header=True)]  # fmt: skip
    for r in p.pilots:
        arm = f" ({_e(r.arm)}, best of {r.arms})" if r.arms > 1 else (f" ({_e(r.arm)})" if r.arm else "")
        pilot_rows.append(_tr([
            f'<a href="#pilot-{_e(r.pilot)}">{_e(r.pilot)}</a>', _e(r.function), _e(r.channel), _e(r.stage),
            f"{_e(r.primary_metric)} {'↑' if r.direction == 'increase' else '↓'}{arm}",
            f"{cells.num(r.effect, '+.4g')} {cells.interval(r.effect_ci_low, r.effect_ci_high, cells.sig)}",
            f"{cells.pct(r.lift)} {cells.interval(r.lift_ci_low, r.lift_ci_high)}",
            f"{cells.pct(r.gain)} {cells.interval(r.gain_ci_low, r.gain_ci_high)}",
            f'<b style="color:{cells.COLOURS.get(r.decision or "", "#24292f")}">{_e(r.decision or "?")}</b>',
            f'<span class="recommendation">{_e(cells.advice(r))}</span>',
            cells.num(r.exposed, ","), cells.money(r.cost),
            f"{cells.money(r.value)} {cells.interval(r.value_ci_low, r.value_ci_high, cells.money)}",
            f"{cells.pct(r.roi)} {cells.interval(r.roi_ci_low, r.roi_ci_high)}",
            f'<span class="flag">{_e(", ".join(cells.flags(r)))}</span>', _links(r, p.root, here),
        ]))  # fmt: skip
    sections = []
    for r in p.pilots:
        flags = f' <span class="flag">({_e(", ".join(cells.flags(r)))})</span>' if cells.flags(r) else ""
        if r.description and r.description != r.hypothesis:
            body = markdown_html(r.description)  # decision, recommendation, ROI, hypothesis: said once
        else:
            body = (
                f"<p><b>Hypothesis.</b> {_e(r.hypothesis or '–')}</p>"
                f"<p><b>Decision:</b> {_e(r.decision or '?')}; recommendation: {_e(cells.advice(r))}</p>"
            )
        links = _links(r, p.root, here)
        sections.append(
            f'<section class="pilot" id="pilot-{_e(r.pilot)}">'
            f"<h3>{_e(r.pilot)}: {_e(r.title or '')}{flags}</h3>{body}"
            f'<p class="muted">Gain {cells.pct(r.gain)} {cells.interval(r.gain_ci_low, r.gain_ci_high)} on '
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
