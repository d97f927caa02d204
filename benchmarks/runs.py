"""`labkit run`: its overhead over bare papermill on one demo pilot, and a batch of 16 on the machine's cores.

One pilot (``service-twitter-fast-reply``, which names its own notebook): `labkit run PILOT --workers 1` (validation, the papermill run,
the HTML export, recording in the lab's MLflow store) against the papermill command line running the
same notebook with the same parameters in the same folder. Both are whole processes, alternated, timed
from the outside (median of ``ctx.repeat``); ``overhead_s`` is the difference, target ≤ 1 s (issue #18).
``cpu_overhead_s`` is the same difference in CPU time (user + system of the process and of the kernels it
waited for, ``os.wait4``), which the load of a shared machine hardly moves; ``load`` the load average.

Batch: `labkit run` over 16 demo pilots (the demo's 9 and 7 copies) with the default workers (cores
+ 2); ``ratio`` is the batch time over one pilot's `labkit run` time, target ≤ 4 on 2 cores (issue #18).
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
    single, fresh, bare = got["labkit"], got["fresh"], got["papermill"]
    single_load = round((load + os.getloadavg()[0]) / 2, 1)
    reset(out)
    pilots = demo_lab.pilot_ids(root)
    ctx.say(f"runs: labkit run over {len(pilots)} pilots")
    batches = {}
    for name, prefix in (("warm", LABKIT), ("fresh", cold)):
        load = os.getloadavg()[0]
        batch = run_whole([*prefix, "run", *pilots], root, env={"MLFLOW_DISABLE_TELEMETRY": "true"})
        batches[name] = batch | {"load": round((load + os.getloadavg()[0]) / 2, 1)}
    afresh = "with every kernel started afresh, as before warm kernels"
    return [
        _one_pilot_row("run: one pilot vs bare papermill", single, bare, single_load)
        | {
            "target_s": OVERHEAD_S,
            "met": single["median"] - bare["median"] <= OVERHEAD_S,
            "baseline_all_s": bare["all"],
        },  # fmt: skip
        _one_pilot_row(
            "run: one pilot, fresh kernel (LABKIT_WARM_KERNELS=0) vs bare papermill", fresh, bare, single_load
        )
        | {"notes": [f"the same run {afresh}"]},
        _batch_row(
            "run: batch, fresh kernels (LABKIT_WARM_KERNELS=0) vs one pilot",
            batches["fresh"],
            fresh,
            len(pilots),
        )
        | {"baseline": "one pilot's labkit run, fresh kernel", "notes": [f"the batch {afresh}"]},
        _batch_row("run: batch vs one pilot", batches["warm"], single, len(pilots))
        | {
            "baseline": "one pilot's labkit run",
            "target_ratio": BATCH_RATIO,
            "met": batches["warm"]["seconds"] <= BATCH_RATIO * single["median"],
            "notes": [
                f"{len(pilots)} pilots on the default workers (cores + 2); serial would be ~{len(pilots)}x"
            ],
        },
    ]


def _one_pilot_row(name: str, side: dict, bare: dict, load: float) -> dict:
    """A one-pilot row: ``side`` and ``bare`` as :func:`benchmarks.common.alternated` gives them."""
    return {
        "benchmark": name,
        "pilots": 1,
        "labkit_s": round(side["median"], 2),
        "baseline_s": round(bare["median"], 2),
        "ratio": ratio(side["median"], bare["median"]),
        "overhead_s": round(side["median"] - bare["median"], 2),
        "labkit_cpu_s": round(side["cpu_s"], 2),
        "baseline_cpu_s": round(bare["cpu_s"], 2),
        "cpu_overhead_s": round(side["cpu_s"] - bare["cpu_s"], 2),
        "load": load,
        "labkit_all_s": side["all"],
    }


def _batch_row(name: str, batch: dict, one: dict, pilots: int) -> dict:
    """A batch row: ``batch`` from :func:`benchmarks.common.run_whole`, ``one`` the one-pilot side."""
    return {
        "benchmark": name,
        "pilots": pilots,
        "labkit_s": round(batch["seconds"], 2),
        "baseline_s": round(one["median"], 2),
        "ratio": ratio(batch["seconds"], one["median"]),
        "labkit_cpu_s": round(batch["cpu_s"], 2),
        "load": batch["load"],
    }
