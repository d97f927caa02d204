"""labkit.cli: `labkit run` and `labkit analyze` end without the interpreter's last collections over its heap (1.2 s of ~8 s);
the other commands end as Python does."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import atexit, gc
atexit.register(lambda: print("frozen" if gc.get_freeze_count() else "not frozen"))
from labkit.cli import main
main(ARGS)
"""


def _ends(args: list[str], tmp_path) -> str:
    code = PROBE.replace("ARGS", repr(args))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    return out.stdout.strip().splitlines()[-1]


def test_labkit_run_freezes_its_heap_at_exit_and_validate_does_not(tmp_path):
    # no lab here: both commands stop at once with their one-line error, after the exit hook was chosen
    assert _ends(["run", "some-pilot"], tmp_path) == "frozen"
    assert _ends(["analyze", "some-pilot"], tmp_path) == "frozen"
    assert _ends(["validate"], tmp_path) == "not frozen"
