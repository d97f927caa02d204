"""`labkit list`: the lab's pilots at a glance, from files only (no MLflow import, so it stays instant)."""

from __future__ import annotations

import json
from pathlib import Path

from labkit.lab import Lab
from labkit.spec import list_pilots, parse_pilot


def _status(results: Path) -> tuple[str, str]:
    """(status, latest decision) from results/<id>/: draft, assigned, or analysed."""
    runs = sorted((results / "runs").glob("*/results.json")) if results.is_dir() else []
    if runs:
        try:
            return "analysed", json.loads(runs[-1].read_text()).get("decision", "?")
        except (OSError, ValueError):
            return "analysed", "?"
    if (results / "assignment.parquet").is_file():
        return "assigned", "-"
    return "draft", "-"


def pilot_rows(lab: Lab) -> tuple[list[dict], list[str]]:
    rows, problems = [], []
    for path in list_pilots(lab):
        pilot, errors = parse_pilot(path, lab, display=lab.display(path))
        if pilot is None:
            problems.append(f"{lab.display(path)}: invalid ({len(errors)} problem(s)); run labkit validate")
            continue
        status, decision = _status(pilot.results_dir)
        s = pilot.spec
        rows.append(dict(pilot=s.id, function=s.function, channel=s.channel, stage=s.stage, owner=s.owner,
                         status=status, decision=decision))
    return rows, problems


def render_rows(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} pilot(s)")
    for key in ("pilot", "function", "channel", "stage", "owner", "status", "decision"):
        table.add_column(key)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console().print(table)
