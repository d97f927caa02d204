"""Debian's Chromium, headless, driven by Playwright's Python package: one browser for the session.

Nothing is downloaded (``playwright install`` is never run); ``make test`` installs both (tools/system-deps),
and the tests that use the fixture fail rather than skip without them. The modules that use it —
tests/test_browser.py, tests/test_jupyterlab.py, tests/test_notebooks.py — read the session's demo lab and
are one unit of work under xdist (tests/conftest.py), so Chromium starts once on one worker (~1.3 CPU-s and
a Playwright driver per start). Each test opens its own browser context: no cookies, storage or pages are
shared between tests.

Playwright's sync API keeps its asyncio loop marked running in the worker's main thread for as long as the
browser is open, that is until the session ends: a later test on that worker that starts a loop of its own
(``asyncio.run``) does so in a thread (tests/runner/test_runner.py). labkit's in-process runs were seen
to pass on such a worker (one worker running the whole suite): nbclient runs them with a loop running.

Import the fixture into ``tests/conftest.py`` (``from chromium import chromium``), as ``demo_lab`` is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# --headless even where Playwright would add it; the rest keeps Chromium off the network (updates,
# sync, field trials, QUIC probes) so the tests run the same on a closed CI runner.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
INSTALL_HINT = (
    "`make test` installs them (tools/system-deps): `apt-get install -y --no-install-recommends chromium` (Debian's package; "
    "never `playwright install`) and `.venv/bin/pip install -e '.[test]'` (the playwright package)"
)


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium, headless, launched by Playwright with a fresh profile; fails if either is missing."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}; {INSTALL_HINT}", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the Python package playwright is not installed; {INSTALL_HINT}", pytrace=False)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
