"""An analyst opens the default notebook in a real JupyterLab and runs it as is (issue #14).

A copy of the session's demo lab (tests/demo_lab.py; its MLflow store left behind, nothing is recorded)
is served by ``jupyter lab`` on 127.0.0.1 with no token; Debian's Chromium, driven headless by Playwright
as in tests/test_browser.py, opens ``notebooks/pilot_analysis.ipynb`` and chooses Kernel → Restart Kernel
and Run All Cells, exactly as an analyst would. Every cell must finish without an error output, the
figures must be shown inline (decoded ``<img>`` elements in the page; tests/test_notebooks.py checks the
``image/png`` outputs of the executed file). Nothing new may appear under ``notebooks/``, and no request may
leave the machine. The screenshot lands in the repository's
``results/browser/jupyterlab-pilot_analysis.png``.

JupyterLab is the ``lab`` extra; ``make test`` installs it with the test extra.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow_server import _tail, free_port, stop_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/pilot_analysis.ipynb"
START_TIMEOUT = 120.0
RUN_TIMEOUT = 240.0


def _status_ok(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/api/status", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def lab_copy(demo_lab, tmp_path_factory) -> Path:
    """The demo lab with its data and assignments, without its MLflow store (nothing is recorded here)."""
    demo_lab.check()
    root = tmp_path_factory.mktemp("jupyterlab-lab") / "lab"
    shutil.copytree(
        demo_lab.root,
        root,
        ignore=shutil.ignore_patterns("mlruns", "mlflow.db*", "browser", "runs", ".*lock*"),
    )
    return root


@pytest.fixture(scope="module")
def jupyter(lab_copy, demo_lab, tmp_path_factory):
    """`jupyter lab` on a free port of 127.0.0.1 serving the lab copy, with its own config and runtime dirs."""
    home = tmp_path_factory.mktemp("jupyter-home")
    port = free_port()
    env = demo_lab.env() | {
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "IPYTHONDIR": str(home / "ipython"),
    }
    # Render every cell (JupyterLab 4 windows long notebooks, leaving off-screen prompts empty)
    settings = home / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"windowingMode": "none"}))
    log_path = home / "jupyter.log"
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
        f"--ServerApp.root_dir={lab_copy}", "--LabApp.news_url=", "--ServerApp.open_browser=False",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ] + (["--allow-root"] if os.geteuid() == 0 else [])  # CI runs as root  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, cwd=lab_copy, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _status_ok(base):
            assert proc.poll() is None, f"jupyter lab exited with {proc.returncode}:\n{_tail(log_path)}"
            assert time.monotonic() < deadline, f"jupyter lab did not answer:\n{_tail(log_path)}"
            time.sleep(0.5)
        yield base
    finally:
        stop_server(proc)


def _prompts(page) -> list[str]:
    """The execution prompts of the notebook's code cells, as shown (`[3]:`, `[*]:`, `[ ]:`)."""
    return page.eval_on_selector_all(
        ".jp-Notebook .jp-CodeCell .jp-InputArea-prompt", "els => els.map(e => e.innerText.trim())"
    )


def test_the_default_notebook_restarts_and_runs_all_in_jupyterlab(lab_copy, jupyter, chromium):
    before = {p.relative_to(lab_copy) for p in (lab_copy / "notebooks").rglob("*")}
    foreign: list[str] = []
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()

    def local_only(route):  # JupyterLab is served from 127.0.0.1 and must need nothing else
        url = route.request.url
        if url.startswith(jupyter) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            foreign.append(url)
            route.abort()

    page.route("**/*", local_only)
    try:
        page.goto(f"{jupyter}/lab/tree/{NOTEBOOK}", wait_until="domcontentloaded")
        page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=START_TIMEOUT * 1000)
        page.wait_for_selector(
            ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=START_TIMEOUT * 1000
        )
        # let the first kernel connection settle: a restart racing it was seen to leave the cells waiting
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=START_TIMEOUT * 1000)
        time.sleep(2)
        # Kernel → Restart Kernel and Run All Cells…, then confirm the dialog, as an analyst does
        page.get_by_role("menuitem", name="Kernel", exact=True).click()
        page.get_by_text("Restart Kernel and Run All Cells…", exact=True).click()
        page.locator(".jp-Dialog .jp-mod-accept").click()
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            prompts = _prompts(page)
            if prompts and all(p[1:-2].isdigit() for p in prompts):  # every cell shows its `[n]:`
                break
            assert time.monotonic() < deadline, f"cells did not all run within {RUN_TIMEOUT:.0f} s: {prompts}"
            time.sleep(1)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        traces = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
        assert not traces, traces[0][:2000]
        images = page.locator(".jp-OutputArea-output img")
        assert images.count() >= 1, "no figure is shown inline"
        # every shown image decoded (a broken figure has naturalWidth 0)
        widths = images.evaluate_all("els => els.map(e => e.naturalWidth)")
        assert all(w > 0 for w in widths), widths
        shot = REPO / "results" / "browser" / "jupyterlab-pilot_analysis.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))
    finally:
        context.close()
    after = {p.relative_to(lab_copy) for p in (lab_copy / "notebooks").rglob("*")}
    new = {p for p in after - before if ".ipynb_checkpoints" not in p.parts}
    assert not new, f"running the notebook wrote into notebooks/: {sorted(map(str, new))}"
    assert not foreign, f"requests left the machine: {foreign[:5]}"
    assert os.path.getsize(shot) > 10_000
