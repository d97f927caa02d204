"""The benchmark harness in its tiny mode: it runs and writes every section's JSON (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LABS = REPO / "results" / "bench" / "labs"
SECTIONS = ("analysis", "assign", "cli", "runs", "compare", "spark", "postgres")
ROW_KEYS = {
    "analysis": {"customers", "labkit_s", "baseline_s", "ratio", "labkit_rss_mb", "baseline_rss_mb"},
    "assign": {"customers", "labkit_s", "baseline_s", "ratio", "labkit_rss_mb", "same_arms"},
    "cli": {"benchmark", "labkit_s", "baseline_s", "ratio", "met", "heavy"},
}


def test_tiny_benchmarks_write_their_json(tmp_path):
    out = subprocess.run(
        # The tiny labs are cached in results/bench/labs (git-ignored) like the real ones: built once.
        [sys.executable, "-m", "benchmarks", "--tiny", "--out", str(tmp_path), "--labs", str(LABS)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    for section in SECTIONS:
        result = json.loads((tmp_path / f"{section}.json").read_text())
        assert {"section", "mode", "machine", "section_seconds", "rows"} <= set(result), section
        assert result["mode"] == "tiny" and "error" not in result, section
        for row in result["rows"]:
            assert ROW_KEYS[section] <= set(row), (section, set(row))
        if section in ROW_KEYS:
            assert result["rows"], section
    assert json.loads((tmp_path / "assign.json").read_text())["rows"][0]["same_arms"] is True
    assert "analysis" in out.stdout and "labkit validate" in out.stdout
