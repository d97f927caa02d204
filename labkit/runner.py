"""Execute one pilot notebook with papermill and say, in one record, how it ended.

This module is papermill only: it knows nothing of MLflow (``tracking.py``) or of pilots
(``pipeline.py`` joins the three). The pipeline calls::

    check_notebook(path)                 # before any run exists: LabkitError on a bad notebook
    params = check_parameters(params)    # LabkitError on a bad name or a non-JSON value
    run = execute(notebook, output_dir, params, cwd=lab_root, run_token=token)

``execute`` never raises because a notebook failed; it returns a :class:`NotebookRun` whose
``status`` is one of

``FINISHED``
    papermill succeeded *and* the notebook wrote ``output_dir/results.json`` carrying this run's
    token (``meta.run_token``, or a top-level ``run_token``). The token is the completion sentinel:
    papermill reports success when a cell calls ``sys.exit(0)`` and silently skips the rest.
``FAILED``
    a cell raised (``PapermillExecutionError``), the kernel died (``DeadKernelError``: ``os._exit``,
    a segfault, SIGKILL, the OOM killer), a cell ran longer than ``timeout_s`` (``CellTimeoutError``),
    the kernel could not start, or the notebook ended without writing the sentinel.
``KILLED``
    SIGINT (KeyboardInterrupt), SIGTERM or SIGHUP arrived during the run, or :func:`cancel_all` was
    called. The kernel is killed (its whole process group), the partial notebook kept, and the run
    is *returned*, not raised: ``ename`` is ``"SIGINT"``, ``"SIGTERM"`` or ``"SIGHUP"`` so the caller
    records the run as KILLED and then exits 130, 143 or 129 (``128 + signal.Signals[run.ename]``).

Files in ``output_dir`` (an earlier run's copies of the first four are removed first):

``<stem>.ipynb``
    the executed notebook, saved after every cell, so a failed or killed run leaves its partial
    notebook. One whose failure papermill did not mark (a dead kernel, a timeout, an interrupt, an
    early exit) gets a red banner cell naming it, like papermill's own for a raising cell.
``<stem>.html``
    its nbconvert export (MLflow's UI renders html, not ipynb). An export failure leaves ``html``
    None and never replaces the run's own message.
``report.html``
    the same export without code: nbconvert's ``--no-input`` (``exclude_input``, no prompts), for
    readers who want the text, tables and figures of the run, not its Python. Written for a FINISHED run
    only: a failed or killed run's partial notebook is for the analyst (``<stem>.html``). Its own export
    failure leaves ``report`` None and is logged, never the run's message. (A notebook whose stem is ``report``
    gets ``report.no-input.html``, so that it cannot overwrite ``<stem>.html``.)
``<stem>.kernel.log``
    the kernel process's own stdout/stderr (startup errors, crashes), kept only when not empty.
``results.json`` and figures
    written by the notebook itself; ``figures`` lists the ``*.png``/``*.svg`` in ``output_dir`` and
    its direct subfolders that the run created or changed.

Cell numbers are 0-based indices into the notebook *as stored* — the cell papermill injects after
the ``parameters`` cell is not counted — so ``cell 2`` is the third cell an analyst sees in Jupyter.

Signals: while :func:`execute` runs in the main thread it owns SIGINT (only when Python's default
handler is installed), SIGTERM and SIGHUP, restoring the previous handlers when it returns. A caller that
runs notebooks in worker threads handles signals itself and calls :func:`cancel_all`, which kills
every in-flight kernel and makes those runs return KILLED.

Output: each cell's outputs are capped at ``max_output_bytes`` (10 MB by default, counted in
characters of text or of base64), in two places. In an IPython kernel a hook cuts ``sys.stdout`` /
``sys.stderr`` writes past the cap, so even ``print("x" * 200_000_000)`` never reaches labkit whole;
in labkit the nbclient client caps every output as it arrives (rich displays, output of
subprocesses, kernels without the hook), replacing what is over with one note of how much was
dropped. A cell printing 200 MB costs labkit ~200 MB RSS peak and a 10 MB notebook, against ~900 MB
and a 210 MB notebook with plain papermill.

Importing this module is cheap: papermill, nbclient, nbformat and nbconvert are imported on use.
"""

from __future__ import annotations

import asyncio
import html
import json
import keyword
import logging
import math
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from labkit.errors import LabkitError

__all__ = [
    "MAX_OUTPUT_BYTES",
    "REPORT_FILE",
    "RESULTS_FILE",
    "NotebookRun",
    "cancel_all",
    "check_notebook",
    "check_parameters",
    "execute",
]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
MAX_OUTPUT_BYTES = 10 * 2**20
FIGURE_SUFFIXES = (".png", ".svg")
_ENGINE = "labkit"
_KERNEL_START_TIMEOUT_S = 60
# jupyter_client picks a kernel's ports by binding port 0 and letting go: kernels started at the same
# moment can draw the same port, and the loser dies before its first reply. Such a start is retried.
_KERNEL_START_ATTEMPTS = 3
_IOPUB_DRAIN_S = 10  # after a cell's reply, how long its last outputs may take to arrive
_BANNER_TAG = "papermill-error-cell-tag"  # papermill strips these cells when the notebook is re-run
_CLIENT_SLACK = 64 * 2**10  # the client-side cap sits above the kernel-side one: room for its note

# Run silently in an IPython kernel before the first cell: cut sys.stdout/sys.stderr writes once a
# cell has written `limit` characters, so an over-long print never becomes one huge ZeroMQ message
# (labkit's memory would then be a few times its size while it is decoded). IPython 9 swaps
# `stream.write` for a history tee around every cell and restores it afterwards, so the cap wraps
# the current write again at each `pre_run_cell`. No names are left behind; any failure leaves the
# kernel as it was (the client-side cap still holds).
_KERNEL_CAP = """
def _labkit_cap_output(limit, note):
    import sys
    written = [0, False]

    def wrap(stream):
        original = stream.write
        if getattr(original, "_labkit_cap", False):
            return

        def write(text, *args, **kwargs):
            size = len(text) if isinstance(text, str) else 0
            room = limit - written[0]
            if size <= room:
                written[0] += size
                return original(text, *args, **kwargs)
            if room > 0:
                original(text[:room])
            written[0] = limit
            if not written[1]:
                written[1] = True
                original(note)
            return size

        write._labkit_cap = True
        stream.write = write

    def on_cell(*args, **kwargs):
        written[0], written[1] = 0, False
        for stream in (sys.stdout, sys.stderr):
            try:
                wrap(stream)
            except Exception:
                pass

    try:
        get_ipython().events.register("pre_run_cell", on_cell)
    except Exception:
        pass

_labkit_cap_output({limit}, {note!r})
del _labkit_cap_output
"""


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


# --------------------------------------------------------------------------------------------------
# Checks before any run


def check_notebook(path: Path, *, kernel_name: str = "python3") -> None:
    """Raise LabkitError unless ``path`` is a valid v4 notebook with a ``parameters`` cell that
    ``kernel_name`` (an installed kernel of the notebook's language) can run."""
    _load_notebook(Path(path), kernel_name)


def _load_notebook(path: Path, kernel_name: str):
    """The checks of check_notebook; returns (notebook node, kernel language)."""
    if not path.exists():
        raise LabkitError(f"{path}: no such notebook")
    if not path.is_file():
        raise LabkitError(f"{path}: not a notebook file (a directory or a special file)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise LabkitError(f"{path}: not a notebook: not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise LabkitError(f"{path}: cannot read the notebook: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LabkitError(
            f"{path}: not a notebook: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("nbformat"), int):
        raise LabkitError(f"{path}: not a notebook: JSON without an 'nbformat' version")

    import nbformat

    try:
        node = nbformat.convert(nbformat.from_dict(data), 4)
        if node.get("nbformat_minor", 0) >= 5 and isinstance(node.get("cells"), list):
            for cell in node.cells:  # a missing id is repaired on read, not worth a warning here
                if isinstance(cell, dict) and "id" not in cell:
                    cell["id"] = uuid.uuid4().hex[:8]
        nbformat.validate(node)
    except Exception as e:  # ValidationError, NBFormatError, and whatever conversion of junk raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LabkitError(f"{path}: not a valid nbformat v4 notebook: {first[:300]}") from None

    tagged = [
        i
        for i, cell in enumerate(node.cells)
        if cell.get("cell_type") == "code" and "parameters" in (cell.get("metadata", {}).get("tags") or [])
    ]
    if not tagged:
        raise LabkitError(
            f"{path}: no code cell is tagged 'parameters'; without it papermill injects the values above "
            "the notebook's own defaults, which then silently overwrite them. Tag the cell that sets the defaults"
        )

    spec = _kernel_spec(path, kernel_name)
    language = (spec.language or "").lower()
    meta = node.metadata
    declared = (meta.get("kernelspec") or {}).get("language") or (meta.get("language_info") or {}).get("name")
    if declared and language and str(declared).lower() != language:
        raise LabkitError(
            f"{path}: the notebook is written in {declared} but kernel '{kernel_name}' runs {spec.language}"
        )
    return node, language or "python"


def _kernel_spec(path: Path, kernel_name: str):
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        return manager.get_kernel_spec(kernel_name)
    except NoSuchKernel:
        installed = ", ".join(sorted(manager.find_kernel_specs())) or "none"
        raise LabkitError(
            f"{path}: kernel '{kernel_name}' is not installed; installed kernels: {installed} "
            "(see `jupyter kernelspec list`)"
        ) from None


_HINTS = {
    "date": "pass it as an ISO string (value.isoformat())",
    "datetime": "pass it as an ISO string (value.isoformat())",
    "time": "pass it as an ISO string (value.isoformat())",
    "bytes": "decode it to a str first",
    "bytearray": "decode it to a str first",
    "tuple": "pass a list",
    "set": "pass a sorted list",
    "frozenset": "pass a sorted list",
    "Decimal": "pass a float or a str",
}


def check_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-clean copy of ``params``, or LabkitError naming the first bad name or value.

    Names must be Python identifiers and not keywords: papermill writes ``name = value`` without
    checking the name, so ``"x\\nimport os"`` would run code. Values may be str, int, float (finite),
    bool, None and lists / str-keyed dicts of them; subclasses of str, int and float (numpy.float64,
    IntEnum) are converted to the plain type. Anything else — dates, bytes, tuples, sets — is refused,
    because papermill would insert it as code or as a surprising string.
    """
    if not isinstance(params, Mapping):
        raise LabkitError(
            f"notebook parameters must be a mapping of names to values, not {type(params).__name__}"
        )
    clean: dict[str, Any] = {}
    for name, value in params.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise LabkitError(
                f"notebook parameter name {name!r} is not allowed; a name must be a Python identifier "
                "and not a keyword (letters, digits and _, not starting with a digit)"
            )
        clean[name] = _json_value(value, name, ())
    return clean


def _json_value(value: Any, where: str, seen: tuple[int, ...]) -> Any:
    if value is None or type(value) is bool:
        return value
    if isinstance(value, str):
        text = str.__str__(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise LabkitError(
                f"notebook parameter {where}: not valid Unicode text (a lone surrogate)"
            ) from None
        return text
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LabkitError(
                f"notebook parameter {where}: {value!r} is not a JSON number; only finite floats"
            )
        return float(value)
    if isinstance(value, list | dict):
        if id(value) in seen:
            raise LabkitError(f"notebook parameter {where}: the value contains itself")
        inner = (*seen, id(value))
        if isinstance(value, list):
            return [_json_value(v, f"{where}[{i}]", inner) for i, v in enumerate(value)]
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise LabkitError(
                    f"notebook parameter {where}: dict key {key!r} is not a str; JSON keys are strings"
                )
            out[str.__str__(key)] = _json_value(v, f"{where}[{key!r}]", inner)
        return out
    kind = type(value).__name__
    hint = _HINTS.get(kind, "only str, int, float, bool, None and lists/dicts of them are allowed")
    raise LabkitError(f"notebook parameter {where}: a {kind} value is not allowed; {hint}")


# --------------------------------------------------------------------------------------------------
# Runs in flight, signals and cancellation


class _Interrupted(BaseException):
    """Raised in the running thread when a signal or cancel_all ends the run (never escapes execute)."""


class _RunState:
    """What the engine learns while it runs, and how to stop its kernel from outside."""

    def __init__(self, max_output_bytes: int) -> None:
        self.max_output_bytes = max_output_bytes
        self.signal: str | None = None  # "SIGINT" / "SIGTERM" once the run is being killed
        self.km = None  # the kernel manager, as soon as nbclient creates it
        self.nb = None  # the notebook being executed, in memory
        self.kernel_log = None  # open file for the kernel process's stdout/stderr
        self.cell_index: int | None = None  # index in the executed notebook (with the injected cell)
        self.cell_bytes = 0
        self.note = None  # the truncation note of the current cell, updated as output is dropped
        self.dropped = 0
        self.lock = threading.RLock()  # cancel_all may run in a signal handler of the same thread

    def kernel_process(self):
        provisioner = getattr(self.km, "provisioner", None)
        return getattr(provisioner, "process", None), getattr(provisioner, "pgid", None)

    def kill_kernel(self) -> None:
        """SIGKILL the kernel's process group if the kernel is still ours and alive; reap it."""
        with self.lock:
            process, pgid = self.kernel_process()
            if process is None or process.poll() is not None:
                return
            try:
                if pgid and hasattr(os, "killpg"):
                    os.killpg(pgid, signal.SIGKILL)
                else:
                    process.kill()
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=5)
            except Exception as e:  # noqa: BLE001 - reaping is best effort; the kill is what matters
                log.warning("kernel %s did not exit after SIGKILL: %s", process.pid, e)

    def cancel(self, reason: str) -> None:
        self.signal = self.signal or reason
        self.kill_kernel()


_ACTIVE: set[_RunState] = set()
_ACTIVE_LOCK = threading.RLock()  # cancel_all may be called from a signal handler


def cancel_all(reason: str = "SIGTERM") -> int:
    """Kill the kernel of every run in flight in this process; each returns KILLED with ``ename=reason``.

    For callers that run notebooks in worker threads (signals reach only the main thread):
    call it from the main thread's SIGINT/SIGTERM handling. Returns how many runs were cancelled.
    """
    with _ACTIVE_LOCK:
        states = list(_ACTIVE)
    for state in states:
        state.cancel(reason)
    return len(states)


class _SignalGuard:
    """In the main thread: SIGTERM, SIGHUP (and SIGINT if Python's default handler is set) end the run as
    KILLED."""

    def __init__(self, state: _RunState) -> None:
        self.state = state
        self.previous: dict[int, Any] = {}
        self.armed = True  # raise in the running code; once the kernel is gone, only record

    def _handler(self, signum, frame):
        name = signal.Signals(signum).name
        first = self.state.signal is None
        self.state.signal = self.state.signal or name
        if self.armed and first:
            raise _Interrupted(name)
        if self.armed:
            # a repeated Ctrl-C must not interrupt nbclient's own cleanup, and must still work if
            # something in the notebook machinery swallowed the first one: stop the kernel outright
            self.state.kill_kernel()

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal was closed
            current = signal.getsignal(signum)
            if signum == signal.SIGINT and current is not signal.default_int_handler:
                continue  # the caller handles Ctrl-C its own way
            if signum == signal.SIGHUP and current is signal.SIG_IGN:
                continue  # started under nohup: the user asked to outlive the terminal
            self.previous[signum] = current
            signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False


# --------------------------------------------------------------------------------------------------
# The papermill engine: nbclient with cell tracking, an output cap and a hard kernel kill


_REGISTER_LOCK = threading.Lock()


def _register_engine() -> None:
    """Register the 'labkit' papermill engine once (papermill imported here, not at module import)."""
    from papermill.engines import papermill_engines

    with _REGISTER_LOCK:
        try:
            papermill_engines.get_engine(_ENGINE)
        except Exception:  # PapermillException: not registered yet
            papermill_engines.register(_ENGINE, _build_engine())
            _register_atomic_io()


def _register_atomic_io() -> None:
    """papermill saves the executed notebook with a plain ``open(path, "w")`` after every cell, so a full
    disk or a kill mid-save leaves half a notebook. labkit passes absolute paths only: a handler for the
    ``/`` prefix (checked before papermill's local fallback) writes them through a temp file and
    ``os.replace`` instead, so the file on disk is always the last complete save."""
    from papermill.iorw import LocalHandler, papermill_io

    class AtomicLocalHandler(LocalHandler):
        def write(self, buf, path):
            _atomic_write(Path(path), buf.encode("utf-8"))

    if not any(scheme == "/" for scheme, _ in papermill_io._handlers):
        papermill_io.register("/", AtomicLocalHandler())


def _build_engine():
    import nbformat
    from nbclient.exceptions import CellExecutionError
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine
    from papermill.utils import merge_kwargs, remove_args

    class LabkitClient(PapermillNotebookClient):
        """papermill's client, plus: which cell runs, a per-cell output cap, cancellation, hard kill."""

        def __init__(self, nb_man, *, labkit_state: _RunState, **kw):
            super().__init__(nb_man, **kw)
            self.labkit = labkit_state
            labkit_state.nb = nb_man.nb

        def papermill_execute_cells(self):
            if getattr(self.km, "ipykernel", False):
                limit = self.labkit.max_output_bytes
                note = f"\n[labkit] this cell's output passed the {_mb(limit)} cap (max_output_bytes); the rest is not kept\n"
                code = _KERNEL_CAP.format(limit=limit, note=note)
                self.wait_for_reply(self.kc.execute(code, silent=True, store_history=False))
            return super().papermill_execute_cells()

        def create_kernel_manager(self):
            km = super().create_kernel_manager()
            self.labkit.km = km
            return km

        def execute_cell(self, cell, cell_index, *args, **kwargs):
            state = self.labkit
            state.cell_index = cell_index
            state.cell_bytes, state.note, state.dropped = 0, None, 0
            try:
                if state.signal:  # cancel_all() before this cell began
                    raise _Interrupted(state.signal)
                return super().execute_cell(cell, cell_index, *args, **kwargs)
            except CellExecutionError:
                raise  # the cell raised; papermill records it and the kernel shuts down gracefully
            except BaseException:
                # timeout, dead kernel, interrupt: no graceful shutdown of a busy kernel (it would
                # cost jupyter_client's 5 s shutdown_wait_time); the kernel is killed at once
                self.shutdown_kernel = "immediate"
                _cancel_pending_tasks()
                raise

        def clear_output(self, outs, msg, cell_index):
            super().clear_output(outs, msg, cell_index)
            if not msg["content"].get("wait"):
                self.labkit.cell_bytes, self.labkit.note = 0, None

        def output(self, outs, msg, display_id, cell_index):
            state = self.labkit
            if self.clear_before_next_output:  # a deferred clear_output empties the cell first
                state.cell_bytes, state.note = 0, None
            msg_type = msg["msg_type"]
            content = msg["content"]
            if msg_type == "error":
                return super().output(outs, msg, display_id, cell_index)  # papermill reads it
            size = _output_size(msg_type, content)
            room = state.max_output_bytes + _CLIENT_SLACK - state.cell_bytes
            if size <= room:
                state.cell_bytes += size
                return super().output(outs, msg, display_id, cell_index)
            out = None
            if msg_type == "stream" and room > 0:
                cut = dict(msg, content=dict(content, text=content["text"][:room]))
                out = super().output(outs, cut, display_id, cell_index)
                size -= room
            state.cell_bytes = state.max_output_bytes + _CLIENT_SLACK
            state.dropped += size
            text = (
                f"\n[labkit] this cell's output passed the {_mb(state.max_output_bytes)} cap "
                f"(max_output_bytes); {_mb(state.dropped)} dropped\n"
            )
            if not any(o is state.note for o in outs):
                state.note = nbformat.v4.new_output("stream", name="stderr", text=text)
                outs.append(state.note)
            else:
                state.note["text"] = text
            return out

    class LabkitEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(
            cls,
            nb_man,
            kernel_name,
            *,
            labkit_state: _RunState,
            log_output=False,
            stdout_file=None,
            stderr_file=None,
            start_timeout=60,
            execution_timeout=None,
            **kwargs,
        ):
            kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
            final = merge_kwargs(
                kwargs,
                timeout=execution_timeout,
                startup_timeout=start_timeout,
                kernel_name=kernel_name,
                log=log,  # nbclient reports what labkit reports itself: keep it off stderr
                log_output=log_output,
                stdout_file=stdout_file,
                stderr_file=stderr_file,
                iopub_timeout=_IOPUB_DRAIN_S,
                config=_kernel_config(),
            )
            client = LabkitClient(nb_man, labkit_state=labkit_state, **final)
            # the kernel process's own stdout/stderr (its log lines, not the notebook's outputs) go to
            # a file rather than into labkit's terminal
            log_file = labkit_state.kernel_log
            return client.execute(stdout=log_file, stderr=subprocess.STDOUT if log_file else None)

    return LabkitEngine


def _kernel_config():
    """CurveZMQ between labkit and the kernel when pyzmq and the kernelspec support it, so outputs
    (customer data) do not cross 127.0.0.1 in clear text; jupyter_client refuses 'auto' without curve."""
    import zmq
    from traitlets.config import Config

    if not zmq.has("curve"):
        return Config()
    return Config({"KernelManager": {"transport_encryption": "auto"}})


def _cancel_pending_tasks() -> None:
    """nbclient leaves tasks pending after a timeout or an interrupt; cancel those of this thread's
    loop so asyncio prints no "Task was destroyed but it is pending!" / "exception was never retrieved"."""
    try:
        loop = asyncio.get_event_loop()
    except RuntimeError:
        return
    if loop.is_running() or loop.is_closed():
        return
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return
    try:
        loop.run_until_complete(asyncio.wait(pending, timeout=1))
    except BaseException:  # noqa: BLE001 - tidying up; the original exception is what matters
        return
    for task in pending:  # nbclient turns a cancelled cell into DeadKernelError: mark it as seen
        if task.done() and not task.cancelled():
            task.exception()


def _output_size(msg_type: str, content: dict) -> int:
    if msg_type == "stream":
        return len(content.get("text", ""))
    data = content.get("data") or {}
    return sum(len(v) if isinstance(v, str) else len(json.dumps(v)) for v in data.values())


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


# --------------------------------------------------------------------------------------------------
# execute


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
    notebook = Path(notebook)
    _, language = _load_notebook(notebook, kernel_name)  # papermill reads the file again itself
    clean = check_parameters(parameters)
    if not isinstance(run_token, str) or not run_token:
        raise LabkitError("run_token must be a non-empty string (the completion sentinel's value)")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or timeout_s <= 0:
        raise LabkitError(f"timeout_s must be a positive whole number of seconds, not {timeout_s!r}")
    if isinstance(max_output_bytes, bool) or not isinstance(max_output_bytes, int) or max_output_bytes < 1024:
        raise LabkitError(
            f"max_output_bytes must be a whole number of at least 1024, not {max_output_bytes!r}"
        )
    cwd = Path(cwd).resolve()
    if not cwd.is_dir():
        raise LabkitError(f"{cwd}: the notebook's working directory does not exist")
    output_dir = Path(output_dir).resolve()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LabkitError(f"{output_dir}: cannot create the output folder: {e.strerror}") from None
    executed = output_dir / f"{notebook.stem}.ipynb"
    html_path = output_dir / f"{notebook.stem}.html"
    if executed.resolve() == notebook.resolve():
        raise LabkitError(f"{notebook}: output_dir is the notebook's own folder; the run would overwrite it")
    clean.update(run_token=run_token, output_dir=str(output_dir))

    report_path = _report_path(output_dir, notebook)
    # an earlier run's outputs
    for stale in (executed, html_path, report_path, output_dir / f"{notebook.stem}.kernel.log"):
        try:
            stale.unlink(missing_ok=True)
        except OSError as e:
            raise LabkitError(f"{stale}: cannot replace the output of an earlier run: {e.strerror}") from None
    before = _snapshot(output_dir)
    state = _RunState(max_output_bytes)
    kernel_log = output_dir / f"{notebook.stem}.kernel.log"
    started_at = time.time()
    with _ACTIVE_LOCK:
        _ACTIVE.add(state)
    try:
        state.kernel_log = open(kernel_log, "wb")  # noqa: SIM115 - closed in the finally below
        with _SignalGuard(state) as guard:
            try:
                for attempt in range(1, _KERNEL_START_ATTEMPTS + 1):
                    outcome = _run_papermill(
                        notebook, executed, clean, cwd, timeout_s, kernel_name, language, progress, state
                    )
                    if attempt == _KERNEL_START_ATTEMPTS or not _never_started(outcome, state):
                        break
                    # nothing ran: the kernel died before its first reply (e.g. two kernels started at
                    # once drew the same free port, "Address already in use"); start another
                    log.warning(
                        "%s: the kernel died while starting (%s); starting another", notebook, outcome.evalue
                    )
                    state.kill_kernel()
                    time.sleep(0.2 + random.random())
            except (KeyboardInterrupt, _Interrupted):
                outcome = _Outcome("killed")
            finally:
                guard.armed = False  # from here a signal only marks the run KILLED; finishing is short
                state.kill_kernel()  # whatever happened above, no kernel outlives the run
            ended_at = time.time()
            run = _finish(
                notebook,
                output_dir,
                executed,
                html_path,
                run_token,
                timeout_s,
                state,
                outcome,
                before,
                started_at,
                ended_at,
                redact=redact or _cohort_redactor(clean),
            )
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
        with _ACTIVE_LOCK:
            _ACTIVE.discard(state)
        if state.kernel_log is not None:
            state.kernel_log.close()
            if kernel_log.stat().st_size == 0:
                kernel_log.unlink()


@dataclass
class _Outcome:
    """What papermill said: kind is ok | error | timeout | dead | crash | killed."""

    kind: str
    cell_index: int | None = None  # in the executed notebook, injected cell included
    ename: str | None = None
    evalue: str = ""
    marked: bool = False  # papermill already put its error banner into the saved notebook


def _run_papermill(
    notebook, executed, params, cwd, timeout_s, kernel_name, language, progress, state
) -> _Outcome:
    began = time.monotonic()
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    log.debug("import papermill: %.2f s", time.monotonic() - began)
    _register_engine()
    try:
        papermill.execute_notebook(
            _literal(str(notebook.resolve())),
            _literal(str(executed)),
            parameters=params,
            engine_name=_ENGINE,
            request_save_on_cell_execute=True,  # else a failed run leaves nothing on disk
            kernel_name=kernel_name,
            language=language,
            progress_bar=progress,
            log_output=False,
            start_timeout=_KERNEL_START_TIMEOUT_S,
            execution_timeout=timeout_s,  # papermill's default is none: a hung cell hangs for ever
            # the kernel's working directory, without papermill's process-wide os.chdir (not thread-safe)
            resources={"metadata": {"path": str(cwd)}},
            labkit_state=state,
        )
    except PapermillExecutionError as e:
        return _Outcome("error", e.cell_index, e.ename, e.evalue, marked=True)
    except CellTimeoutError as e:
        return _Outcome("timeout", state.cell_index, "CellTimeoutError", _first_line(str(e)))
    except DeadKernelError as e:
        return _Outcome("dead", state.cell_index, "DeadKernelError", _first_line(str(e)))
    except Exception as e:  # the kernel did not start, the output could not be written, ...
        log.debug("papermill failed", exc_info=True)
        return _Outcome("crash", state.cell_index, type(e).__name__, _first_line(str(e)))
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
    notebook,
    output_dir,
    executed,
    html_path,
    run_token,
    timeout_s,
    state,
    outcome,
    before,
    started_at,
    ended_at,
    redact=None,
):
    results, sentinel_problem = _sentinel(output_dir / RESULTS_FILE, run_token)
    nb = state.nb
    where = _Where(nb)
    if state.signal or outcome.kind == "killed":
        signame = state.signal or "SIGINT"
        status, ename = "KILLED", signame
        cell = where.stored(state.cell_index)
        message = f"interrupted by {signame}" + (
            f" in {where.describe(state.cell_index)}" if cell is not None else ""
        )
    elif outcome.kind == "ok" and sentinel_problem is None:
        status, ename, cell, message = "FINISHED", None, None, None
    elif outcome.kind == "ok":
        status = "FAILED"
        exit_index, exit_value = _early_exit(nb)
        cell = where.stored(exit_index)
        ename = "SystemExit" if exit_index is not None else None
        message = sentinel_problem
        if exit_index is not None:
            message += f": {where.describe(exit_index)} raised SystemExit: {exit_value}"
    else:
        status, ename = "FAILED", outcome.ename
        cell = where.stored(outcome.cell_index)
        place = where.describe(outcome.cell_index)
        if outcome.kind == "error":
            message = f"{place} raised {outcome.ename}: {_first_line(outcome.evalue)}"
        elif outcome.kind == "timeout" and "iopub" in outcome.evalue.lower():
            message = f"{place}: its output did not arrive within {_IOPUB_DRAIN_S} s after it ended (CellTimeoutError)"
        elif outcome.kind == "timeout":
            message = f"{place} ran longer than the {timeout_s} s cell timeout (CellTimeoutError)"
        elif outcome.kind == "dead":
            message = (
                f"the kernel died in {place} (os._exit, a crash, SIGKILL or out of memory: DeadKernelError)"
            )
        elif outcome.cell_index is None:
            message = f"the notebook could not run: {outcome.ename}: {outcome.evalue}"
        else:
            message = f"the run stopped in {place}: {outcome.ename}: {outcome.evalue}"

    if redact is not None and message:
        message = redact(message)
    if status != "FINISHED" and not outcome.marked:
        _save_partial(executed, nb, status, message)
    if redact is not None:
        _redact_errors(executed, redact)
    exported = report = None
    if executed.is_file():
        exported, export_error = _export_html(executed, html_path)
        if export_error:
            log.warning("%s: html export failed: %s", executed, export_error)
            if status == "FINISHED":
                message = f"finished, but the html export failed: {export_error}"
        if status == "FINISHED":  # a reader's report is of a complete analysis; a failed run has its html
            report, report_error = _export_html(executed, _report_path(output_dir, notebook), code=False)
            if report_error:
                log.warning("%s: report export failed: %s", executed, report_error)
    return NotebookRun(
        notebook=notebook,
        output_dir=output_dir,
        executed=executed if executed.is_file() else None,
        html=exported,
        results=results,
        status=status,
        message=message,
        cell=cell,
        ename=ename,
        started_at=started_at,
        ended_at=ended_at,
        figures=_new_figures(output_dir, before),
        report=report,
    )


class _Where:
    """Cell numbers as the analyst sees them: the stored notebook, without papermill's extra cells."""

    def __init__(self, nb) -> None:
        cells = [c for c in (nb.cells if nb is not None else []) if _BANNER_TAG not in _tags(c)]
        self.cells = cells
        self.injected = next((i for i, c in enumerate(cells) if "injected-parameters" in _tags(c)), None)

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


def _tags(cell) -> list:
    return (cell.get("metadata") or {}).get("tags") or []


def _first_line(text: str) -> str:
    line = next((x.strip() for x in str(text).splitlines() if x.strip()), "")
    return line if len(line) <= 300 else line[:297] + "..."


def _early_exit(nb) -> tuple[int | None, str]:
    """The cell that called sys.exit(0) (papermill treats it as success), in executed numbering."""
    cells = [c for c in (nb.cells if nb is not None else []) if _BANNER_TAG not in _tags(c)]
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
        return None, f"{RESULTS_FILE} is not valid JSON: {_first_line(str(e))}"
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


def _cohort_redactor(params: dict):
    if params.get("pilot_path") and params.get("lab_path"):
        from labkit.privacy import cohort_redactor

        return cohort_redactor(params["lab_path"], params["pilot_path"])
    return None


def _redact_errors(executed: Path, redact) -> None:
    """The executed notebook's error outputs (and the banner of a failed run) through ``redact``, written
    back only when something changed; cells that ran cleanly are not read for ids."""
    if not executed.is_file():
        return
    import nbformat

    nb = nbformat.reads(executed.read_text(encoding="utf-8"), as_version=4)
    changed = False
    for cell in nb.cells:
        texts = [out for out in cell.get("outputs", []) if out.get("output_type") == "error"]
        for out in texts:
            for key in ("ename", "evalue"):
                new = redact(out.get(key) or "")
                changed |= new != (out.get(key) or "")
                out[key] = new
            lines = [redact(line) for line in out.get("traceback", [])]
            changed |= lines != list(out.get("traceback", []))
            out["traceback"] = lines
        if _BANNER_TAG in _tags(cell):  # papermill's banner and labkit's quote the error
            new = redact(cell.get("source", ""))
            changed |= new != cell.get("source", "")
            cell["source"] = new
    if changed:
        _atomic_write(executed, nbformat.writes(nb).encode("utf-8"))


def _save_partial(executed: Path, nb, status: str, message: str) -> None:
    """Save the in-memory notebook with a banner: papermill marks only a raising cell, and an interrupt
    may have cut its own last save short."""
    if nb is None:
        return
    import nbformat

    banner = nbformat.v4.new_markdown_cell(
        '<span style="color:red; font-family:Helvetica Neue, Helvetica, Arial, sans-serif; font-size:2em;">'
        f"labkit: this run {status}: {html.escape(message)}</span>"
    )
    banner.metadata["tags"] = [_BANNER_TAG]
    nb.cells.insert(0, banner)
    try:
        _atomic_write(executed, nbformat.writes(nb).encode("utf-8"))
    except Exception as e:  # noqa: BLE001 - the run's own failure must stay the message
        log.warning("%s: could not save the partial notebook: %s", executed, e)


# one HTMLExporter per thread, reused: building one costs ~3x the export of a small notebook
_EXPORTERS = threading.local()


def _html_exporter(code: bool = True):
    """The thread's exporter: with code (``<stem>.html``) or without (``report.html``: nbconvert's
    ``--no-input``, i.e. no code cells and no In/Out prompts; markdown, outputs and figures kept)."""
    name = "html" if code else "report"
    exporter = getattr(_EXPORTERS, name, None)
    if exporter is None:
        from nbconvert import HTMLExporter

        exporter = HTMLExporter() if code else HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                                                            exclude_output_prompt=True)  # fmt: skip
        setattr(_EXPORTERS, name, exporter)
    return exporter


def _report_path(output_dir: Path, notebook: Path) -> Path:
    """``report.html``, or ``report.no-input.html`` beside a notebook whose own export is report.html."""
    return output_dir / (REPORT_FILE if Path(notebook).stem != "report" else "report.no-input.html")


def warm_html_export() -> None:
    """Import nbconvert and render a small notebook once, in this process: its first export (templates,
    Markdown and highlighting set up) costs ~0.7 s against ~0.1 s later. `labkit run` calls this in a
    background thread while the kernels run, so no pilot waits for it after its notebook."""
    try:
        import nbformat

        nb = nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_markdown_cell("**warm-up** `x`"), nbformat.v4.new_code_cell("x = 1  # x")]
        )
        _html_exporter().from_notebook_node(nb)
        _html_exporter(code=False).from_notebook_node(nb)
    except Exception:  # noqa: BLE001 - only a head start: the real export reports its own failure
        pass


def _export_html(executed: Path, html_path: Path, *, code: bool = True) -> tuple[Path | None, str | None]:
    try:
        import nbformat

        body, _ = _html_exporter(code).from_notebook_node(nbformat.read(executed, as_version=4))
        _atomic_write(html_path, body.encode("utf-8"))
        return html_path, None
    except Exception as e:  # noqa: BLE001 - an export failure never hides the run's outcome
        return None, f"{type(e).__name__}: {_first_line(str(e))}"


def _atomic_write(path: Path, data: bytes) -> None:
    """Temp file + os.replace: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:  # not mkstemp: its 0600 mode would stick to the artifact
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _snapshot(folder: Path) -> dict[Path, tuple[int, int]]:
    """Figures in output_dir and its direct subfolders (output_dir/figures/x.png), with mtime and size."""
    found = {}
    for pattern in ("*", "*/*"):
        for path in folder.glob(pattern):
            if path.suffix.lower() in FIGURE_SUFFIXES and path.is_file():
                st = path.stat()
                found[path] = (st.st_mtime_ns, st.st_size)
    return found


def _new_figures(folder: Path, before: dict[Path, tuple[int, int]]) -> list[Path]:
    """Figures the run wrote: new files, or files whose mtime or size changed."""
    return sorted(p for p, sig in _snapshot(folder).items() if before.get(p) != sig)
