"""One labkit command as whole processes, this checkout against an older labkit, alternated.

    git archive <commit> labkit | tar -x -C /tmp/old
    .venv/bin/python -m benchmarks.before_after 1000000 "analyze bench --json" --old /tmp/old

The older package is put first on sys.path (each process checks which labkit it imported); both run in
the benchmark lab of that size (built and cached as `make bench` does). Five alternated pairs after one
warm-up each; the medians and their ratio are printed. Used for issue #12's "no slowdown beyond 5 %".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import data
from benchmarks.common import Ctx, alternated

REPO = Path(__file__).resolve().parents[1]


def command(old: str | None, args: list[str]) -> list[str]:
    """The labkit CLI in a fresh interpreter, with the older package first on the path when ``old`` is
    given; the process fails unless it imported the labkit it was meant to."""
    code = (
        f"import sys; old = {old!r}; sys.path[:0] = [old] if old else []; import labkit; "
        "assert (old is not None and labkit.__file__.startswith(old)) == bool(old), labkit.__file__; "
        f"from labkit.cli import main; sys.exit(main({args!r}))"
    )
    return [sys.executable, "-c", code]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("customers", type=int)
    parser.add_argument("command", help='e.g. "analyze bench --json" or "assign bench-assign --force"')
    parser.add_argument("--old", default="/tmp/old", help="folder holding the older labkit package")
    args = parser.parse_args()
    root = data.build(Ctx(out=REPO / "results" / "bench"), args.customers)
    argv = args.command.split()
    got = alternated(
        {"new": command(None, argv), "old": command(args.old, argv)},
        root,
        5,
        env={"MLFLOW_DISABLE_TELEMETRY": "true"},
    )  # one warm-up of each first: file caches, digests
    new, old = got["new"]["median"], got["old"]["median"]
    print(
        f"{args.customers:,} customers, labkit {args.command}: this checkout {new:.3f} s, older {old:.3f} s, "
        f"ratio {new / old:.3f}"
    )


if __name__ == "__main__":
    main()
