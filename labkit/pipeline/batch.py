"""A batch of pilots: resolved and checked before anything is created, run in parallel worker threads under one
progress display, stopped together by a signal, and summed up in one table; `--record-only` as well."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from labkit import __version__
from labkit._files import write_atomic
from labkit.errors import RunError, SpecErrors
from labkit.lab import Lab
from labkit.pipeline.one import Outcome, run_one
from labkit.pipeline.recording import RECORDED, BackgroundTracking, run_link
from labkit.spec import Pilot, list_pilots, load_pilot


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
        raise RunError(
            None, f"no pilots to run in {', '.join(map(str, refs)) or lab.display(lab.experiments_dir)}"
        )
    return pilots


def preflight(pilot: Pilot, engines: SharedEngines | None = None) -> None:
    """Everything that must hold before a run is created (RELIABILITY #11, #12): the notebook, the
    assignment, the database connection, and every metric's columns and types in the sources' schemas
    (a Spark pilot's schemas are left to its run: checking them here would start a JVM). ``engines``: a
    batch's engines, shared by its pilots' checks; without it the pilot's engine is its own."""
    from labkit.assignment import load_assignment
    from labkit.data.aggregate import check_metrics
    from labkit.data.sources import SPARK, pilot_sources
    from labkit.data.sources import preflight as check_sources
    from labkit.runner import check_notebook

    try:
        check_notebook(pilot.notebook_path, kernel_name=pilot.lab.spec.runner.kernel)
    except RunError as exc:  # the runner names the notebook; the user knows the pilot
        raise RunError(pilot.id, str(exc), cell=exc.cell, ename=exc.ename) from None
    load_assignment(pilot)
    check_sources(pilot)  # a database that refuses the connection stops here, before a run exists
    if all(pilot.lab.source(n).format != SPARK for n in pilot_sources(pilot)):
        if engines is not None:
            check_metrics(engines.of(pilot.lab), pilot)
            return
        with SharedEngines() as own:
            check_metrics(own.of(pilot.lab), pilot)


class SharedEngines:
    """One data engine per lab for the preflight of a whole batch, opened on first use, closed at the end.

    Each pilot's check opens the sources it reads (DuckDB sniffs a CSV, reads a Parquet footer, Ibis builds
    the table's schema): ~0.1 s of CPU per pilot of the demo lab, paid once per source instead of once per
    pilot when the pilots share the engine. The checks only build expressions from the schemas; the engine
    is the one a single pilot would get (``Engine.for_lab``), which binds itself to each pilot's sources."""

    def __init__(self) -> None:
        self._engines: dict[int, object] = {}

    def of(self, lab: Lab):
        from labkit.data.sources import Engine

        engine = self._engines.get(id(lab))
        if engine is None:
            engine = self._engines[id(lab)] = Engine.for_lab(lab)
        return engine

    def __enter__(self) -> SharedEngines:
        return self

    def __exit__(self, *exc) -> bool:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
        return False


def preflight_all(pilots: list[Pilot], as_of: str | None = None) -> None:
    """:func:`preflight` of every pilot, in order, on shared engines, and the look date against each pilot's
    start (``labkit.analysis.as_of_problem``; without ``--as-of`` the look is now,
    ``labkit.listing.not_started``): the first refusal stops the batch before any run exists."""
    from labkit.listing import not_started

    with SharedEngines() as engines:
        for pilot in pilots:
            if not as_of and (problem := not_started(pilot)):  # first: its sources may not exist yet either
                raise RunError(pilot.id, problem)
            preflight(pilot, engines)
            if as_of:  # labkit.analysis is not imported by a plain `labkit run` (its kernels import it)
                from labkit.analysis import as_of_problem

                if problem := as_of_problem(pilot, as_of):
                    raise RunError(pilot.id, f"--as-of: {problem.removeprefix('as_of ')}")


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
            outcome = Outcome(
                pilot=pilot.id,
                function=pilot.spec.function,
                status=record.status,
                decision=record.tags.get("labkit.decision"),
                run_id=run_id,
                seconds=time.time() - started,
                output_dir=folder,
                recommendation=record.tags.get("labkit.recommendation"),
                link=run_link(lab, tracker.experiment_id, run_id),
                folder=lab.display(folder),
            )
            outcomes.append(outcome)
    return outcomes


def default_workers() -> int:
    """Two more pilots in flight than the cores this process may use.

    A pilot's run is not all CPU on one core: its kernel waits for jupyter_client at start (an IOPub flush
    of 0.2 s) and at shutdown (polls every 0.1 s), and labkit's own share — saving the notebook after each
    cell, the two HTML exports, the record — runs in this process under one GIL. With one run per core a
    core idles through each of those; two more runs fill them (16 demo pilots on 2 cores: ~10 % less time
    with 4 workers than with 2; benchmarks/README.md)."""
    try:
        cores = len(os.sched_getaffinity(0))  # a container's or taskset's share, not the host's count
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return cores + 2


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
    """Run pilots in parallel with one progress display; returns the outcomes and the exit code.

    The kernels are forked from one process that imported their notebooks' libraries once
    (:mod:`labkit.runner.warm`), and the HTML exports of several pilots run in another
    (:mod:`labkit.runner.exporter`): both start now, their imports on another core while the preflight runs,
    and a refusal stops them before any kernel or run exists."""
    from labkit.runner.exporter import html_exports
    from labkit.runner.warm import warm_kernels

    # one pilot's two exports do not compete with other runs for this process: they stay in it
    with warm_kernels(sorted({p.notebook_path for p in pilots})), html_exports(wanted=len(pilots) > 1):
        return _run_batch(lab, pilots, workers=workers, as_of=as_of, track=track, console=console)


def _run_batch(lab: Lab, pilots: list[Pilot], *, workers, as_of, track, console) -> tuple[list[Outcome], int]:
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from labkit import runner
    from labkit.runner import exporter

    console = console or Console(stderr=True)
    preflight_all(pilots, as_of)
    workers = min(workers or lab.spec.runner.workers or default_workers(), len(pilots))
    tracking = BackgroundTracking(lab, console, workers) if track else None
    if exporter.current() is None:  # no export process: nbconvert's set-up is done here while kernels run
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
    from rich.table import Table

    from labkit.render import fits, print_stacked, terminal_console

    console = console or terminal_console()  # piped: plain text at full width, nothing cut
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
    if fits(console, table):
        console.print(table)
    else:  # too narrow for the table: one block per pilot, its id whole on its own line
        fields = ("function", "status", "decision", "recommendation")
        blocks = [
            (o.pilot, [*((f, getattr(o, f) or "–") for f in fields), ("time", f"{o.seconds:.1f} s")])
            for o in outcomes
        ]
        print_stacked(console, table.title, blocks)

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
        say("`labkit ui` serves this lab's MLflow store and prints the link to its runs")


def all_pilots(lab: Lab) -> list[str]:
    return [str(p) for p in list_pilots(lab)]
