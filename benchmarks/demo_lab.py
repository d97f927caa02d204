"""A copy of the repository's demo lab under ``results/bench/labs/demo-s<seed>/``, with its synthetic CRM
built and every pilot assigned — what `labkit demo` does before it runs the notebooks — plus copies of
demo pilots (``-copy<i>`` ids, drawn afresh) so that a batch of 16 pilots exists. Built once, cached.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.common import REPO, Ctx, reset, run_script

PILOTS = 16

BUILD = """
import json
from pathlib import Path
from labkit import demo
from labkit.assignment import assign
from labkit.lab import find_root, load_lab
from labkit.spec import list_pilots, load_pilot
lab = load_lab(find_root())
demo.build_base(lab.root, demo.DEMO_SEED)
pilots = [load_pilot(str(p), lab=lab) for p in list_pilots(lab)]
demo.simulate_outcomes(lab.root, {p.id: assign(p).frame() for p in pilots if not p.id.count("-copy")}, demo.DEMO_SEED)
for p in pilots:
    assign(p)
print(json.dumps({"pilots": [p.id for p in pilots]}))
"""


def build(ctx: Ctx) -> Path:
    root = ctx.labs / f"demo-s{ctx.seed}"
    if (root / ".complete").is_file():
        return root
    reset(root)
    ctx.say(f"building the demo lab copy (cached for later runs) under {root}")
    for folder in ("configs", "experiments", "notebooks"):
        shutil.copytree(REPO / folder, root / folder)
    originals = sorted((root / "experiments").glob("*.yaml"))
    # Pilots with their own id (and so their own draw), same cohort and metrics: the batch needs 16.
    for i in range(PILOTS - len(originals)):
        src = originals[i % len(originals)]
        new_id = f"{src.stem}-copy{i}"
        text = src.read_text().replace(f"id: {src.stem}", f"id: {new_id}", 1)
        (root / "experiments" / f"{new_id}.yaml").write_text(text)
    run_script(BUILD, root)
    (root / ".complete").write_text("")
    return root


def pilot_ids(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "experiments").glob("*.yaml"))
