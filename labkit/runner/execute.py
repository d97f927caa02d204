"""One notebook through papermill: the checks of its input, the run under signals and timeouts, its verdict.

:func:`execute` settles the run first (:class:`_Job`: checked input, the output folder cleared of an
earlier run's files), runs papermill with the ``labkit`` engine of :mod:`labkit.runner.kernels` (a kernel
that dies before its first reply is started again), and turns what papermill said into one
:class:`NotebookRun`: FINISHED only with this run's ``results.json`` (the completion sentinel), else FAILED
naming the cell as the analyst numbers it, or KILLED by a signal. The files it leaves are
:mod:`labkit.runner.export`'s.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import labkit.runner.exporter as exporter
import labkit.runner.kernels as kernels
from labkit.errors import RunError
from labkit.runner.checks import check_parameters, load_notebook
from labkit.runner.export import (
    BANNER_TAG,
    cell_tags,
    default_redactor,
    export_views,
    first_line,
    new_figures,
    redact_errors,
    report_path,
    save_partial,
    snapshot_figures,
)
from labkit.runner.kernels import (
    IOPUB_DRAIN_S,
    MAX_OUTPUT_BYTES,
    Interrupted,
    RunState,
    SignalGuard,
    in_flight,
    register_engine,
)

log = logging.getLogger("labkit.runner")

RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class NotebookRun:
    """How one notebook execution ended; output paths are absolute, ``None`` when there is no such file."""

    notebook: Path  # as given
    output_dir: Path
    executed: Path | None  # output_dir/<stem>.ipynb, also when partial
    html: Path | None  # output_dir/<stem>.html, the export of `executed`
    results: Path | None  # output_dir/results.json, only if it carries this run's token
    status: str  # FINISHED | FAILED | KILLED
    message: str | None  # one line for the CLI: what failed, in which cell; None when FINISHED
    cell: int | None  # 0-based index in the stored notebook of the cell that failed
    ename: str | None  # exception name; "SIGINT"/"SIGTERM" when KILLED
    started_at: float  # epoch seconds
    ended_at: float  # epoch seconds, when the kernel stopped (before the html export)
    figures: list[Path] = field(default_factory=list)  # *.png / *.svg the run wrote into output_dir
    report: Path | None = None  # output_dir/report.html: the export without code cells

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED"

    @property
    def duration_s(self) -> float:
        return self.ended_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as strings."""
        path = lambda p: None if p is None else str(p)  # noqa: E731
        return {
            "notebook": str(self.notebook),
            "output_dir": str(self.output_dir),
            "executed": path(self.executed),
            "html": path(self.html),
            "results": path(self.results),
            "status": self.status,
            "message": self.message,
            "cell": self.cell,
            "ename": self.ename,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "figures": [str(p) for p in self.figures],
            "report": path(self.report),
        }


def execute(
    notebook: Path,
    output_dir: Path,
    parameters: dict,
    *,
    cwd: Path,
    run_token: str,
    timeout_s: int = 600,
    kernel_name: str = "python3",
    progress: bool = False,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
    redact=None,
) -> NotebookRun:
    """Run ``notebook`` with ``parameters`` in a fresh ``kernel_name`` kernel whose working directory
    is ``cwd``, writing into ``output_dir``; never raises because the notebook failed.

    ``run_token`` and ``output_dir`` (absolute, as str) are injected as parameters too, over any
    caller values of those names. ``timeout_s`` bounds each cell. Raises LabkitError only for bad
    input: the checks of :func:`check_notebook` and :func:`check_parameters`, an empty token, a
    missing ``cwd`` or an ``output_dir`` that cannot be created.

    ``redact`` (text -> text) is applied to the error outputs of the executed notebook and to the run's
    message before either is saved for good (and so before MLflow logs them): the last line of defence
    against a customer id quoted in a traceback. By default, for a labkit notebook (``pilot_path`` and
    ``lab_path`` among the parameters), ``labkit.privacy.cohort_redactor`` of its pilot.
    """
    job = _prepare(
        Path(notebook), output_dir, parameters, cwd=cwd, run_token=run_token, timeout_s=timeout_s,
        kernel_name=kernel_name, progress=progress, max_output_bytes=max_output_bytes,
    )  # fmt: skip
    state = RunState(max_output_bytes)
    started_at = time.time()
    with in_flight(state):
        try:
            state.kernel_log = open(job.kernel_log, "wb")  # noqa: SIM115 - closed in the finally below
            with SignalGuard(state) as guard:
                try:
                    outcome = _run_with_restarts(job, state)
                except (KeyboardInterrupt, Interrupted):
                    outcome = _Outcome("killed")
                finally:
                    guard.armed = False  # from here a signal only marks the run KILLED; finishing is short
                    state.kill_kernel()  # whatever happened above, no kernel outlives the run
                ended_at = time.time()
                run = _finish(
                    job, state, outcome, started_at=started_at, ended_at=ended_at,
                    redact=redact or default_redactor(job.parameters),
                )  # fmt: skip
            if state.signal and run.status != "KILLED":
                # the signal came while the run was being saved: every file is complete, but the caller
                # must still learn that it was asked to stop
                run = replace(
                    run,
                    status="KILLED",
                    ename=state.signal,
                    message=f"interrupted by {state.signal} (after the notebook ended)",
                )
            return run
        finally:
            if state.kernel_log is not None:
                state.kernel_log.close()
                _drop_shutdown_noise(job.kernel_log)
                if job.kernel_log.stat().st_size == 0:
                    job.kernel_log.unlink()


# ipykernel's own race at shutdown (7.4.0): once its IOPub thread has closed, the control handler that
# answered the shutdown request still flushes stderr, and tornado logs the failed send as a traceback.
# It says nothing about the notebook and comes after the run, so it is not kept as the kernel's output.
# (ipykernel#1518 silenced the same race on another path, the status message.)
_SHUTDOWN_NOISE = re.compile(
    rb"ERROR:tornado\.general:Uncaught exception in ZMQStream callback\n"
    rb"Traceback \(most recent call last\):\n"
    rb"(?:[ \t][^\n]*\n)+"
    rb"zmq\.error\.ZMQError: Socket operation on non-socket(?:\n|$)"
)


def _drop_shutdown_noise(log_path: Path, tail_bytes: int = 65536) -> None:
    """Remove ipykernel's shutdown-race tracebacks (``_SHUTDOWN_NOISE``) from a kernel log; the rest stays.
    Only the log's end is read: the race comes at shutdown, and a kernel may have written a large log."""
    with open(log_path, "r+b") as log:
        start = max(0, log.seek(0, 2) - tail_bytes)
        log.seek(start)
        tail = log.read()
        if b"Socket operation on non-socket" not in tail:
            return
        log.seek(start)
        log.write(_SHUTDOWN_NOISE.sub(b"", tail))
        log.truncate()


@dataclass(frozen=True)
class _Job:
    """One run as settled before its kernel starts: what to run, where, and the outputs it will leave."""

    notebook: Path  # as given
    output_dir: Path  # absolute
    parameters: dict[str, Any]  # JSON-clean, run_token and output_dir included
    cwd: Path
    run_token: str
    timeout_s: int
    kernel_name: str
    language: str
    progress: bool
    figures_before: dict[Path, tuple[int, int]]  # figures already in output_dir: not this run's

    def output(self, suffix: str) -> Path:
        return self.output_dir / f"{self.notebook.stem}{suffix}"

    @property
    def executed(self) -> Path:
        return self.output(".ipynb")

    @property
    def html(self) -> Path:
        return self.output(".html")

    @property
    def kernel_log(self) -> Path:
        return self.output(".kernel.log")


def _prepare(notebook: Path, output_dir, parameters, *, cwd, run_token, timeout_s, kernel_name, progress,
             max_output_bytes) -> _Job:  # fmt: skip
    """Every check of execute's input, then the output folder cleared of an earlier run's outputs."""
    _, language = load_notebook(notebook, kernel_name)  # papermill reads the file again itself
    clean = check_parameters(parameters)
    if not isinstance(run_token, str) or not run_token:
        raise RunError(None, "run_token must be a non-empty string (the completion sentinel's value)")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or timeout_s <= 0:
        raise RunError(None, f"timeout_s must be a positive whole number of seconds, not {timeout_s!r}")
    if isinstance(max_output_bytes, bool) or not isinstance(max_output_bytes, int) or max_output_bytes < 1024:
        raise RunError(
            None, f"max_output_bytes must be a whole number of at least 1024, not {max_output_bytes!r}"
        )
    cwd = Path(cwd).resolve()
    if not cwd.is_dir():
        raise RunError(str(cwd), "the notebook's working directory does not exist")
    output_dir = Path(output_dir).resolve()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(str(output_dir), f"cannot create the output folder: {e.strerror}") from None
    executed = output_dir / f"{notebook.stem}.ipynb"
    if executed.resolve() == notebook.resolve():
        raise RunError(str(notebook), "output_dir is the notebook's own folder; the run would overwrite it")
    clean.update(run_token=run_token, output_dir=str(output_dir))
    job = _Job(
        notebook=notebook, output_dir=output_dir, parameters=clean, cwd=cwd, run_token=run_token,
        timeout_s=timeout_s, kernel_name=kernel_name, language=language, progress=progress, figures_before={},
    )  # fmt: skip
    for stale in (job.executed, job.html, report_path(output_dir, notebook), job.kernel_log):
        try:
            stale.unlink(missing_ok=True)
        except OSError as e:
            raise RunError(str(stale), f"cannot replace the output of an earlier run: {e.strerror}") from None
    return replace(job, figures_before=snapshot_figures(output_dir))


@dataclass(frozen=True)
class _Outcome:
    """What papermill said: kind is ok | error | timeout | dead | crash | killed."""

    kind: str
    cell_index: int | None = None  # in the executed notebook, injected cell included
    ename: str | None = None
    evalue: str = ""
    marked: bool = False  # papermill already put its error banner into the saved notebook


def _run_with_restarts(job: _Job, state: RunState) -> _Outcome:
    """Run the notebook; a kernel that died before its first reply is started again (nothing ran)."""
    for attempt in range(1, kernels.KERNEL_START_ATTEMPTS + 1):
        outcome = _run_papermill(job, state)
        if attempt == kernels.KERNEL_START_ATTEMPTS or not _never_started(outcome, state):
            return outcome
        # nothing ran: the kernel died before its first reply (e.g. two kernels started at
        # once drew the same free port, "Address already in use"); start another
        log.warning("%s: the kernel died while starting (%s); starting another", job.notebook, outcome.evalue)
        state.kill_kernel()
        time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")  # pragma: no cover


def _run_papermill(job: _Job, state: RunState) -> _Outcome:
    began = time.monotonic()
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    log.debug("import papermill: %.2f s", time.monotonic() - began)
    register_engine()
    try:
        papermill.execute_notebook(
            _literal(str(job.notebook.resolve())),
            _literal(str(job.executed)),
            parameters=job.parameters,
            engine_name=kernels.ENGINE,
            request_save_on_cell_execute=True,  # else a failed run leaves nothing on disk
            kernel_name=job.kernel_name,
            language=job.language,
            progress_bar=job.progress,
            log_output=False,
            start_timeout=kernels.KERNEL_START_TIMEOUT_S,
            execution_timeout=job.timeout_s,  # papermill's default is none: a hung cell hangs for ever
            # the kernel's working directory, without papermill's process-wide os.chdir (not thread-safe)
            resources={"metadata": {"path": str(job.cwd)}},
            labkit_state=state,
        )
    except PapermillExecutionError as e:
        return _Outcome("error", e.cell_index, e.ename, e.evalue, marked=True)
    except CellTimeoutError as e:
        return _Outcome("timeout", state.cell_index, "CellTimeoutError", first_line(str(e)))
    except DeadKernelError as e:
        return _Outcome("dead", state.cell_index, "DeadKernelError", first_line(str(e)))
    except Exception as e:  # the kernel did not start, the output could not be written, ...
        log.debug("papermill failed", exc_info=True)
        return _Outcome("crash", state.cell_index, type(e).__name__, first_line(str(e)))
    return _Outcome("ok")


def _never_started(outcome: _Outcome, state) -> bool:
    """The kernel died, or never answered, before its first reply to kernel_info: no cell ran, so
    starting another is safe. (A port drawn twice shows either way: the loser dies on bind, or its client
    talks to the other kernel, which drops the foreign messages, until the start timeout.)"""
    return (
        outcome.kind == "crash"
        and outcome.cell_index is None
        and not state.signal
        and ("before replying to kernel_info" in outcome.evalue or "didn't respond in" in outcome.evalue)
    )


def _literal(path: str) -> str:
    """papermill runs ``path.format(**parameters)`` on its paths; keep braces literal."""
    return path.replace("{", "{{").replace("}", "}}")


def _finish(
    job: _Job, state: RunState, outcome: _Outcome, *, started_at: float, ended_at: float, redact=None
) -> NotebookRun:
    """The run's record once its kernel is gone: its status and message, the partial notebook's banner,
    redaction, the exports and the figures."""
    results, sentinel_problem = _sentinel(job.output_dir / RESULTS_FILE, job.run_token)
    status, ename, cell, message = _verdict(job, state, outcome, sentinel_problem)
    if redact is not None and message:
        message = redact(message)
    if status != "FINISHED" and not outcome.marked:
        save_partial(job.executed, state.nb, status, message)
    if redact is not None:
        redact_errors(job.executed, redact)
    # a reader's report is of a complete analysis; a failed run has its html
    report = report_path(job.output_dir, job.notebook) if status == "FINISHED" else None
    exported, report, export_error = export_views(job.executed, job.html, report, via=exporter.current())
    if export_error and status == "FINISHED":
        message = f"finished, but the html export failed: {export_error}"
    return NotebookRun(
        notebook=job.notebook,
        output_dir=job.output_dir,
        executed=job.executed if job.executed.is_file() else None,
        html=exported,
        results=results,
        status=status,
        message=message,
        cell=cell,
        ename=ename,
        started_at=started_at,
        ended_at=ended_at,
        figures=new_figures(job.output_dir, job.figures_before),
        report=report,
    )


def _verdict(
    job: _Job, state: RunState, outcome: _Outcome, sentinel_problem: str | None
) -> tuple[str, str | None, int | None, str | None]:
    """(status, ename, stored cell, message) of a run: KILLED by a signal, FINISHED with this run's
    results.json, else FAILED with the cell and the error as the analyst will find them."""
    where = _Where(state.nb)
    if state.signal or outcome.kind == "killed":
        signame = state.signal or "SIGINT"
        cell = where.stored(state.cell_index)
        message = f"interrupted by {signame}" + (
            f" in {where.describe(state.cell_index)}" if cell is not None else ""
        )
        return "KILLED", signame, cell, message
    if outcome.kind == "ok" and sentinel_problem is None:
        return "FINISHED", None, None, None
    if outcome.kind == "ok":
        exit_index, exit_value = _early_exit(state.nb)
        message = sentinel_problem
        if exit_index is not None:
            message += f": {where.describe(exit_index)} raised SystemExit: {exit_value}"
        return "FAILED", "SystemExit" if exit_index is not None else None, where.stored(exit_index), message
    place = where.describe(outcome.cell_index)
    if outcome.kind == "error":
        message = f"{place} raised {outcome.ename}: {first_line(outcome.evalue)}"
    elif outcome.kind == "timeout" and "iopub" in outcome.evalue.lower():
        message = (
            f"{place}: its output did not arrive within {IOPUB_DRAIN_S} s after it ended (CellTimeoutError)"
        )
    elif outcome.kind == "timeout":
        message = f"{place} ran longer than the {job.timeout_s} s cell timeout (CellTimeoutError)"
    elif outcome.kind == "dead":
        message = f"the kernel died in {place} (os._exit, a crash, SIGKILL or out of memory: DeadKernelError)"
    elif outcome.cell_index is None:
        message = f"the notebook could not run: {outcome.ename}: {outcome.evalue}"
    else:
        message = f"the run stopped in {place}: {outcome.ename}: {outcome.evalue}"
    return "FAILED", outcome.ename, where.stored(outcome.cell_index), message


class _Where:
    """Cell numbers as the analyst sees them: the stored notebook, without papermill's extra cells."""

    def __init__(self, nb) -> None:
        cells = [c for c in (nb.cells if nb is not None else []) if BANNER_TAG not in cell_tags(c)]
        self.cells = cells
        self.injected = next((i for i, c in enumerate(cells) if "injected-parameters" in cell_tags(c)), None)

    def stored(self, index: int | None) -> int | None:
        if index is None or index == self.injected:
            return None
        return index - 1 if self.injected is not None and index > self.injected else index

    def describe(self, index: int | None) -> str:
        if index is None:
            return "before the first cell"
        if index == self.injected:
            return "the injected parameters cell"
        source = self.cells[index].get("source", "") if 0 <= index < len(self.cells) else ""
        first = next((line.strip() for line in source.splitlines() if line.strip()), "")
        if len(first) > 60:
            first = first[:57] + "..."
        return f"cell {self.stored(index)} ({first})" if first else f"cell {self.stored(index)}"


def _early_exit(nb) -> tuple[int | None, str]:
    """The cell that called sys.exit(0) (papermill treats it as success), in executed numbering."""
    cells = [c for c in (nb.cells if nb is not None else []) if BANNER_TAG not in cell_tags(c)]
    for i, cell in enumerate(cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and out.get("ename") == "SystemExit":
                return i, out.get("evalue", "")
    return None, ""


def _sentinel(path: Path, run_token: str) -> tuple[Path | None, str | None]:
    """(path, None) if results.json carries run_token; else (None, why not)."""
    if not path.is_file():
        return None, f"the notebook ended without writing {RESULTS_FILE} (a cell exited early?)"
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        return None, f"{RESULTS_FILE} is not valid JSON: {first_line(str(e))}"
    token = None
    if isinstance(data, dict):
        meta = data.get("meta")
        token = (
            meta.get("run_token") if isinstance(meta, dict) and "run_token" in meta else data.get("run_token")
        )
    if token != run_token:
        return None, (
            f"{RESULTS_FILE} was not written by this run (its meta.run_token is not this run's token; "
            "an earlier run's file, or a notebook that does not pass run_token on?)"
        )
    return path, None
