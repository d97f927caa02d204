"""`labkit list`: the lab's pilots at a glance, from files only (no MLflow import, so it stays instant)."""

from __future__ import annotations

import json
import sys
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
        rows.append(
            dict(
                pilot=s.id,
                function=s.function,
                channel=s.channel,
                stage=s.stage,
                owner=s.owner,
                status=status,
                decision=decision,
            )
        )
    return rows, problems


COLUMNS = ("pilot", "function", "channel", "stage", "owner", "status", "decision")


def render_rows(rows: list[dict], out=None) -> None:
    """A plain aligned table: `labkit list` must answer instantly, and rich alone costs ~0.1 s to import."""
    out = out or sys.stdout
    cells = [list(COLUMNS)] + [[str(row[key]) for key in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    out.write(f"{len(rows)} pilot(s)\n" + "\n".join(lines) + "\n")
