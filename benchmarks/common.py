"""Shared by the sections: the run's context, subprocess measurement (wall time, peak RSS) and caching.

Every measurement runs in a fresh interpreter, so peak RSS (``VmHWM`` of /proc, or the child's
``ru_maxrss``) is that step's own, and a section never inherits another's imports or caches.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LABKIT = [PYTHON, "-m", "labkit.cli"]

# Printed by child scripts (appended to their code): the process's peak resident set so far, in MB.
PEAK_RSS = "int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024"


@dataclass
class Ctx:
    """What one `python -m benchmarks` invocation was asked for."""

    out: Path  # results/bench
    mode: str = "full"  # full | quick | tiny
    seed: int = 20261123
    labs_dir: Path | None = None  # default: out/labs

    @property
    def repeat(self) -> int:
        return {"full": 3, "quick": 2, "tiny": 1}[self.mode]

    @property
    def labs(self) -> Path:
        """Generated labs and data, cached between runs (keyed by size and seed in their folder names)."""
        path = self.labs_dir or self.out / "labs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def say(self, text: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def machine() -> dict:
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // (1024 * 1024)
    except OSError:
        pass
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import duckdb

    return {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "duckdb": duckdb.__version__,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def run_script(code: str, cwd: Path, *, env: dict | None = None, timeout: float = 3600) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line is JSON, returned as a dict."""
    full = textwrap.dedent(code)
    out = subprocess.run(
        [PYTHON, "-c", full],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark script failed in {cwd}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_of(code: str, cwd: Path, repeat: int, *, key: str = "seconds", env: dict | None = None) -> dict:
    """The run with the smallest ``key`` of ``repeat`` fresh-process runs, with every run's value kept."""
    runs = [run_script(code, cwd, env=env) for _ in range(repeat)]
    best = min(runs, key=lambda r: r[key])
    return {**best, "all": [round(r[key], 3) for r in runs]}


def time_command(cmd: list[str], cwd: Path, *, env: dict | None = None, timeout: float = 3600) -> dict:
    """Wall time and peak RSS (MB) of one command, from the parent (start-up included)."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{stderr.decode()[-3000:]}"
        )
    return {"seconds": seconds, "stdout": stdout.decode(), "stderr": stderr.decode()}


def timed(cmd: list[str], cwd: Path, repeat: int, *, env: dict | None = None) -> dict:
    """Best and median wall time of ``repeat`` runs of a command."""
    runs = [time_command(cmd, cwd, env=env)["seconds"] for _ in range(repeat)]
    return {"seconds": min(runs), "median": statistics.median(runs), "all": [round(r, 3) for r in runs]}


# Whole processes run as an installed labkit does: with its modules' bytecode cached. A session that sets
# PYTHONDONTWRITEBYTECODE (as CI sandboxes do) would otherwise compile every labkit module from source in
# every process (~0.1 s of CPU for `labkit analyze`) while the baseline's libraries have their .pyc files.
# The cache goes to results/bench/pycache, not beside the sources; the first (warm-up) round fills it.
BYTECODE = {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(REPO / "results" / "bench" / "pycache")}


# run_whole's launcher: on Linux a child's ru_maxrss starts at its parent's peak (exec keeps the larger of the
# two), so a harness that had built a 10M lab in its own process reported ~1,022 MB for every whole process,
# labkit's and the baseline's alike. A small interpreter starts the command and reports its rusage: the
# command's own peak, and its wall time without the launcher's start.
_LAUNCH = """\
import json, os, subprocess, sys, time
result, cmd = sys.argv[1], json.loads(sys.argv[2])
began = time.perf_counter()
proc = subprocess.Popen(cmd)
_, status, usage = os.wait4(proc.pid, 0)
seconds = time.perf_counter() - began
with open(result, "w") as fh:
    json.dump({"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024,
               "returncode": os.waitstatus_to_exitcode(status)}, fh)
"""


def run_whole(cmd: list[str], cwd: Path, *, env: dict | None = None) -> dict:
    """One whole process as a user waits for it: its wall time, and its own peak RSS and CPU time (user +
    system) from ``os.wait4``, read by a small launcher process (``_LAUNCH``) so that neither the
    harness's size nor ``RUSAGE_CHILDREN``'s largest-ever RSS leaks in. CPU time hardly moves with the
    machine's load, wall time does."""
    import tempfile

    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory() as tmp,
    ):
        result = Path(tmp) / "usage.json"
        env = {**os.environ, **BYTECODE, **(env or {})}
        launch = [sys.executable, "-c", _LAUNCH, str(result), json.dumps([str(c) for c in cmd])]
        subprocess.run(launch, cwd=cwd, stdout=out, stderr=err, env=env, check=False)
        usage = json.loads(result.read_text()) if result.is_file() else {"returncode": "no result"}
        if usage["returncode"] != 0:
            err.seek(0)
            raise RuntimeError(
                f"{' '.join(map(str, cmd))} failed ({usage['returncode']}):\n{err.read().decode()[-3000:]}"
            )
        out.seek(0)
        return {
            "seconds": usage["seconds"],
            "cpu_s": usage["cpu_s"],
            "rss_mb": usage["rss_mb"],
            "stdout": out.read().decode(),
        }


def alternated(
    commands: dict[str, list[str]], cwd: Path, repeat: int, *, warm: int = 1, env: dict | None = None
) -> dict[str, dict]:
    """Whole processes of several commands, alternated (one of each per round, after ``warm`` rounds that
    fill the file caches), so a noisy machine loads every side alike: per command the median wall time,
    every run's time, the median CPU time and the median peak RSS (MB)."""
    for _ in range(warm):
        for cmd in commands.values():
            run_whole(cmd, cwd, env=env)
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, cmd in commands.items():
            runs[name].append(run_whole(cmd, cwd, env=env))
    return {
        name: {
            "median": statistics.median(r["seconds"] for r in rs),
            "all": [round(r["seconds"], 3) for r in rs],
            "cpu_s": statistics.median(r["cpu_s"] for r in rs),
            "rss_mb": statistics.median(r["rss_mb"] for r in rs),
            "stdout": rs[-1]["stdout"],
        }
        for name, rs in runs.items()
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def versus(benchmark: str, customers: int, labkit: dict, baseline: dict, described: str) -> dict:
    """A row's common keys: one labkit run against its baseline (each a dict with ``seconds``)."""
    return {
        "benchmark": benchmark,
        "customers": customers,
        "labkit_s": round(labkit["seconds"], 2),
        "baseline_s": round(baseline["seconds"], 2),
        "baseline": described,
        "ratio": ratio(labkit["seconds"], baseline["seconds"]),
    }


def same_drawn_files(*labs: Path, pilot: str = "bench-assign") -> bool:
    """True when the labs' assignment files of ``pilot`` are the same bytes; the files are then removed."""
    drawn = [(lab / "results" / pilot / "assignment.parquet").read_bytes() for lab in labs]
    for lab in labs:
        shutil.rmtree(lab / "results" / pilot, ignore_errors=True)
    return all(d == drawn[0] for d in drawn)


def reset(path: Path) -> None:
    """Remove a generated folder (always under results/bench)."""
    if path.exists():
        assert "results" in path.parts and "bench" in path.parts, path
        shutil.rmtree(path)


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)
