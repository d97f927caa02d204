"""The forest plot of the portfolio: every pilot's gain with its interval, a pooled diamond per group."""

from __future__ import annotations

import io
from typing import NamedTuple

from labkit.leadership import GroupSummary, PilotRow, Portfolio
from labkit.report import cells

CLIP = 3.0  # the forest plot shows gains within ±300 %; a longer interval ends in an arrow


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
                flags = "".join(f" ({f})" for f in cells.flags(r))
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
            colour = cells.COLOURS.get(item.decision or "", "#24292f")
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
        ax.scatter(xs, ys, marker="s", s=22, color=cells.COLOURS.get(decision, "#24292f"), zorder=3)
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
    shown = [d for d in cells.COLOURS if d in points]
    if shown:
        handles = [Line2D([], [], marker="s", linestyle="", color=cells.COLOURS[d], label=d) for d in shown]
        fig.legend(handles=handles, loc="lower center", fontsize=8, frameon=False, ncols=len(shown))
    return fig
