"""A batch's HTML exports in a process of their own, so they use a core of their own.

Each run ends with two nbconvert exports of its notebook (``<stem>.html`` and ``report.html``): ~0.15 s of
CPU, and with nbconvert's import and first render ~0.9 s, all under the GIL of the process that runs the
batch — the process that also feeds every kernel its messages, saves the notebooks and records the runs.
16 demo pilots on 2 cores spent 3.9 of that process's 12.4 CPU-s on exports, and took 15.2 s without them
against 18.4 s with them. :func:`html_exports` starts ``python -m labkit.runner.exporter`` for the length
of a batch: it imports nbconvert and renders a small notebook once, while the preflight runs, then exports
what it is asked, one request at a time (one JSON line in, one out), with the very functions labkit uses
in-process — the files are the same bytes.

Nothing depends on it: a server that does not start, dies, or answers nonsense is dropped, and that export
and every later one run in-process, as without it. It is killed when the batch ends (no export is in
flight then) or with its stdin when labkit dies; it runs in a session of its own, out of reach of the Ctrl-C
a terminal sends to labkit's process group: the batch decides when it ends.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from labkit.runner.shared import Shared

log = logging.getLogger("labkit.runner")

# One export's answer, as labkit.runner.export.export_both gives it: ((html, error), (report, error)).
Exported = tuple[tuple[Path | None, str | None], tuple[Path | None, str | None]]

_SHARED: Shared[ExportServer] = Shared("html exports: the export process", "exporting in-process")


class ExportServer:
    """The export process of one batch; :meth:`export` returns None once it cannot be used."""

    def __init__(self) -> None:
        self.users = 0
        self._lock = threading.Lock()
        self.proc: subprocess.Popen | None = subprocess.Popen(
            [sys.executable, "-m", "labkit.runner.exporter"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # its failures are answers; anything else is nbconvert's chatter
            text=True,
            encoding="utf-8",
            start_new_session=True,  # a terminal's Ctrl-C goes to labkit's group, not here: the batch decides
        )

    def export(self, executed: Path, html_path: Path, report: Path | None) -> Exported | None:
        request = {
            "executed": str(executed),
            "html": str(html_path),
            "report": str(report) if report else None,
        }
        with self._lock:  # one request in flight: the answer read is this request's
            if self.proc is None:
                return None
            try:
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()
                answer = _answer(self.proc.stdout.readline())
            except (OSError, ValueError) as e:  # a broken pipe, a closed file
                answer = None
                log.info("html exports: the export process failed (%s); exporting in-process", e)
            if answer is None:
                self._drop()
            return answer

    def _drop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Kill it: no export is in flight once the batch ends, and a refused batch need not wait for its
        nbconvert import to finish."""
        with self._lock:
            self._drop()


def _answer(line: str) -> Exported | None:
    """The server's answer line as paths and errors; None for anything else (an empty line: it died)."""
    try:
        got = json.loads(line)
        return tuple(
            (Path(path) if path else None, str(error) if error else None) for path, error in got["views"]
        )  # type: ignore[return-value]
    except (ValueError, KeyError, TypeError):
        return None


@contextmanager
def html_exports(wanted: bool = True) -> Iterator[ExportServer | None]:
    """Exports of runs inside this block go to one export process (batches in one process share it);
    ``wanted=False``: none of its own (a batch running already still shares its one)."""
    if not wanted:
        yield current()
        return
    with _SHARED.use(ExportServer) as server:
        yield server


def current() -> ExportServer | None:
    return _SHARED.current()


def main() -> int:
    """The export process: warm nbconvert, then one export per request line until stdin closes."""
    from labkit.runner.export import export_both, warm_html_export

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the batch ends it, not an interrupt
    warm_html_export()
    for line in sys.stdin:
        request = json.loads(line)
        report = request["report"]
        views = export_both(
            Path(request["executed"]), Path(request["html"]), Path(report) if report else None
        )
        out = [[str(path) if path else None, error] for path, error in views]
        sys.stdout.write(json.dumps({"views": out}) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
