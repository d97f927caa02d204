"""`labkit run`: each pilot's notebook through papermill, then one MLflow run per analysis.

The only module that joins the runner (papermill) and tracking (MLflow). For every pilot:

1. before anything is created: the pilot validates, its notebook is a notebook with a ``parameters`` cell
   and a known kernel, and its assignment exists;
2. ``results/<id>/runs/<UTC stamp>/`` receives first a copy of the pilot file (``<id>.yaml``: the run
   analyses, logs and hashes this snapshot, so an edit while the run is in flight changes nothing in it),
   then the executed notebook (.ipynb and .html), results.json and figures — kept even when MLflow is down or the notebook fails. The folder is created before the MLflow
   run: a read-only or full results disk is then one line and no run (status NOT-RUN); a disk error later
   ends the run FAILED with the last complete save of the notebook, never a RUNNING run or a traceback;
3. the notebook starts at once; beside it (``_Tracking``: importing MLflow and opening the store cost
   seconds) an MLflow run is started RUNNING as soon as the store is open, dated from the pilot's start, so
   leadership sees the pilot in progress; the run is finished FINISHED, FAILED or KILLED with everything
   DESIGN.md lists. (A labkit killed with SIGKILL in those first seconds leaves no MLflow run, only its
   folder under results/; killed later, it leaves a RUNNING run that the next ``labkit run`` sweeps.) ``record.json`` beside the
   outputs holds exactly what was (or should have been) recorded, so ``labkit run --record-only`` can
   record it later; recording is idempotent on the run key, so nothing is recorded twice.

Pilots run in parallel worker threads (each notebook has its own kernel process); SIGINT, SIGTERM and SIGHUP
(a closed terminal) cancel every kernel in flight, the runs end KILLED and the exit code is 128 + the signal's
number: 130, 143 and 129. Stale RUNNING runs left by a
killed labkit are swept to KILLED at the start of every ``labkit run``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from labkit import __version__
from labkit.analysis import sources_used, write_atomic
from labkit.errors import LabkitError, SpecErrors, TrackingError
from labkit.lab import Lab
from labkit.spec import Pilot, list_pilots, load_pilot

if TYPE_CHECKING:  # pragma: no cover
    from labkit.tracking import RunRecord, Tracker

RECORDED = "recorded.json"  # written beside record.json once MLflow holds the run
EFFECTS = "effects.csv"  # every (metric, arm) row of results.json: the run's per-arm table artifact
# One recorder at a time in this process: MLflow's log_inputs races when two runs log the same new dataset
# at once (its check-then-insert fails on the UNIQUE constraint of datasets, on sqlite and through a server),
# and the pilots of a batch share their sources. Recording is short next to a notebook.
_RECORDING = threading.Lock()


@dataclass
class Outcome:
    """What happened to one pilot in a batch: the summary row and the exit status behind it."""

    pilot: str
    function: str
    status: str  # FINISHED | FAILED | KILLED | NOT-RUN
    decision: str | None = None
    run_id: str | None = None
    seconds: float = 0.0
    output_dir: Path | None = None
    message: str | None = None
    spec_changed: bool = False
    recommendation: str | None = None
    link: str | None = None  # the run in the MLflow UI (a tracking server), else None: `labkit ui` serves it
    folder: str | None = None  # output_dir as shown to the user (relative to the lab root)


def resolve_pilots(lab: Lab, refs: list[str]) -> list[Pilot]:
    """Pilot files, ids or folders -> validated pilots (all problems of all files reported together)."""
    paths: list[str | Path] = []
    for ref in refs or [str(lab.experiments_dir)]:
        p = Path(ref)
        paths.extend(sorted(p.glob("*.yaml")) if p.is_dir() else [ref])
    pilots, problems = [], []
    for ref in paths:
        try:
            pilots.append(load_pilot(ref, lab=lab))
        except SpecErrors as exc:
            problems.extend(exc.errors)
    if problems:
        raise SpecErrors(problems)
    if not pilots:
        raise LabkitError(
            f"no pilots to run in {', '.join(map(str, refs)) or lab.display(lab.experiments_dir)}"
        )
    return pilots


def preflight(pilot: Pilot) -> None:
    """Everything that must hold before a run is created (RELIABILITY #11, #12): the notebook, the
    assignment, the database connection, and every metric's columns and types in the sources' schemas
    (a Spark pilot's schemas are left to its run: checking them here would start a JVM)."""
    from labkit.assignment import load_assignment
    from labkit.data.aggregate import check_metrics
    from labkit.data.sources import SPARK, Engine, pilot_sources
    from labkit.data.sources import preflight as check_sources
    from labkit.runner import check_notebook

    try:
        check_notebook(pilot.notebook_path, kernel_name=pilot.lab.spec.runner.kernel)
    except LabkitError as exc:
        raise LabkitError(f"{pilot.id}: {exc}") from None
    load_assignment(pilot)
    check_sources(pilot)  # a database that refuses the connection stops here, before a run exists
    if all(pilot.lab.source(n).format != SPARK for n in pilot_sources(pilot)):
        engine = Engine.for_lab(pilot.lab)
        try:
            check_metrics(engine, pilot)
        finally:
            engine.close()


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def build_record(
    pilot: Pilot,
    nb,
    *,
    run_key: str,
    run_name: str,
    results: dict | None,
    spec_changed: bool,
    code_version: str,
    previous_digest: str | None = None,
) -> RunRecord:
    """The RunRecord of one notebook run: tags, params, metrics, description, artifacts, datasets.

    ``labkit.data_changed`` is "true" when the data digest differs from the pilot's previous latest run
    (rows changed, reordered or appended since), so `labkit compare` can flag it."""
    from labkit.data.sources import DigestCache
    from labkit.tracking import RunRecord, flatten_params, metrics_from_results

    s = pilot.spec
    decision = results.get("decision") if results else None
    meta = (results or {}).get("meta", {})
    tags = {
        "labkit.function": s.function,
        "labkit.channel": s.channel,
        "labkit.stage": s.stage,
        "labkit.owner": s.owner,
        "labkit.title": s.title,
        "labkit.primary_metric": s.hypothesis.metric,
        "labkit.decision": decision or ("failed" if nb.status == "FAILED" else nb.status.lower()),
        "labkit.spec_sha256": pilot.spec_sha256,
        "labkit.prereg_sha256": pilot.prereg_sha256,
        "labkit.spec_changed": "true" if spec_changed else "false",
        "labkit.code_version": code_version,
        "labkit.notebook": pilot.lab.display(pilot.notebook_path),
    }
    if meta.get("data_digest"):
        tags["labkit.data_digest"] = meta["data_digest"]
        changed = previous_digest is not None and previous_digest != meta["data_digest"]
        tags["labkit.data_changed"] = "true" if changed else "false"
    if nb.message:
        tags["labkit.error"] = nb.message[:5000]
    advice = (results or {}).get("recommendation")
    if advice:
        tags["labkit.recommendation"] = advice
        if results.get("recommendation_arm"):
            tags["labkit.recommendation_arm"] = results["recommendation_arm"]
    h = s.hypothesis
    # the runs table shows the description's first line, unrendered: decision, recommendation and ROI
    # first, in plain words (no Markdown); the run page renders the rest
    lines = [
        headline(results) if results else f"Run {nb.status.lower()}: no decision",
        "",
        f"**{s.title}** ({s.function} · {s.channel} · {s.stage})",
    ]
    if results and advice:
        lines += ["", f"**Recommendation: {advice}.** {results.get('recommendation_reason') or ''}"]
    if results:
        lines += ["", f"**Decision: {decision}.** {results.get('reason', '')}"]
    lines += [
        "",
        f"**Hypothesis.** {h.statement}",
        f"Primary metric `{h.metric}`, predicted to {h.direction}.",
    ]
    if results:
        # every data warning of the analysis (DESIGN.md): in results.json, the notebook and here
        warned = [str(w) for w in results.get("warnings") or []]
        if warned:
            lines += ["", "**Warnings.**", *(f"- {w}" for w in warned)]
    else:
        lines += ["", f"**Run {nb.status.lower()}.** {nb.message or ''}"]
    artifacts = [str(pilot.path)]
    for path in (nb.executed, nb.html, getattr(nb, "report", None), nb.results):  # report.html: no code
        if path is not None and Path(path).is_file():
            artifacts.append(str(path))
    effects = Path(nb.results).parent / EFFECTS if nb.results is not None else None
    if effects is not None and effects.is_file():
        artifacts.append(str(effects))
    artifacts += [str(f) for f in nb.figures]
    datasets = []
    digests = DigestCache.load(pilot.lab)  # the notebook's analysis has just hashed these files
    for name in sorted(sources_used(pilot)):
        src = pilot.lab.source(name)
        if src.format in ("csv", "parquet"):
            path = pilot.lab.source_path(name)
            if path.is_file():
                datasets.append(
                    {"name": name, "digest": digests.digest(path), "source": pilot.lab.display(path)}
                )
    return RunRecord(
        pilot=pilot.id, run_name=run_name, status=nb.status, run_key=run_key, tags=tags,
        params=flatten_params(s.model_dump(mode="json")), metrics=metrics_from_results(results) if results else {},
        description="\n".join(lines), artifacts=artifacts, datasets=datasets, started_at=nb.started_at,
        ended_at=nb.ended_at,
    )  # fmt: skip


def headline(results: dict) -> str:
    """The first line of a run's description, in plain words: ``Decision ship · Recommendation rework
    (discount_post) · ROI -5.0 % [-71 %, +61 %]`` — what the runs table shows of the description."""
    parts = [f"Decision {results.get('decision') or '?'}"]
    if results.get("recommendation"):
        arm = results.get("recommendation_arm")
        parts.append(f"Recommendation {results['recommendation']}" + (f" ({arm})" if arm else ""))
    roi = results.get("roi") or {}
    if roi.get("roi") is not None:
        text = f"ROI {roi['roi'] * 100:+.1f} %"
        if roi.get("roi_ci_low") is not None and roi.get("roi_ci_high") is not None:
            text += f" [{roi['roi_ci_low'] * 100:+.0f} %, {roi['roi_ci_high'] * 100:+.0f} %]"
        parts.append(text)
    else:
        parts.append("no budget, no ROI" if not roi else "ROI unknown")
    return " · ".join(parts)


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
        raise LabkitError(f"the pilot's id changed from '{pilot.id}' to '{snap.id}' since the batch began")
    return snap


def run_one(
    pilot: Pilot,
    tracking: _Tracking | None,
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

    started = time.time()
    stamp = _stamp()
    out = pilot.results_dir / "runs" / stamp
    run_key = f"{pilot.id}/{stamp}"
    run_name = f"{pilot.id} {stamp[:8]}-{stamp[9:13]}"
    token = uuid.uuid4().hex
    outcome = Outcome(pilot.id, pilot.spec.function, "NOT-RUN", output_dir=out, folder=pilot.lab.display(out))
    try:
        # before any MLflow run exists: a read-only or full results disk is one message, not a RUNNING run
        out.mkdir(parents=True)
    except OSError as exc:
        outcome.message = (
            f"cannot create the run folder {pilot.lab.display(out)}: {exc.strerror}; nothing was run"
        )
        return outcome
    try:
        pilot = snapshot_pilot(pilot, out)  # from here the run knows only the copy taken at its start
    except (OSError, LabkitError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "; ".join(str(exc).splitlines())
        outcome.message = f"cannot take the pilot's snapshot for this run: {why}; nothing was run"
        return outcome

    opening = tracking.start_run(pilot, run_name, run_key, started) if tracking is not None else None
    if on_state:
        on_state(pilot.id, "running notebook")
    params = {
        "pilot_path": str(pilot.path),
        "lab_path": str(pilot.lab.path),
        "as_of": as_of or "",
    }
    try:
        nb = runner.execute(
            pilot.notebook_path,
            out,
            params,
            cwd=pilot.lab.root,
            run_token=token,
            timeout_s=pilot.lab.spec.runner.timeout_seconds,
            kernel_name=pilot.lab.spec.runner.kernel,
            progress=progress,
        )
        results = None
        if nb.results is not None:
            results = json.loads(Path(nb.results).read_text())
            from labkit.tracking import effects_csv

            # the per-arm detail as a table artifact: MLflow's metrics keep the headline set (tracking)
            write_atomic(Path(nb.results).parent / EFFECTS, effects_csv(results))
        run = opening.result() if opening is not None else _Started(error=None)
        record = build_record(
            pilot,
            nb,
            run_key=run_key,
            run_name=run_name,
            results=results,
            spec_changed=run.spec_changed,
            code_version=code_version,
            previous_digest=run.previous_digest,
        )
    except BaseException as exc:
        # The run exists RUNNING in MLflow: whatever stopped us (a disk error, a bug), end it FAILED (KILLED on
        # an interrupt) rather than leave it for the next sweep, then report or re-raise.
        interrupted = isinstance(exc, KeyboardInterrupt | SystemExit)
        reason = _describe(exc)
        run = opening.result() if opening is not None else _Started(error=None)  # never left RUNNING
        if run.tracker is not None and run.run_id is not None:
            run.tracker.abandon(run.run_id, "KILLED" if interrupted else "FAILED", reason)
        if interrupted or not isinstance(exc, Exception):
            raise
        outcome.status, outcome.run_id, outcome.message = "FAILED", run.run_id, reason
        outcome.seconds = time.time() - started
        return outcome
    outcome.spec_changed = run.spec_changed
    tracker, run_id, tracking_error = run.tracker, run.run_id, run.error
    outcome.status = nb.status
    outcome.decision = results.get("decision") if results else None
    outcome.recommendation = results.get("recommendation") if results else None
    outcome.message = nb.message
    kept = _write_kept(out / "record.json", record.to_json(), pilot)
    if kept is not None:  # MLflow still gets the run; only a later --record-only of it is impossible
        outcome.message = f"{outcome.message}; {kept}" if outcome.message else kept
    if on_state:
        on_state(pilot.id, "recording")
    if tracker is not None and tracking_error is None:
        try:
            with _RECORDING:
                if run_id is not None:
                    tracker.finish(run_id, record)
                else:
                    run_id = tracker.record(record)
        except TrackingError as exc:
            tracking_error = str(exc)
        else:
            kept = _write_kept(
                out / RECORDED, json.dumps({"run_id": run_id, "run_key": run_key}) + "\n", pilot
            )
            if kept is not None:
                outcome.message = f"{outcome.message}; {kept}" if outcome.message else kept
    if tracking_error is not None:
        note = (
            f"not recorded in MLflow ({tracking_error}); outputs kept in {pilot.lab.display(out)}; "
            f"record them later with `labkit run --record-only {pilot.id}`"
        )
        outcome.message = f"{outcome.message}; {note}" if outcome.message else note
        if outcome.status == "FINISHED":
            outcome.status = "NOT-RECORDED"
    outcome.run_id = run_id
    if tracker is not None and run_id is not None and tracking_error is None:
        outcome.link = run_link(pilot.lab, tracker.experiment_id, run_id)
    outcome.seconds = time.time() - started
    return outcome


def run_link(lab: Lab, experiment_id: str | None, run_id: str) -> str | None:
    """The run's page in the MLflow UI when the store is a tracking server (``http(s)://``, which serves the
    UI itself; credentials and query left out); None for a local store: `labkit ui` serves it on a port of
    its own, so no address is known yet."""
    from labkit.tracking import display_uri

    uri = lab.tracking_uri
    if experiment_id is None or not uri.startswith(("http://", "https://")):
        return None
    return f"{display_uri(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


@dataclass
class _Started:
    """A pilot's MLflow run as created (or not) before its record: what the record needs to know."""

    error: str | None  # why MLflow could not be used for this run, or None
    tracker: Tracker | None = None
    run_id: str | None = None
    spec_changed: bool = False
    previous_digest: str | None = None


class _Tracking:
    """The lab's MLflow store for one batch, opened in a background thread while the first kernels start.

    Importing MLflow and opening a sqlite store cost seconds (benchmarks/README.md, runs) and a notebook's
    kernel is another process, so the two proceed side by side. The store is opened (and stale RUNNING
    runs swept) once; each pilot's run is then created RUNNING, started at the pilot's own start time, by
    :meth:`start_run` — also in the background, so a notebook never waits for MLflow, and its outcome
    waits only when it is to be recorded. A store that cannot be opened is reported once; every run of
    the batch then keeps its outputs as NOT-RECORDED."""

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
            error = str(exc) if isinstance(exc, TrackingError) else _describe(exc)
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

    def start_run(self, pilot: Pilot, run_name: str, run_key: str, started: float):
        """A future of the pilot's :class:`_Started` run."""
        return self._pool.submit(self._start, pilot, run_name, run_key, started)

    def _start(self, pilot: Pilot, run_name: str, run_key: str, started: float) -> _Started:
        tracker, error = self._opened.result()
        if tracker is None:
            return _Started(error=error)
        try:
            first = tracker.first_prereg(pilot.id)
            previous_digest = tracker.latest_tag(pilot.id, "labkit.data_digest")
            run_id = tracker.start(
                pilot.id, run_name, run_key, {"labkit.function": pilot.spec.function}, started_at=started
            )
        except TrackingError as exc:
            return _Started(error=str(exc))
        changed = first is not None and first != pilot.prereg_sha256
        return _Started(None, tracker, run_id, changed, previous_digest)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _describe(exc: BaseException) -> str:
    """One line for an exception that ended a run outside the notebook (a disk error, a labkit bug)."""
    if isinstance(exc, LabkitError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"labkit could not finish the run: {exc.strerror}{where}"
    from labkit.tracking import redact  # an MLflow or driver error may quote a URI with its password

    return redact(f"labkit could not finish the run: {type(exc).__name__}: {exc}")


def _write_kept(path: Path, text: str, pilot: Pilot) -> str | None:
    """Write a file of the kept run atomically; None, or on a disk error the one-line reason."""
    try:
        write_atomic(path, text)
    except OSError as exc:
        return f"cannot write {pilot.lab.display(path)}: {exc.strerror}"
    return None


def record_only(lab: Lab, pilots: list[Pilot]) -> list[Outcome]:
    """Record every kept run of these pilots that MLflow does not hold yet (idempotent on the run key)."""
    from labkit.tracking import RunRecord, Tracker

    tracker = Tracker(lab)
    tracker.prepare()
    outcomes = []
    for pilot in pilots:
        for record_file in sorted((pilot.results_dir / "runs").glob("*/record.json")):
            folder = record_file.parent
            if (folder / RECORDED).is_file():
                continue
            record = RunRecord.from_json(record_file.read_text())
            started = time.time()
            run_id = tracker.record(record)
            write_atomic(folder / RECORDED, json.dumps({"run_id": run_id, "run_key": record.run_key}) + "\n")
            decision = record.tags.get("labkit.decision")
            outcomes.append(
                Outcome(
                    pilot.id,
                    pilot.spec.function,
                    record.status,
                    decision,
                    run_id,
                    time.time() - started,
                    folder,
                    recommendation=record.tags.get("labkit.recommendation"),
                    link=run_link(lab, tracker.experiment_id, run_id),
                    folder=lab.display(folder),
                )
            )
    return outcomes


class _Signals:
    """SIGTERM or SIGHUP in the main thread cancels every kernel in flight; the exit code says which signal.

    SIGHUP is what a closed terminal (or an ended ssh session) sends: it is a request to stop like SIGTERM,
    so the runs in flight end KILLED the same way and ``labkit run`` exits 129 (128 + SIGHUP; SIGTERM 143).
    Under ``nohup`` (SIGHUP ignored when labkit starts) it stays ignored."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.received: str | None = None
        self._old: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                if signum == signal.SIGHUP and signal.getsignal(signum) is signal.SIG_IGN:
                    continue  # started under nohup: the user asked to outlive the terminal
                self._old[signum] = signal.signal(signum, self._term)
        return self

    def _term(self, signum, frame):
        from labkit import runner

        self.received = self.received or signal.Signals(signum).name
        runner.cancel_all(self.received)

    def __exit__(self, *exc):
        for signum, old in self._old.items():
            signal.signal(signum, old)
        return False


def run_batch(
    lab: Lab,
    pilots: list[Pilot],
    *,
    workers: int | None = None,
    as_of: str | None = None,
    track: bool = True,
    console=None,
) -> tuple[list[Outcome], int]:
    """Run pilots in parallel with one progress display; returns the outcomes and the exit code."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from labkit import runner

    console = console or Console(stderr=True)
    for pilot in pilots:
        preflight(pilot)
    workers = workers or lab.spec.runner.workers or os.cpu_count() or 1
    workers = min(workers, len(pilots))
    tracking = _Tracking(lab, console, workers) if track else None
    # every pilot ends with an HTML export of its notebook: nbconvert's set-up is done while kernels run
    threading.Thread(target=runner.warm_html_export, name="labkit-warm-html", daemon=True).start()
    code_version = __version__ + (f"+{c}" if (c := _git_commit(lab.root)) else "")
    outcomes: dict[str, Outcome] = {}
    interrupted = None
    with (
        _Signals() as signals,
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress,
    ):
        tasks = {p.id: progress.add_task(f"{p.id}: waiting", total=None) for p in pilots}

        def state(pid: str, text: str) -> None:
            progress.update(tasks[pid], description=f"{pid}: {text}")

        def work(p: Pilot) -> Outcome:
            if signals.received or interrupted:
                return Outcome(p.id, p.spec.function, "KILLED", message="not started: interrupted")
            o = run_one(p, tracking, code_version=code_version, as_of=as_of, on_state=state)
            state(p.id, f"{o.status.lower()}" + (f" · {o.decision}" if o.decision else ""))
            progress.update(tasks[p.id], total=1, completed=1)
            return o

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="labkit-run")
        futures = {p.id: pool.submit(work, p) for p in pilots}
        # After a signal, cancel_all is repeated while waiting: a run that was between its MLflow start and
        # its kernel's registration when the signal came would otherwise miss it and run on (for ever, if hung).
        try:
            for pid, fut in futures.items():
                while True:
                    try:
                        outcomes[pid] = fut.result(timeout=0.2)
                        break
                    except TimeoutError:
                        if signals.received:
                            runner.cancel_all(signals.received)
        except KeyboardInterrupt:
            interrupted = "SIGINT"
            for pid, fut in futures.items():
                while pid not in outcomes:
                    try:
                        runner.cancel_all("SIGINT")
                        outcomes[pid] = fut.result(timeout=0.2)
                    except (TimeoutError, KeyboardInterrupt):  # a second Ctrl-C changes nothing
                        continue
        finally:
            pool.shutdown(wait=True)
            if tracking is not None:
                tracking.close()
    signal_name = interrupted or signals.received
    ordered = [outcomes[p.id] for p in pilots]
    if signal_name:
        code = 128 + int(getattr(signal, signal_name))
    else:
        code = 0 if all(o.status == "FINISHED" for o in ordered) else 1
    return ordered, code


def render_outcomes(outcomes: list[Outcome], console=None) -> None:
    """The batch's summary table, then for each pilot its MLflow run — the id in full, with the run's link on
    a tracking server or the `labkit ui` hint on a local store — and its output folder, each on one line
    that is never cut (a terminal too narrow for a table cell folds or truncates a 32-character id)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"{len(outcomes)} pilot run(s)")
    for col in ("pilot", "function", "status", "decision", "recommendation", "time"):
        table.add_column(col)
    colour = {"FINISHED": "green", "FAILED": "red", "KILLED": "magenta", "NOT-RECORDED": "yellow"}
    for o in outcomes:
        table.add_row(
            o.pilot,
            o.function,
            f"[{colour.get(o.status, 'white')}]{o.status}[/]",
            o.decision or "–",
            o.recommendation or "–",
            f"{o.seconds:.1f} s",
        )
    console.print(table)

    def say(text: str, style: str | None = None) -> None:
        # One line each, whatever the terminal width (soft_wrap: rich inserts no line breaks), and as plain
        # text: a message quotes the notebook's own error, which must not be read as markup.
        console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    local = any(o.run_id and not o.link for o in outcomes)
    for o in outcomes:  # what went wrong first, then where the run and its outputs are
        if o.message:
            say(f"{o.pilot}: {o.message}")
        if o.spec_changed:
            say(
                f"{o.pilot}: the hypothesis, metrics or cohort changed since the first run "
                "(pre-registration); tagged labkit.spec_changed=true",
                "yellow",
            )
        if o.run_id:
            where = o.link or "open it with `labkit ui`"
            say(f"{o.pilot}: MLflow run {o.run_id} — {where}")
        if o.folder and o.status != "NOT-RUN":
            say(f"{o.pilot}: outputs in {o.folder}/")
    if local:
        say("`labkit ui` starts the MLflow UI on this lab's store and prints the link to its runs table")


def all_pilots(lab: Lab) -> list[str]:
    return [str(p) for p in list_pilots(lab)]
