"""labkit.runner.exporter: a batch's HTML exports in a process of their own — the same bytes as in-process,
in-process again whenever it fails, and gone when the batch ends or labkit dies."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from labkit.runner import exporter
from labkit.runner.export import export_both, export_views

# a 1x1 PNG: an output with an image, as the notebooks' figures are
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


def executed(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("greet_the_pilot('hello')", execution_count=1)
    code.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="hello\n"),
        nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"}),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# A pilot\n\nThe **verdict**."), code]
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="class")
def server():
    with exporter.html_exports() as running:
        yield running


class TestOneExportProcess:
    """Two tests on one process (its start imports nbconvert: ~1 s of CPU)."""

    def test_the_export_process_writes_the_bytes_labkit_writes_itself(self, server, tmp_path):
        nb = executed(tmp_path / "a.ipynb")
        mine = export_both(nb, tmp_path / "mine.html", tmp_path / "mine-report.html")
        theirs = server.export(nb, tmp_path / "a.html", tmp_path / "report.html")
        assert theirs == ((tmp_path / "a.html", None), (tmp_path / "report.html", None))
        assert (tmp_path / "a.html").read_bytes() == mine[0][0].read_bytes()
        assert (tmp_path / "report.html").read_bytes() == mine[1][0].read_bytes()
        assert b"greet_the_pilot" in (tmp_path / "a.html").read_bytes()
        assert b"greet_the_pilot" not in (tmp_path / "report.html").read_bytes()  # the report has no code
        assert server.export(nb, tmp_path / "b.html", None) == ((tmp_path / "b.html", None), (None, None))

    def test_an_export_that_fails_there_fails_as_it_would_here(self, server, tmp_path):
        broken = tmp_path / "broken.ipynb"
        broken.write_text("{ not json")
        here = export_both(broken, tmp_path / "x.html", tmp_path / "xr.html")
        there = server.export(broken, tmp_path / "y.html", tmp_path / "yr.html")
        assert there == here and here[0][0] is None and here[0][1]
        assert server.proc is not None and server.proc.poll() is None  # a failed export is an answer


def test_a_dead_export_process_leaves_the_exports_to_labkit(tmp_path):
    nb = executed(tmp_path / "a.ipynb")
    with exporter.html_exports() as running:
        pid = running.proc.pid
        running.proc.kill()
        running.proc.wait()
        assert export_views(nb, tmp_path / "a.html", tmp_path / "report.html", via=running) == (
            tmp_path / "a.html",
            tmp_path / "report.html",
            None,
        )
        assert running.proc is None and exporter.current() is running  # dropped, not restarted
        assert export_views(nb, tmp_path / "b.html", None, via=running) == (tmp_path / "b.html", None, None)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_batches_share_one_export_process_that_ends_with_the_last(tmp_path):
    nb = executed(tmp_path / "a.ipynb")
    with exporter.html_exports() as server:
        proc = server.proc
        assert os.getpgid(proc.pid) != os.getpgid(0)  # a terminal's Ctrl-C to labkit's group misses it
        with exporter.html_exports() as inner:
            assert inner is server and server.users == 2
        assert server.users == 1 and exporter.current() is server
        assert server.export(nb, tmp_path / "a.html", None) == ((tmp_path / "a.html", None), (None, None))
    assert exporter.current() is None and server.proc is None
    assert proc.wait(timeout=5) is not None  # killed at the end: no export is in flight then


def test_the_export_process_ends_when_labkit_dies(tmp_path):
    code = (
        "import sys, time\n"
        "from labkit.runner import exporter\n"
        "with exporter.html_exports() as s:\n"
        "    print(s.proc.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20  # it may be importing nbconvert still: stdin EOF is read after that
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"export process {pid} outlived labkit")


def test_a_one_pilot_run_starts_no_export_process():
    with exporter.html_exports(wanted=False) as none:
        assert none is None and exporter.current() is None
    with exporter.html_exports() as batch, exporter.html_exports(wanted=False) as inside:
        assert inside is batch and batch.users == 1  # a batch running in this process shares its own


def test_the_warm_up_threads_exporters_serve_every_later_export_and_threads_export_the_same_bytes(tmp_path):
    """`labkit run` warms nbconvert in a thread that then ends; the pilots' threads export after it. The
    exporters it built (their templates compiled) are the ones every later export uses — per-thread
    exporters died with the warm-up thread, and each run compiled its templates again — and exports from
    eight threads at once give the bytes of one export alone (one export at a time: an exporter is not
    made for threads)."""
    import threading

    from labkit.runner import export

    export._EXPORTERS.clear()
    warm = threading.Thread(target=export.warm_html_export)
    warm.start(), warm.join()
    built = dict(export._EXPORTERS)
    assert set(built) == {True, False}

    source = executed(tmp_path / "pilot.ipynb")
    alone = export_both(source, tmp_path / "alone.html", tmp_path / "alone-report.html")
    assert [error for _, error in alone] == [None, None]
    results: dict[int, tuple] = {}

    def export_in_thread(i: int) -> None:
        results[i] = export_both(source, tmp_path / f"{i}.html", tmp_path / f"{i}-report.html")

    threads = [threading.Thread(target=export_in_thread, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert export._EXPORTERS == built and all(export._EXPORTERS[k] is built[k] for k in built)
    for i in range(8):
        assert [error for _, error in results[i]] == [None, None]
        assert (tmp_path / f"{i}.html").read_bytes() == (tmp_path / "alone.html").read_bytes()
        assert (tmp_path / f"{i}-report.html").read_bytes() == (tmp_path / "alone-report.html").read_bytes()
