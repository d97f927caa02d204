"""The leadership view in a real browser: the MLflow UI on the demo lab's store, and the HTML report.

Debian's Chromium is driven headless by Playwright (the session's ``chromium`` fixture, tests/chromium.py);
these tests fail rather than skip without it. They share the session's demo lab (tests/demo_lab.py) and add to it only files
under ``results/browser/``: screenshots, the report and the UI's log.

1. ``labkit ui`` serves the lab's store on 127.0.0.1; Chromium opens the runs table it prints — labkit's
   saved leadership view, so the decision, recommendation and ROI columns are there without configuring
   anything — types a ``tags.`labkit.function``` filter into the search box, and the table must
   hold exactly the runs of that function's pilots (read from the pilot files and the store, not pasted
   here), each with its decision; a run's page shows decision, recommendation and ROI first in its
   description, then the hypothesis.
   Filtering by another function must swap the rows. A screenshot lands in the lab's ``results/browser/``
   and is copied to the repository's ``results/browser/`` (git-ignored), where people look for it.
2. ``labkit compare --format html`` opens from a ``file://`` URL: the forest plot decodes, every function
   has its summary row, every pilot its hypothesis, decision and recommendation, no literal Markdown
   (``**``) is shown, and no request leaves the machine. Its
   full-page screenshot is copied to the repository's ``results/browser/`` too.
3. Last, the ``labkit ui`` of 1. is checked from outside (tests/ui_checks.py: its three lines, its bind,
   the foreign ``Host``) and ended with SIGHUP, which must take its server along (RELIABILITY.md case 40;
   its SIGKILL is tests/tracking/test_ui.py): one ``mlflow server`` start serves both claims.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

import pytest
from mlflow_server import _healthy, _tail, free_port, stop_server
from processes import still_alive
from ui_checks import check_bound_to_localhost, check_links

import labkit

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "browser"  # the repository's results/ is git-ignored
FUNCTION = "service"  # filtered for in the MLflow UI; another function of the demo is filtered second
VIEWPORT = {"width": 1440, "height": 560}
UI_START_TIMEOUT = 90.0  # seconds; `mlflow server` takes ~10 s on 2 cores
WAIT_MS = 60_000  # for the UI's React pages to render what the test waits for (~5 s here on 2 cores)
DECISION_COL = "tags.`labkit.decision`"
LEADERSHIP_COLS = (DECISION_COL, "tags.`labkit.recommendation`", "metrics.`roi_pct`")
RUN_NAME_COL = "attributes.`Run Name`"

# {run id: {column id: text}} of every row the runs table (ag-grid) renders; a row is split over the
# pinned and the scrolling part of the grid, which share its row-id (the MLflow run id).
GRID_ROWS_JS = """() => {
  const rows = {};
  for (const cell of document.querySelectorAll('.ag-row[row-id] [col-id]')) {
    const id = cell.closest('.ag-row').getAttribute('row-id');
    const link = cell.querySelector('a');  // the run name's link, not the colour swatch beside it
    (rows[id] = rows[id] || {})[cell.getAttribute('col-id')] = (link || cell).innerText.trim();
  }
  return rows;
}"""
# true once the grid renders exactly these run ids, each with a non-empty decision cell
GRID_READY_JS = """([ids, col]) => {
  const rows = [...document.querySelectorAll('.ag-row[row-id]')];
  const seen = new Set(rows.map((r) => r.getAttribute('row-id')));
  if (seen.size !== ids.length || !ids.every((i) => seen.has(i))) return false;
  return ids.every((i) => [...document.querySelectorAll(`.ag-row[row-id="${i}"] [col-id]`)]
    .some((c) => c.getAttribute('col-id') === col && c.innerText.trim() !== ''));
}"""


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shots(demo_lab) -> Path:
    """The lab's ``results/browser/`` folder for screenshots, the report and logs."""
    demo_lab.check()
    folder = demo_lab.root / "results" / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of a process's children, so a later kill cannot hit a reused pid."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [(int(child), _started(int(child))) for child in out.stdout.split()]


def _started(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


class UI(NamedTuple):
    """A running `labkit ui`: the runs URL it printed, its process, port and log (its stdout and stderr)."""

    url: str
    proc: subprocess.Popen
    port: int
    log: Path


@pytest.fixture(scope="module")
def ui(demo_lab, shots):
    """`labkit ui` on the demo lab's store, on a free port of 127.0.0.1, until the module's last test ends it
    (``test_labkit_ui_ends_with_its_server_on_sighup``) or the module ends."""
    log_path = shots / "labkit-ui.log"
    port = free_port()
    command = [sys.executable, "-m", "labkit.cli", "ui", "--port", str(port)]
    with open(log_path, "wb") as log:
        # its own session: stop_server() signals the `labkit ui` group, which stops its server's group
        proc = subprocess.Popen(
            command, cwd=demo_lab.root, env=demo_lab.env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    servers: list[tuple[int, str]] = []
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + UI_START_TIMEOUT
        runs_line = re.compile(r"^runs of experiment '.*': (http://\S+)$", re.MULTILINE)
        # labkit ui prints its links once the server answers: wait for the line, not only for /health
        while not (_healthy(base) and (found := runs_line.search(log_path.read_text()))):
            assert proc.poll() is None, f"labkit ui exited with {proc.returncode}:\n{_tail(log_path)}"
            assert time.monotonic() < deadline, (
                f"no /health and runs link within {UI_START_TIMEOUT:.0f} s:\n{_tail(log_path)}"
            )
            time.sleep(0.25)
        servers = _children(proc.pid)
        assert found.group(1).startswith(f"{base}/#/experiments/"), found.group(1)
        yield UI(found.group(1), proc, port, log_path)
    finally:
        stop_server(proc)
        for pid, started in servers:  # a server its `labkit ui` failed to stop: its own process group
            if started and _started(pid) == started:
                os.killpg(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- helpers


def _pilots(demo_lab) -> dict[str, object]:
    """The demo pilots, from the lab's pilot files: {id: Pilot}."""
    return {
        p.stem: labkit.load_pilot(p, lab=demo_lab.lab)
        for p in sorted((demo_lab.root / "experiments").glob("*.yaml"))
    }


def _runs_of(demo_lab, function: str) -> dict[str, tuple[str, str, str]]:
    """{run id: (pilot, run name, decision)} of the store's runs tagged with this function."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=demo_lab.lab.tracking_uri)
    exp = client.get_experiment_by_name(demo_lab.lab.spec.mlflow_experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`labkit.function` = '{function}'", max_results=1000)
    return {
        r.info.run_id: (r.data.tags["labkit.pilot"], r.info.run_name, r.data.tags["labkit.decision"])
        for r in runs
    }


def _recommendations(demo_lab) -> dict[str, str]:
    """{run id: labkit.recommendation} of every run in the store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=demo_lab.lab.tracking_uri)
    exp = client.get_experiment_by_name(demo_lab.lab.spec.mlflow_experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`labkit.pilot` LIKE '%'", max_results=1000)
    return {r.info.run_id: r.data.tags.get("labkit.recommendation", "") for r in runs}


def _words(text: str) -> str:
    return " ".join(text.split())


def _filter_runs(page, function: str, expected: dict[str, tuple[str, str, str]]) -> dict[str, dict]:
    """Type the function filter into the runs search box; return the grid once it shows ``expected``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    query = f"tags.`labkit.function` = '{function}'"
    box = page.get_by_test_id("search-box")
    box.fill(query)
    box.press("Enter")
    page.wait_for_url(lambda url: _search_filter(url) == query)  # the UI took it (it keeps it in the URL)
    try:
        page.wait_for_function(GRID_READY_JS, arg=[sorted(expected), DECISION_COL], timeout=WAIT_MS)
    except PlaywrightTimeout:
        pass  # the caller's assertion shows what the grid holds instead
    return page.evaluate(GRID_ROWS_JS)


def _search_filter(url: str) -> str | None:
    """The runs search filter that the UI keeps in its address: ``#/experiments/1/runs?searchFilter=...``."""
    fragment = urlsplit(url).fragment
    return parse_qs(fragment.partition("?")[2]).get("searchFilter", [None])[0]


def _set_column(page, name: str, shown: bool) -> None:
    """Show or hide one column with the runs table's "Columns" selector (which must be open)."""
    from playwright.sync_api import expect

    page.get_by_placeholder("Search columns").fill(name)
    node = (
        page.get_by_test_id("column-selector-tree")
        .locator(".du-bois-light-tree-treenode")
        .filter(has=page.locator(".du-bois-light-tree-title", has_text=re.compile(f"^{re.escape(name)}$")))
    )
    node.wait_for(timeout=WAIT_MS)
    checked = re.compile(r"\bdu-bois-light-tree-treenode-checkbox-checked\b")
    if bool(checked.search(node.get_attribute("class") or "")) != shown:
        node.locator(".du-bois-light-tree-checkbox").click()
    if shown:
        expect(node).to_have_class(checked)
    else:
        expect(node).not_to_have_class(checked)


def _publish(path: Path) -> Path:
    """Copy a screenshot to the repository's ``results/browser/`` (temp file + rename: never half a PNG)."""
    PUBLISHED.mkdir(parents=True, exist_ok=True)
    target = PUBLISHED / path.name
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(path, partial)
    os.replace(partial, target)
    assert target.read_bytes() == path.read_bytes()
    return target


def _assert_png(path: Path, viewport: dict) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (viewport["width"], viewport["height"]), (width, height)
    assert len(data) > 20_000, f"{path} holds {len(data)} bytes: a blank page?"


# --------------------------------------------------------------------------- tests


def test_mlflow_ui_filters_runs_by_function_and_shows_each_decision(demo_lab, ui, chromium, shots):
    # the module's `labkit ui` is ended by its last test, in file order (a reversed run failed here with
    # ERR_CONNECTION_REFUSED): say so rather than fail in the browser
    assert ui.proc.poll() is None, "`labkit ui` has ended: this module's tests run in file order (see `ui`)"
    pilots = _pilots(demo_lab)
    functions = {pid: p.spec.function for pid, p in pilots.items()}
    wanted = {pid for pid, f in functions.items() if f == FUNCTION}
    others = sorted(set(functions.values()) - {FUNCTION})
    assert wanted and others, f"the demo needs pilots of '{FUNCTION}' and of another function: {functions}"
    expected = _runs_of(demo_lab, FUNCTION)
    assert {pilot for pilot, _, _ in expected.values()} == wanted, "the store's runs of the function"

    origin = "{0.scheme}://{0.netloc}".format(urlsplit(ui.url))
    context = chromium.new_context(viewport=VIEWPORT)
    foreign: list[str] = []

    def local_only(route):  # the UI is served from 127.0.0.1 and must need nothing else
        if route.request.url.startswith(origin):
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    context.route("**/*", local_only)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        page.goto(ui.url)
        # the printed link opens labkit's saved view (labkit.tracking.leadership_view): its columns are
        # there without a click in the Columns selector, and the dataset hashes are not
        page.locator(".ag-row[row-id]").first.wait_for()
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:  # MLflow's assistant panel (it opens a moment after the grid) covers half of the table
            page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]').first.click(timeout=8_000)
        except PlaywrightTimeout:
            pass  # not offered by this MLflow
        for col in LEADERSHIP_COLS:  # the grid renders the columns in sight: these lead, so they are
            page.locator(f'.ag-header-cell[col-id="{col}"]').first.wait_for()
        assert not page.locator('.ag-header-cell[col-id="attributes.`Dataset`"]').count()

        rows = _filter_runs(page, FUNCTION, expected)
        assert set(rows) == set(expected), (
            f"runs shown for {FUNCTION}: {sorted(r.get(RUN_NAME_COL, '?') for r in rows.values())}"
        )
        page.get_by_text(f"{len(expected)} matching runs", exact=True).wait_for()
        for run_id, (pilot, run_name, decision) in expected.items():
            assert rows[run_id].get(RUN_NAME_COL) == run_name, (pilot, rows[run_id])
            assert rows[run_id].get(DECISION_COL) == decision, (pilot, rows[run_id])
        grid = page.locator(".ag-root").first.inner_text()
        assert not [pid for pid in pilots if pid not in wanted and pid in grid]
        page.mouse.move(0, 0)  # no hover effects in the screenshot
        shot = shots / f"mlflow-ui-{FUNCTION}.png"
        page.screenshot(path=shot)
        _assert_png(shot, VIEWPORT)
        _assert_png(_publish(shot), VIEWPORT)

        # a run's page: its description starts with decision, recommendation and ROI, then the hypothesis
        run_id, (pilot, run_name, decision) = sorted(expected.items())[0]
        page.locator(f'.ag-row[row-id="{run_id}"] [col-id="{RUN_NAME_COL}"] a').first.click()
        page.get_by_text("Hypothesis.", exact=False).first.wait_for()
        text = _words(page.locator("body").inner_text())
        assert run_name in text
        assert _words(pilots[pilot].spec.hypothesis.statement) in text
        assert f"Decision: {decision}." in text
        recommendation = _recommendations(demo_lab)[run_id]
        assert re.search(
            rf"Decision {re.escape(decision)} · Recommendation {recommendation}\b.* · (ROI|no budget)", text
        )
        assert f"Recommendation: {recommendation}." in text
        page.screenshot(path=shots / "mlflow-run.png")

        # the filter really selects: another function swaps every row. The shared view keeps no edit (a
        # typed filter replaces its state in the address), so the reader comes back through the link
        page.goto(ui.url)
        page.locator(f'.ag-header-cell[col-id="{DECISION_COL}"]').first.wait_for()
        other = others[0]
        other_runs = _runs_of(demo_lab, other)
        rows = _filter_runs(page, other, other_runs)
        assert set(rows) == set(other_runs), f"runs shown for {other}"
        assert {rows[i].get(DECISION_COL) for i in rows} == {d for _, _, d in other_runs.values()}
        assert not set(rows) & set(expected)
        assert foreign == [], f"the MLflow UI asked for addresses off this machine: {foreign}"
    finally:
        context.close()


def test_compare_html_report_renders_offline_in_chromium(demo_lab, chromium, shots):
    import contextlib
    import io

    from labkit.cli import main

    report = shots / "portfolio.html"
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:  # the console script's main in the demo's environment
        for name in set(os.environ) - set(demo_lab.env()):
            patch.delenv(name)
        for name, value in demo_lab.env().items():
            patch.setenv(name, value)
        patch.chdir(demo_lab.root)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(["compare", "--by", "function", "--format", "html", "--output", str(report)])
    assert code == 0, out.getvalue()
    pilots = _pilots(demo_lab)
    functions = {p.spec.function for p in pilots.values()}
    decisions = {}
    for function in functions:
        decisions |= {pilot: decision for pilot, _, decision in _runs_of(demo_lab, function).values()}
    assert set(decisions) == set(pilots)

    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    requests: list[str] = []

    def record(route):  # a self-contained report asks for nothing but its own file
        requests.append(route.request.url)
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", record)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        page.goto(report.as_uri())  # waits for the load event: the forest plot has been decoded
        forest = page.locator("img").first
        assert forest.evaluate("img => img.complete && img.naturalWidth") > 0, "the forest plot did not load"
        assert "forest plot" in (forest.get_attribute("alt") or "")
        by_function = page.locator("h2", has_text=re.compile(r"^By function$")).locator(
            "xpath=following-sibling::table[1]"
        )
        first_cells = by_function.locator("tr td:first-child").all_inner_texts()
        assert sorted(first_cells) == sorted(functions), first_cells
        for pid, pilot in pilots.items():
            section = page.locator(f'section[id="pilot-{pid}"]')
            text = _words(section.inner_text())
            assert _words(pilot.spec.hypothesis.statement) in text, pid
            assert f"Decision: {decisions[pid]}" in text, pid
            assert re.search(r"\bRecommendation: (scale|rework|extend|stop|fix)\.", text), pid
        assert "**" not in page.locator("body").inner_text()  # the run descriptions are rendered
        assert "**" not in report.read_text()
        assert str(demo_lab.root) not in report.read_text() and "mlflow.db" not in report.read_text()
        page.screenshot(path=shots / "portfolio.png", full_page=True)
        published = _publish(shots / "portfolio.png")
        assert published.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        foreign = [url for url in requests if not url.startswith("file://")]
        assert foreign == [], f"the report asked for addresses off this machine: {foreign}"
        assert requests == [report.as_uri()], requests
    finally:
        context.close()


def test_labkit_ui_ends_with_its_server_on_sighup(demo_lab, ui):
    """After the browser tests, the demo lab's `labkit ui` (RELIABILITY.md case 40): its log — its stdout and
    stderr — holds its three lines and nothing of MLflow's own log; its server binds 127.0.0.1 only and
    refuses a foreign Host; SIGHUP (a closed terminal) ends it with 128 + 1, and neither its `mlflow server`
    nor the uvicorn process under it is left running. SIGTERM and SIGINT take the same path; SIGKILL of
    `labkit ui` is tests/tracking/test_ui.py."""
    import psutil

    check_links(
        ui.log.read_text().splitlines(), demo_lab.lab.spec.lab, demo_lab.lab.spec.mlflow_experiment, ui.port
    )
    check_bound_to_localhost(ui.proc, ui.port)
    tree = [p.pid for p in psutil.Process(ui.proc.pid).children(recursive=True)]
    assert len(tree) >= 2, "mlflow server and its uvicorn process"
    ui.proc.send_signal(signal.SIGHUP)
    assert ui.proc.wait(timeout=30) == 128 + signal.SIGHUP
    assert still_alive(tree, within_s=15) == [], "SIGHUP left the server running"
    assert len(ui.log.read_text().splitlines()) == 3  # and nothing printed on the way out, no traceback
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", ui.port)) != 0  # nothing serves the port any more
