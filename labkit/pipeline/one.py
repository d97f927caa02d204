"""One pilot's run: its folder and pilot snapshot, its notebook, its record kept on disk and in MLflow, and
the :class:`Outcome` that sums it up, built once from what each step returned."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from labkit._files import write_atomic
from labkit.errors import LabkitError, RunError
from labkit.pipeline.recording import BackgroundTracking, Started, describe, record_run, write_kept
from labkit.spec import Pilot, load_pilot


@dataclass(frozen=True)
class Outcome:
    """What happened to one pilot in a batch: the summary row and the exit status behind it."""

    pilot: str
    function: str
    status: str  # FINISHED | FAILED | KILLED | NOT-RUN | NOT-RECORDED
    decision: str | None = None
    run_id: str | None = None
    seconds: float = 0.0
    output_dir: Path | None = None
    message: str | None = None
    spec_changed: bool = False
    recommendation: str | None = None
    link: str | None = None  # the run in the MLflow UI (a tracking server), else None: `labkit ui` serves it
    folder: str | None = None  # output_dir as shown to the user (relative to the lab root)


def _joined(message: str | None, *notes: str | None) -> str | None:
    """The run's message with each note that applies appended: ``first; second; ...``."""
    for note in notes:
        if note is not None:
            message = f"{message}; {note}" if message else note
    return message


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


CLAIM_ATTEMPTS = 1000


def claim_run_folder(runs: Path) -> tuple[str, Path]:
    """A new run folder under ``runs`` named by the UTC time to the microsecond, made by this process alone.

    Two processes running one pilot can read the same microsecond (eight released at once by one lock did,
    on an idle machine): ``mkdir`` decides which owns the name, and the other takes the next stamp, so both
    run, each with its own folder and run key. Any other OSError (a read-only or full disk) is raised."""
    taken = None
    for _ in range(CLAIM_ATTEMPTS):
        stamp = _stamp()
        if stamp == taken:  # the clock has not moved on since the clash: read it again
            time.sleep(1e-6)
            continue
        folder = runs / stamp
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            taken = stamp
            continue
        except OSError as exc:  # named by the folder it was making, not by the parent that refused
            raise OSError(exc.errno, exc.strerror, str(folder)) from exc
        return stamp, folder
    raise FileExistsError(errno.EEXIST, "no new run folder name was free", str(runs))


def snapshot_pilot(pilot: Pilot, folder: Path) -> Pilot:
    """Copy the pilot file into the run folder, once, at the start of the run, and load the copy.

    The notebook analyses the copy (its ``pilot_path`` parameter), MLflow logs and hashes the copy
    (``pilot/<id>.yaml``, ``labkit.spec_sha256``, ``labkit.prereg_sha256``, ``labkit.spec_changed``, the
    params), so editing the pilot while its run is in flight -- in a batch, for minutes -- changes nothing
    in that run: the next run picks the edit up and, if the pre-registration changed, flags it. The copy is
    validated again (the file may have been edited since the batch began) and must keep the pilot's id."""
    data = pilot.path.read_bytes()
    copy = folder / pilot.path.name
    with open(copy, "xb") as fh:  # a new file in a new folder: the usual mode, never a temp file's 0600
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    snap = load_pilot(copy, lab=pilot.lab)
    if snap.id != pilot.id:
        raise RunError(None, f"the pilot's id changed from '{pilot.id}' to '{snap.id}' since the batch began")
    return snap


def run_one(
    pilot: Pilot,
    tracking: BackgroundTracking | None,
    *,
    code_version: str,
    as_of: str | None = None,
    progress: bool = False,
    on_state=None,
) -> Outcome:
    """Execute one pilot's notebook and record it; never raises for a failing notebook or tracker.

    ``tracking``: the batch's MLflow store, opening in the background. The pilot's run is created RUNNING
    from another thread as soon as the store is open, while this one runs the notebook. When MLflow cannot
    be opened the notebook still runs, its outputs are kept, and the outcome says it was not recorded
    (with the `--record-only` hint) instead of FINISHED.
    """
    from labkit import runner
    from labkit.tracking import build_record

    started = time.time()
    try:
        # before any MLflow run exists: a read-only or full results disk is one message, not a RUNNING run
        stamp, out = claim_run_folder(pilot.results_dir / "runs")
    except OSError as exc:
        why = f"cannot create the run folder {pilot.lab.display(Path(exc.filename))}: {exc.strerror}; nothing was run"
        return Outcome(pilot.id, pilot.spec.function, "NOT-RUN", message=why)
    run_key = f"{pilot.id}/{stamp}"
    run_name = f"{pilot.id} {stamp[:8]}-{stamp[9:13]}"
    not_run = Outcome(pilot.id, pilot.spec.function, "NOT-RUN", output_dir=out, folder=pilot.lab.display(out))
    try:
        pilot = snapshot_pilot(pilot, out)  # from here the run knows only the copy taken at its start
    except (OSError, LabkitError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "; ".join(str(exc).splitlines())
        return replace(
            not_run, message=f"cannot take the pilot's snapshot for this run: {why}; nothing was run"
        )

    opening = tracking.start_run(pilot, run_name, run_key, started, as_of) if tracking is not None else None
    if on_state:
        on_state(pilot.id, "running notebook")
    params = {"pilot_path": str(pilot.path), "lab_path": str(pilot.lab.path), "as_of": as_of or ""}
    try:
        nb = runner.execute(
            pilot.notebook_path,
            out,
            params,
            cwd=pilot.lab.root,
            run_token=uuid.uuid4().hex,
            timeout_s=pilot.lab.spec.runner.timeout_seconds,
            kernel_name=pilot.lab.spec.runner.kernel,
            progress=progress,
        )
        results = _read_results(nb.results)
        run = opening.result() if opening is not None else Started(error=None)
        record = build_record(
            pilot,
            nb,
            run_key=run_key,
            run_name=run_name,
            results=results,
            spec_changed=run.spec_changed,
            code_version=code_version,
            previous_digest=run.previous_digest,
            started_at=started,  # the RUNNING run's start: the look of a run without --as-of
        )
    except BaseException as exc:
        # The run exists RUNNING in MLflow: whatever stopped us (a disk error, a bug), end it FAILED (KILLED on
        # an interrupt) rather than leave it for the next sweep, then report or re-raise.
        interrupted = isinstance(exc, KeyboardInterrupt | SystemExit)
        reason = describe(exc)
        run = opening.result() if opening is not None else Started(error=None)  # never left RUNNING
        if run.tracker is not None and run.run_id is not None:
            run.tracker.abandon(run.run_id, "KILLED" if interrupted else "FAILED", reason)
        if interrupted or not isinstance(exc, Exception):
            raise
        return replace(
            not_run, status="FAILED", run_id=run.run_id, message=reason, seconds=time.time() - started
        )
    kept = write_kept(out / "record.json", record.to_json(), pilot)  # MLflow still gets the run if not
    if on_state:
        on_state(pilot.id, "recording")
    recorded = record_run(run, record, out, pilot)
    unrecorded = None
    if recorded.error is not None:
        unrecorded = (
            f"not recorded in MLflow ({recorded.error}); outputs kept in {pilot.lab.display(out)}; "
            f"record them later with `labkit run --record-only {pilot.id}`"
        )
    return replace(
        not_run,
        status="NOT-RECORDED" if nb.status == "FINISHED" and unrecorded else nb.status,
        decision=results.get("decision") if results else None,
        recommendation=results.get("recommendation") if results else None,
        spec_changed=run.spec_changed,
        message=_joined(nb.message, kept, recorded.kept, unrecorded),
        run_id=recorded.run_id,
        link=recorded.link,
        seconds=time.time() - started,
    )


def _read_results(path: Path | None) -> dict | None:
    """The notebook's results.json (None without one), with its per-arm detail written beside it as a table
    artifact: MLflow's metrics keep the headline set (``labkit.tracking``)."""
    if path is None:
        return None
    from labkit.tracking import EFFECTS, effects_csv

    results = json.loads(Path(path).read_text())
    write_atomic(Path(path).parent / EFFECTS, effects_csv(results))
    return results
