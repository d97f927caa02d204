"""Run the benchmarks, write results/bench/<name>.json, print a table. `python -m benchmarks [--quick]`."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from benchmarks import analysis


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    parser.add_argument("--work", default="results/bench/work", help="where benchmark labs are built")
    args = parser.parse_args()
    out = Path("results/bench")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sizes = [10_000, 100_000] if args.quick else [100_000, 1_000_000]
    rows = analysis.run(work, sizes)
    machine = {"python": platform.python_version(), "machine": platform.machine(), "cores": os.cpu_count()}
    (out / "analysis.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"labkit benchmarks ({machine['cores']} cores, Python {machine['python']})")
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in row.values()))
    Console().print(table)
    print(f"written to {out / 'analysis.json'}")


if __name__ == "__main__":
    main()
