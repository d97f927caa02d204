"""labkit.pipeline.batch.default_workers: two more pilots in flight than the cores labkit may use."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from labkit.pipeline.batch import default_workers


def test_default_workers_are_the_usable_cores_plus_two():
    assert default_workers() == len(os.sched_getaffinity(0)) + 2


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_default_workers_follow_a_process_held_to_one_core():
    """taskset, a container's cpuset: the host's core count would start too many kernels."""
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from labkit.pipeline.batch import default_workers; print(default_workers(), os.cpu_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["3", str(os.cpu_count())]
