"""The portfolio of ``labkit compare`` as a terminal table, JSON, CSV or one self-contained HTML file.

``table`` (the terminal, JSON, CSV), ``page`` (the HTML report), ``forest`` (its forest plot) and
``cells`` (the formatting they share). ``log_portfolio`` records the report in the lab's MLflow experiment
through ``Tracker.record_portfolio`` as a *portfolio* run: tag ``labkit.kind=portfolio`` and no
``labkit.pilot`` tag, so it never counts as a pilot (``latest_runs`` and the stale-run sweep only look at
pilot runs); it always ends FINISHED or FAILED.
"""

from __future__ import annotations

import io
from pathlib import Path

from labkit.errors import SpecError
from labkit.leadership import Portfolio
from labkit.report.forest import ForestLine, forest_figure, forest_lines, forest_png, forest_svg
from labkit.report.page import markdown_html, to_html
from labkit.report.table import render_table, to_csv, to_json

__all__ = [
    "FORMATS", "ForestLine", "forest_figure", "forest_lines", "forest_png", "forest_svg", "log_portfolio",
    "markdown_html", "render", "render_table", "to_csv", "to_html", "to_json", "write_output",
]  # fmt: skip

FORMATS = ("table", "json", "csv", "html")


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
    raise SpecError("--format", None, "", f"unknown format '{fmt}'; allowed: {', '.join(FORMATS)}")


def write_output(text: str, target: str | Path) -> Path:
    """Write a report atomically (temp file, fsync, rename), with the usual file mode: a report is for
    sharing."""
    from labkit._files import write_atomic

    path = Path(target)
    write_atomic(path, text)
    return path


def log_portfolio(lab, p: Portfolio, html_text: str | None = None) -> str:
    """Record the report as one FINISHED portfolio run (tag ``labkit.kind=portfolio``); returns its id."""
    from labkit.tracking.reader import open_tracker

    html_text = html_text if html_text is not None else to_html(p)
    metrics = {"pilots": float(len(p.pilots))}
    for g in p.groups:
        for key in ("roi", "value", "cost", "win_rate", "pooled_gain"):
            value = getattr(g, key)
            if value is not None:
                metrics[f"{p.by}.{g.group}.{key}"] = float(value)
    return open_tracker(lab).record_portfolio(
        by=p.by,
        note=f"Portfolio by {p.by}: {p.answer}.",
        params={"by": p.by, **{f"filter.{k}": v for k, v in p.filters.items()}},
        metrics=metrics,
        files={"portfolio.html": html_text, "portfolio.json": to_json(p)},
    )
