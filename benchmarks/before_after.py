"""One labkit command as whole processes, this checkout against an older labkit, alternated.

    git archive <commit> labkit | tar -x -C /tmp/old
    .venv/bin/python -m benchmarks.before_after 1000000 "analyze bench --json" --old /tmp/old

The older package is put first on PYTHONPATH (each process checks which labkit it imported); both run in
the benchmark lab of that size (built and cached as `make bench` does). Five alternated pairs after one
warm-up each; the medians and their ratio are printed. Used for issue #12's "no slowdown beyond 5 %".
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import data
from benchmarks.common import Ctx

REPO = Path(__file__).resolve().parents[1]


def once(root: Path, command: list[str], old: str | None) -> float:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    if old:
        env["PYTHONPATH"] = old
    code = f"import labkit, sys; print(labkit.__file__, file=sys.stderr); from labkit.cli import main; sys.exit(main({command!r}))"
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (old is not None and old in proc.stderr.splitlines()[0]) == bool(old), proc.stderr[:300]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("customers", type=int)
    parser.add_argument("command", help='e.g. "analyze bench --json" or "assign bench-assign --force"')
    parser.add_argument("--old", default="/tmp/old", help="folder holding the older labkit package")
    args = parser.parse_args()
    root = data.build(Ctx(out=REPO / "results" / "bench"), args.customers)
    command = args.command.split()
    once(root, command, None), once(root, command, args.old)  # warm-up: file caches, digests
    times: dict[str, list[float]] = {"new": [], "old": []}
    for _ in range(5):
        times["new"].append(once(root, command, None))
        times["old"].append(once(root, command, args.old))
    new, old = statistics.median(times["new"]), statistics.median(times["old"])
    print(f"{args.customers:,} customers, labkit {args.command}: this checkout {new:.3f} s, older {old:.3f} s, "
          f"ratio {new / old:.3f}")


if __name__ == "__main__":
    main()
