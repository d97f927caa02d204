"""CLI responsiveness: `labkit --help`, `labkit validate` and `labkit list` on the demo lab, start to finish.

Wall time of the whole process as a user waits for it (interpreter start-up included), best and median
of ``5 * ctx.repeat`` runs (one in ``--tiny``) in the repository's demo lab; the baseline is a bare interpreter (``python -c
pass``). ``heavy`` lists the heavy libraries each command's process had imported when it finished
(expected: none — see tests/test_layers.py).
"""

from __future__ import annotations

import json
import subprocess

from benchmarks.common import LABKIT, PYTHON, REPO, Ctx, ratio, timed

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


def run(ctx: Ctx) -> list[dict]:
    n = 1 if ctx.mode == "tiny" else 5 * ctx.repeat
    base = timed([PYTHON, "-c", "pass"], REPO, n)
    rows = []
    for name, args in COMMANDS.items():
        ctx.say(f"cli: labkit {name}")
        t = timed([*LABKIT, *args], REPO, n)
        rows.append(
            {
                "benchmark": f"labkit {name}",
                "labkit_s": round(t["seconds"], 3),
                "labkit_median_s": round(t["median"], 3),
                "baseline_s": round(base["seconds"], 3),
                "baseline": "python -c pass",
                "ratio": ratio(t["seconds"], base["seconds"]),
                "target_s": TARGET_S,
                "met": t["median"] < TARGET_S,
                "heavy": heavy_imports(args),
                "labkit_all_s": t["all"],
            }
        )
    return rows
