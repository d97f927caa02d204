"""`labkit run`: its overhead over bare papermill on one demo pilot, and a batch of 16 on the machine's cores.

One pilot (``service-twitter-fast-reply``, which names its own notebook): `labkit run PILOT --workers 1` (validation, the papermill run,
the HTML export, recording in the lab's MLflow store) against the papermill command line running the
same notebook with the same parameters in the same folder. Both are whole processes, timed from the
outside (best of ``ctx.repeat``); ``overhead_s`` is the difference, target < 1 s.

Batch: `labkit run` over 16 demo pilots (the demo's 9 and 7 copies) with the default workers (one per
core); ``ratio`` is the batch time over one pilot's `labkit run` time — well under 16 when the pilots run
in parallel.
"""

from __future__ import annotations

import uuid

from benchmarks import demo_lab
from benchmarks.common import LABKIT, PYTHON, Ctx, ratio, reset, timed

PILOT = "service-twitter-fast-reply"


def _notebook(root, pilot_id: str):
    import labkit

    return labkit.load_pilot(pilot_id, lab=labkit.load_lab(root / "configs" / "lab.yaml")).notebook_path


def run(ctx: Ctx) -> list[dict]:
    if ctx.mode == "tiny":
        return []
    root = demo_lab.build(ctx)
    ctx.say(f"runs: labkit run {PILOT}")
    single = timed([*LABKIT, "run", PILOT, "--workers", "1"], root, ctx.repeat)
    out = root / "results" / "bench-papermill"
    out.mkdir(parents=True, exist_ok=True)
    notebook = _notebook(
        root, PILOT
    )  # the pilot's own notebook (the service pilot names one), as labkit runs
    ctx.say(f"runs: papermill on {PILOT} ({notebook.name})")
    bare = timed(
        [
            PYTHON, "-m", "papermill", "--no-progress-bar", str(notebook), str(out / notebook.name),
            "-p", "pilot_path", str(root / "experiments" / f"{PILOT}.yaml"),
            "-p", "lab_path", str(root / "configs" / "lab.yaml"),
            "-p", "output_dir", str(out), "-p", "as_of", "", "-p", "run_token", uuid.uuid4().hex,
        ],
        root,
        ctx.repeat,
    )  # fmt: skip
    reset(out)
    pilots = demo_lab.pilot_ids(root)
    ctx.say(f"runs: labkit run over {len(pilots)} pilots")
    batch = timed([*LABKIT, "run", *pilots], root, 1)
    return [
        {
            "benchmark": "run: one pilot vs bare papermill",
            "pilots": 1,
            "labkit_s": round(single["seconds"], 2),
            "baseline_s": round(bare["seconds"], 2),
            "ratio": ratio(single["seconds"], bare["seconds"]),
            "overhead_s": round(single["seconds"] - bare["seconds"], 2),
            "target_s": 1.0,
            "met": single["seconds"] - bare["seconds"] < 1.0,
            "labkit_all_s": single["all"],
            "baseline_all_s": bare["all"],
        },
        {
            "benchmark": "run: batch vs one pilot",
            "pilots": len(pilots),
            "labkit_s": round(batch["seconds"], 2),
            "baseline_s": round(single["seconds"], 2),
            "baseline": "one pilot's labkit run",
            "ratio": ratio(batch["seconds"], single["seconds"]),
            "target_ratio": float(len(pilots)),
            "notes": [
                f"{len(pilots)} pilots on the default workers (one per core); serial would be ~{len(pilots)}x"
            ],
        },
    ]
