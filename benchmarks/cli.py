"""CLI responsiveness: `labkit --help`, `labkit validate` and `labkit list` on the demo lab, start to finish.

Wall time of the whole process as a user waits for it (interpreter start-up included), best and median
of ``5 * ctx.repeat`` runs (one in ``--tiny``) in the repository's demo lab; the baseline is a bare interpreter (``python -c
pass``). ``cpu_s`` is the median CPU time (user + system, ``os.wait4``) of the same runs, which the load of a
shared machine hardly moves, and ``load`` the 1-minute load average when the command was measured.
``heavy`` lists the heavy libraries each command's process had imported when it finished (expected: none —
see tests/test_layers.py).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess

from benchmarks.common import LABKIT, PYTHON, REPO, Ctx, ratio, run_whole

HEAVY = ("mlflow", "papermill", "pandas", "ibis", "duckdb", "nbclient", "scipy", "pyarrow", "numpy", "rich")
COMMANDS = {"--help": ["--help"], "validate": ["validate"], "list": ["list"]}
TARGET_S = 0.3  # issue #18

PROBE = """
import sys, json, contextlib, io
from labkit.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        main(ARGS)
    except SystemExit:
        pass
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(HEAVY))))
"""


def heavy_imports(args: list[str]) -> list[str]:
    code = PROBE.replace("ARGS", repr(args)).replace("HEAVY", repr(HEAVY))
    out = subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measured(cmd: list[str], n: int) -> dict:
    """Best and median wall time, median CPU time of ``n`` whole processes, and the load around them."""
    load = os.getloadavg()[0]
    runs = [run_whole(cmd, REPO) for _ in range(n)]
    walls = [r["seconds"] for r in runs]
    return {
        "seconds": min(walls),
        "median": statistics.median(walls),
        "cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "all": [round(w, 3) for w in walls],
        "load": round((load + os.getloadavg()[0]) / 2, 1),
    }


def run(ctx: Ctx) -> list[dict]:
    n = 1 if ctx.mode == "tiny" else 5 * ctx.repeat
    base = measured([PYTHON, "-c", "pass"], n)
    rows = []
    for name, args in COMMANDS.items():
        ctx.say(f"cli: labkit {name}")
        t = measured([*LABKIT, *args], n)
        rows.append(
            {
                "benchmark": f"labkit {name}",
                "labkit_s": round(t["seconds"], 3),
                "labkit_median_s": round(t["median"], 3),
                "labkit_cpu_s": round(t["cpu_s"], 3),
                "baseline_s": round(base["seconds"], 3),
                "baseline_cpu_s": round(base["cpu_s"], 3),
                "baseline": "python -c pass",
                "ratio": ratio(t["seconds"], base["seconds"]),
                "target_s": TARGET_S,
                "met": t["median"] < TARGET_S,
                "load": t["load"],
                "heavy": heavy_imports(args),
                "labkit_all_s": t["all"],
            }
        )
    return rows
