"""`labkit run`: its overhead over bare papermill on one demo pilot, and a batch of 16 on the machine's cores.

One pilot (``service-twitter-fast-reply``, which names its own notebook): `labkit run PILOT --workers 1` (validation, the papermill run,
the HTML export, recording in the lab's MLflow store) against the papermill command line running the
same notebook with the same parameters in the same folder. Both are whole processes, alternated, timed
from the outside (median of ``ctx.repeat``); ``overhead_s`` is the difference, target ≤ 1 s (issue #18).
``cpu_overhead_s`` is the same difference in CPU time (user + system of the process and of the kernels it
waited for, ``os.wait4``), which the load of a shared machine hardly moves; ``load`` the load average.

Batch: `labkit run` over 16 demo pilots (the demo's 9 and 7 copies) with the default workers (one per
core); ``ratio`` is the batch time over one pilot's `labkit run` time, target ≤ 4 on 2 cores (issue #18).
Both are measured twice: with warm kernels (the default, labkit.runner.warm) and with every kernel started
afresh (``LABKIT_WARM_KERNELS=0``), as labkit ran before them.
"""

from __future__ import annotations

import os
import uuid

from benchmarks import demo_lab
from benchmarks.common import LABKIT, PYTHON, Ctx, alternated, ratio, reset, run_whole

PILOT = "service-twitter-fast-reply"
OVERHEAD_S = 1.0  # issue #18: `labkit run` over bare papermill
BATCH_RATIO = 4.0  # issue #18: 16 pilots on 2 cores within 4x one pilot's time


def _notebook(root, pilot_id: str):
    import labkit

    return labkit.load_pilot(pilot_id, lab=labkit.load_lab(root / "configs" / "lab.yaml")).notebook_path


def run(ctx: Ctx) -> list[dict]:
    if ctx.mode == "tiny":
        return []
    root = demo_lab.build(ctx)
    out = root / "results" / "bench-papermill"
    out.mkdir(parents=True, exist_ok=True)
    # the pilot's own notebook (the service pilot names one), as labkit runs it
    notebook = _notebook(root, PILOT)
    papermill = [
        PYTHON, "-m", "papermill", "--no-progress-bar", str(notebook), str(out / notebook.name),
        "-p", "pilot_path", str(root / "experiments" / f"{PILOT}.yaml"),
        "-p", "lab_path", str(root / "configs" / "lab.yaml"),
        "-p", "output_dir", str(out), "-p", "as_of", "", "-p", "run_token", uuid.uuid4().hex,
    ]  # fmt: skip
    ctx.say(f"runs: labkit run {PILOT} and papermill on {notebook.name}, alternated")
    load = os.getloadavg()[0]
    cold = ["env", "LABKIT_WARM_KERNELS=0", *LABKIT]  # env execs labkit: the same process is timed
    got = alternated(
        {
            "labkit": [*LABKIT, "run", PILOT, "--workers", "1"],
            "fresh": [*cold, "run", PILOT, "--workers", "1"],
            "papermill": papermill,
        },
        root,
        ctx.repeat,
        warm=1,  # the first processes fill the bytecode cache (benchmarks.common.BYTECODE) for the server too
        env={"MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    single = {"seconds": got["labkit"]["median"], "all": got["labkit"]["all"], "cpu": got["labkit"]["cpu_s"]}
    bare = {
        "seconds": got["papermill"]["median"],
        "all": got["papermill"]["all"],
        "cpu": got["papermill"]["cpu_s"],
    }
    single_load = round((load + os.getloadavg()[0]) / 2, 1)
    reset(out)
    pilots = demo_lab.pilot_ids(root)
    ctx.say(f"runs: labkit run over {len(pilots)} pilots")
    load = os.getloadavg()[0]
    batch = run_whole([*LABKIT, "run", *pilots], root, env={"MLFLOW_DISABLE_TELEMETRY": "true"})
    batch_load = round((load + os.getloadavg()[0]) / 2, 1)
    load = os.getloadavg()[0]
    fresh_batch = run_whole([*cold, "run", *pilots], root, env={"MLFLOW_DISABLE_TELEMETRY": "true"})
    fresh_load = round((load + os.getloadavg()[0]) / 2, 1)
    fresh = got["fresh"]
    return [
        {
            "benchmark": "run: one pilot vs bare papermill",
            "pilots": 1,
            "labkit_s": round(single["seconds"], 2),
            "baseline_s": round(bare["seconds"], 2),
            "ratio": ratio(single["seconds"], bare["seconds"]),
            "overhead_s": round(single["seconds"] - bare["seconds"], 2),
            "labkit_cpu_s": round(single["cpu"], 2),
            "baseline_cpu_s": round(bare["cpu"], 2),
            "cpu_overhead_s": round(single["cpu"] - bare["cpu"], 2),
            "load": single_load,
            "target_s": OVERHEAD_S,
            "met": single["seconds"] - bare["seconds"] <= OVERHEAD_S,
            "labkit_all_s": single["all"],
            "baseline_all_s": bare["all"],
        },
        {
            "benchmark": "run: one pilot, fresh kernel (LABKIT_WARM_KERNELS=0) vs bare papermill",
            "pilots": 1,
            "labkit_s": round(fresh["median"], 2),
            "baseline_s": round(bare["seconds"], 2),
            "ratio": ratio(fresh["median"], bare["seconds"]),
            "overhead_s": round(fresh["median"] - bare["seconds"], 2),
            "labkit_cpu_s": round(fresh["cpu_s"], 2),
            "baseline_cpu_s": round(bare["cpu"], 2),
            "cpu_overhead_s": round(fresh["cpu_s"] - bare["cpu"], 2),
            "load": single_load,
            "labkit_all_s": fresh["all"],
            "notes": ["the same run with every kernel started afresh, as before warm kernels"],
        },
        {
            "benchmark": "run: batch, fresh kernels (LABKIT_WARM_KERNELS=0) vs one pilot",
            "pilots": len(pilots),
            "labkit_s": round(fresh_batch["seconds"], 2),
            "baseline_s": round(fresh["median"], 2),
            "baseline": "one pilot's labkit run, fresh kernel",
            "ratio": ratio(fresh_batch["seconds"], fresh["median"]),
            "labkit_cpu_s": round(fresh_batch["cpu_s"], 2),
            "load": fresh_load,
            "notes": ["the batch with every kernel started afresh, as before warm kernels"],
        },
        {
            "benchmark": "run: batch vs one pilot",
            "pilots": len(pilots),
            "labkit_s": round(batch["seconds"], 2),
            "baseline_s": round(single["seconds"], 2),
            "baseline": "one pilot's labkit run",
            "ratio": ratio(batch["seconds"], single["seconds"]),
            "labkit_cpu_s": round(batch["cpu_s"], 2),
            "load": batch_load,
            "target_ratio": BATCH_RATIO,
            "met": batch["seconds"] <= BATCH_RATIO * single["seconds"],
            "notes": [
                f"{len(pilots)} pilots on the default workers (one per core); serial would be ~{len(pilots)}x"
            ],
        },
    ]
