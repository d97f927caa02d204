"""The benchmark harness in its tiny mode: it runs and writes every section's JSON (no timing asserted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LABS = REPO / "results" / "bench" / "labs"
HARNESS_TIMEOUT_S = 600
SECTIONS = ("analysis", "assign", "cli", "runs", "compare", "spark", "postgres")
ROW_KEYS = {
    "analysis": {"customers", "labkit_s", "baseline_s", "ratio", "labkit_rss_mb", "baseline_rss_mb"},
    "assign": {"customers", "labkit_s", "baseline_s", "ratio", "labkit_rss_mb", "same_arms"},
    "cli": {"benchmark", "labkit_s", "baseline_s", "ratio", "met", "heavy"},
}


def test_tiny_benchmarks_write_their_json(tmp_path):
    # The tiny labs are cached in results/bench/labs (git-ignored) like the real ones: built once.
    command = [sys.executable, "-m", "benchmarks", "--tiny", "--out", str(tmp_path), "--labs", str(LABS)]
    # Its own process group, stopped whole on a timeout (the harness starts interpreters, PostgreSQL and a
    # JVM). ~60 s under four workers on 2 cores; eight workers took it past the 120 s it had: a hang guard.
    proc = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=HARNESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"the tiny harness ran past {HARNESS_TIMEOUT_S} s:\n{stdout}{stderr}") from None
    out = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
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


def test_a_whole_process_peak_is_its_own_whatever_the_harness_holds():
    """On Linux a child's ``ru_maxrss`` starts at its parent's peak: a harness that had built a 10M lab in its
    own process reported ~1,022 MB for every whole process, labkit's and the baseline's alike. With 300 MB
    held (and touched) here, a bare interpreter still measures its own ~10 MB, and a command that takes
    200 MB measures that."""
    from benchmarks.common import run_whole

    held = bytearray(b"\x01") * (300 << 20)  # every page written: resident
    bare = run_whole([sys.executable, "-c", "pass"], REPO)
    big = run_whole([sys.executable, "-c", "b = bytearray(200 << 20); b[::4096] = b'1' * (50 << 10)"], REPO)
    assert bare["rss_mb"] < 100 and 200 <= big["rss_mb"] < 300, (bare, big)
    assert bare["seconds"] > 0 and bare["cpu_s"] > 0
    del held
