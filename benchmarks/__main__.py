"""Run the benchmark suite: `python -m benchmarks [--quick | --tiny] [SECTION ...]`.

Each section writes ``results/bench/<section>.json`` (the machine, the mode, the section's wall time and
its rows) and the suite prints one table per section. Sections: analysis, assign, cli, runs, compare,
spark, postgres (all by default). Generated labs are cached under ``results/bench/labs/`` by size and seed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, Ctx, machine, write_json

SECTIONS = ("analysis", "assign", "cli", "runs", "compare", "spark", "postgres")
# Columns shown in the printed tables (every key is in the JSON).
SHOWN = (
    "benchmark", "customers", "runs", "pilots", "labkit_s", "baseline_s", "ratio", "target_ratio", "target_s",
    "met", "cpu_ratio", "labkit_rss_mb", "baseline_rss_mb", "quantile_rss_mb", "labkit_imports_s", "overhead_s",
    "driver_rows_max", "same_arms", "same_bytes", "same_numbers", "labkit_cpu_s", "baseline_cpu_s", "cpu_overhead_s", "load", "heavy",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "sections", nargs="*", metavar="SECTION", help=f"any of {', '.join(SECTIONS)} (default: all)"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_const", const="quick", dest="mode", help="small sizes (development)"
    )
    size.add_argument(
        "--tiny", action="store_const", const="tiny", dest="mode", help="smallest sizes (smoke test)"
    )
    parser.add_argument("--out", default=str(REPO / "results" / "bench"), help="where JSON and labs go")
    parser.add_argument("--labs", default=None, help="where generated labs are cached (default: OUT/labs)")
    parser.add_argument("--seed", type=int, default=20261123, help="the synthetic data's seed")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(
        out=out,
        mode=args.mode or "full",
        seed=args.seed,
        labs_dir=Path(args.labs).resolve() if args.labs else None,
    )
    info = machine()
    print(
        f"labkit benchmarks ({ctx.mode}): {info['cores']} cores, {info['memory_gib']} GiB, {info['cpu']}, "
        f"Python {info['python']}, DuckDB {info['duckdb']}; load average {info['load_average']:.2f}"
    )
    failed = []
    started = time.perf_counter()
    for name in args.sections or SECTIONS:
        t = time.perf_counter()
        try:
            rows = importlib.import_module(f"benchmarks.{name}").run(ctx)
            error = None
        except Exception as exc:  # noqa: BLE001 - one section failing must not lose the others' figures
            rows, error = [], f"{type(exc).__name__}: {exc}"
            failed.append(name)
        seconds = round(time.perf_counter() - t, 1)
        result = {
            "section": name,
            "mode": ctx.mode,
            "seed": ctx.seed,
            "machine": info,
            "section_seconds": seconds,
            "rows": rows,
        }
        if error:
            result["error"] = error
        write_json(out / f"{name}.json", result)
        _table(name, rows, seconds, error)
    print(f"\nall sections in {time.perf_counter() - started:.0f} s; JSON in {out}/")
    return 1 if failed else 0


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return "-" if value is None else str(value)


def _table(name: str, rows: list[dict], seconds: float, error: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    if error:
        console.print(f"{name}: FAILED after {seconds} s: {error}", markup=False, style="red")
        return
    cols = [c for c in SHOWN if any(c in r for r in rows)]
    table = Table(title=f"{name} ({seconds} s)", title_justify="left")
    for col in cols:
        table.add_column(col, justify="left" if col in ("benchmark", "heavy") else "right")
    for row in rows:
        table.add_row(*(_cell(row.get(col)) for col in cols))
    console.print(table)
    for row in rows:
        for note in row.get("notes", []):
            console.print(f"  {row['benchmark']}: {note}", markup=False)


if __name__ == "__main__":
    sys.exit(main())
