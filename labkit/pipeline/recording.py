"""MLflow beside the notebooks: the batch's store opened in the background, each pilot's run started RUNNING
as soon as it is, and a finished run's record written into it.

Importing MLflow and opening a sqlite store cost seconds (benchmarks/README.md, runs) and a notebook's
kernel is another process, so the two proceed side by side: a notebook never waits for MLflow, and its
outcome waits only when it is to be recorded. Whatever MLflow says is one line: a run that cannot be
recorded keeps its outputs and says how to record them later (`labkit run --record-only`).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from labkit._files import write_atomic
from labkit.errors import LabkitError, TrackingError
from labkit.lab import Lab
from labkit.spec import Pilot
from labkit.tracking.history import look_stamp
from labkit.tracking.record import TAG_LOOK

if TYPE_CHECKING:  # pragma: no cover
    from labkit.tracking import RunRecord, Tracker

RECORDED = "recorded.json"  # written beside record.json once MLflow holds the run
# One recorder at a time in this process: MLflow's log_inputs races when two runs log the same new dataset
# at once (its check-then-insert fails on the UNIQUE constraint of datasets, on sqlite and through a server),
# and the pilots of a batch share their sources. Recording is short next to a notebook.
_RECORDING = threading.Lock()


@dataclass(frozen=True)
class Started:
    """A pilot's MLflow run as created (or not) before its record: what the record needs to know."""

    error: str | None  # why MLflow could not be used for this run, or None
    tracker: Tracker | None = None
    run_id: str | None = None
    spec_changed: bool = False
    previous_digest: str | None = None


class BackgroundTracking:
    """The lab's MLflow store for one batch, opened in a background thread while the first kernels start.

    The store is opened (and stale RUNNING runs swept) once; each pilot's run is then created RUNNING,
    started at the pilot's own start time, by :meth:`start_run` — also in the background. A store that
    cannot be opened is reported once; every run of the batch then keeps its outputs as NOT-RECORDED."""

    def __init__(self, lab: Lab, console, workers: int):
        self._pool = ThreadPoolExecutor(max_workers=workers + 1, thread_name_prefix="labkit-mlflow")
        self._opened = self._pool.submit(self._open, lab, console)

    @staticmethod
    def _open(lab: Lab, console) -> tuple[Tracker | None, str | None]:
        from rich.markup import escape

        from labkit.tracking import Tracker

        try:
            tracker = Tracker(lab)
            tracker.prepare()
            swept = tracker.sweep_stale()
        except Exception as exc:  # noqa: BLE001 — a TrackingError, or anything MLflow raised: one line
            error = str(exc) if isinstance(exc, TrackingError) else describe(exc)
            # The notebooks still run and keep their outputs, but no run is FINISHED in MLflow: each outcome
            # says so (NOT-RECORDED, exit 1) rather than passing for a recorded run.
            console.print(
                f"[yellow]warning:[/yellow] MLflow is not reachable ({escape(error)}); "
                "outputs are kept in results/ and can be recorded later with `labkit run --record-only`"
            )
            return None, error
        if swept:
            console.print(f"swept {len(swept)} stale RUNNING run(s) to KILLED")
        return tracker, None

    def start_run(
        self, pilot: Pilot, run_name: str, run_key: str, started: float, as_of: str | None = None
    ) -> Future[Started]:
        """A future of the pilot's :class:`Started` run; tagged with its look (``labkit.look``) from the start,
        so that `labkit compare` knows a look back in flight from a run about to replace the numbers."""
        return self._pool.submit(self._start, pilot, run_name, run_key, started, as_of)

    def _start(self, pilot: Pilot, run_name: str, run_key: str, started: float, as_of: str | None) -> Started:
        tracker, error = self._opened.result()
        if tracker is None:
            return Started(error=error)
        try:
            first = tracker.first_prereg(pilot.id)
            previous_digest = tracker.latest_tag(pilot.id, "labkit.data_digest")
            tags = {"labkit.function": pilot.spec.function, TAG_LOOK: look_stamp(as_of, started)}
            run_id = tracker.start(pilot.id, run_name, run_key, tags, started_at=started)
        except TrackingError as exc:
            return Started(error=str(exc))
        changed = first is not None and first != pilot.prereg_sha256
        return Started(None, tracker, run_id, changed, previous_digest)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass(frozen=True)
class Recorded:
    """What recording a run came to: its MLflow run id, why MLflow does not hold it, a disk error."""

    run_id: str | None
    error: str | None = None  # not recorded in MLflow, and why
    kept: str | None = None  # recorded, but recorded.json could not be written
    link: str | None = None  # the run in the MLflow UI of a tracking server


def record_run(run: Started, record: RunRecord, folder: Path, pilot: Pilot) -> Recorded:
    """Finish the pilot's RUNNING run with its record (or record it whole when no run was started), then
    mark the kept folder recorded; a TrackingError is the returned ``error``, never raised."""
    if run.tracker is None or run.error is not None:
        return Recorded(run.run_id, run.error)
    run_id = run.run_id
    try:
        with _RECORDING:
            if run_id is not None:
                run.tracker.finish(run_id, record)
            else:
                run_id = run.tracker.record(record)
    except TrackingError as exc:
        return Recorded(run_id, str(exc))
    marker = json.dumps({"run_id": run_id, "run_key": record.run_key}) + "\n"
    kept = write_kept(folder / RECORDED, marker, pilot)
    link = run_link(pilot.lab, run.tracker.experiment_id, run_id) if run_id is not None else None
    return Recorded(run_id, kept=kept, link=link)


def write_kept(path: Path, text: str, pilot: Pilot) -> str | None:
    """Write a file of the kept run atomically; None, or on a disk error the one-line reason."""
    try:
        write_atomic(path, text)
    except OSError as exc:
        return f"cannot write {pilot.lab.display(path)}: {exc.strerror}"
    return None


def run_link(lab: Lab, experiment_id: str | None, run_id: str) -> str | None:
    """The run's page in the MLflow UI when the store is a tracking server (``http(s)://``, which serves the
    UI itself; credentials and query left out); None for a local store: `labkit ui` serves it on a port of
    its own, so no address is known yet."""
    from labkit.tracking import display_uri

    uri = lab.tracking_uri
    if experiment_id is None or not uri.startswith(("http://", "https://")):
        return None
    return f"{display_uri(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def describe(exc: BaseException) -> str:
    """One line for an exception that ended a run outside the notebook (a disk error, a labkit bug)."""
    if isinstance(exc, LabkitError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"labkit could not finish the run: {exc.strerror}{where}"
    from labkit.tracking import redact  # an MLflow or driver error may quote a URI with its password

    return redact(f"labkit could not finish the run: {type(exc).__name__}: {exc}")
