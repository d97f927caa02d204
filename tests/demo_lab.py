"""The demo lab after `labkit demo`, built once per test session and shared (RELIABILITY #32).

The repo's configs/, experiments/ and notebooks/ are copied into a temporary folder and ``labkit demo``
runs there once for the whole session (~30 s on 2 cores; a process forked by tests/cli_fork.py's server):
it builds the synthetic CRM, assigns, plans, runs every pilot's notebook and records it in the lab's sqlite
MLflow store. The end-to-end
tests (tests/demo/test_demo_e2e.py) and the browser tests (tests/test_browser.py) read that one lab.

Import the fixture into ``tests/conftest.py`` (``from demo_lab import demo_lab``), as ``mlflow_server`` is.
Tests may add files under the lab's ``results/`` but must not record runs into its store: the end-to-end
tests expect exactly one run per demo pilot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import cli_fork
import pytest

if TYPE_CHECKING:
    from labkit.lab import Lab

REPO = Path(__file__).resolve().parents[1]


class DemoLab(NamedTuple):
    """The lab's root folder, the loaded lab, the finished `labkit demo` process and its duration."""

    root: Path
    lab: Lab
    proc: subprocess.CompletedProcess
    seconds: float

    def env(self) -> dict[str, str]:
        """The environment the demo ran in, for more `labkit` commands in the same lab."""
        return demo_env(self.lab)

    def check(self) -> None:
        """Fail with the demo's output when `labkit demo` did not succeed."""
        assert self.proc.returncode == 0, (self.proc.stdout + self.proc.stderr)[-5000:]


def demo_env(lab) -> dict[str, str]:
    """os.environ without what would redirect the lab or its store, or give it another pseudonym key."""
    drop = {"LABKIT_LAB", "LABKIT_TRACKING_URI", lab.spec.privacy.key_env, "COLUMNS", "LINES"}
    return {k: v for k, v in os.environ.items() if k not in drop} | {"MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.fixture(scope="session")
def demo_lab(tmp_path_factory) -> DemoLab:
    """The demo lab after `labkit demo`: (root, lab, completed process, seconds)."""
    import labkit
    from labkit.privacy import lab_key

    root = tmp_path_factory.mktemp("demo-lab").resolve()
    for folder in ("configs", "experiments", "notebooks"):
        shutil.copytree(REPO / folder, root / folder)
    lab = labkit.load_lab(root / "configs" / "lab.yaml")
    # The lab's own pseudonym key file, made now (without the variable) so that the demo uses it if it
    # pseudonymises anything, and so that the privacy scan can look for it.
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(lab.spec.privacy.key_env, raising=False)
        lab_key(lab)
    began = time.monotonic()
    # forked with labkit's imports done (tests/cli_fork.py): the demo's work is the claim, not the start
    proc = cli_fork.run(["demo"], root, demo_env(lab), timeout=1800)
    return DemoLab(root, lab, proc, time.monotonic() - began)
