"""The kernel side of a run: papermill's nbclient client, taught to track its cell, cap output and kill.

Every run has a :class:`RunState`: what the client learns while it runs (the cell, the output so far, the
kernel manager) and how to stop its kernel from outside — SIGKILL to the kernel's whole process group, so a
notebook's own subprocesses die with it. :func:`cancel_all` reaches every run :func:`in_flight` in this
process; in the main thread, :class:`SignalGuard` turns SIGINT, SIGTERM and SIGHUP into that kill. The papermill engine ``labkit`` is registered on first use (papermill is imported then, never at
import) together with an atomic writer for papermill's saves after every cell.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from labkit._files import write_atomic
from labkit.runner import warm

log = logging.getLogger("labkit.runner")

MAX_OUTPUT_BYTES = 10 * 2**20
ENGINE = "labkit"
KERNEL_START_TIMEOUT_S = 60
# jupyter_client picks a kernel's ports by binding port 0 and letting go: kernels started at the same
# moment can draw the same port, and the loser dies before its first reply. Such a start is retried.
KERNEL_START_ATTEMPTS = 3
IOPUB_DRAIN_S = 10  # after a cell's reply, how long its last outputs may take to arrive
# After the last cell, how long jupyter_client lets the kernel exit on its shutdown request (half of it),
# then on SIGTERM (the other half), before SIGKILL. Its default, 5 s, cost ~2.6 s in one run of six: an
# ipykernel 7.4 race leaves the control thread flushing stdout through the IOPub thread that is already
# gone, until the SIGTERM (py-spy; plain jupyter_client shows it too). The run is over by then: the
# notebook's outputs and results.json are in, so 0.5 s of grace is plenty and a hang costs 0.5 s.
KERNEL_SHUTDOWN_WAIT_S = 1.0
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


class Interrupted(BaseException):
    """Raised in the running thread when a signal or cancel_all ends the run (never escapes execute)."""


class RunState:
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


_ACTIVE: set[RunState] = set()
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


@contextmanager
def in_flight(state: RunState) -> Iterator[RunState]:
    """Count the run among those :func:`cancel_all` reaches, for as long as the block lasts."""
    with _ACTIVE_LOCK:
        _ACTIVE.add(state)
    try:
        yield state
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(state)


class SignalGuard:
    """In the main thread: SIGTERM, SIGHUP (and SIGINT if Python's default handler is set) end the run as
    KILLED."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self.previous: dict[int, Any] = {}
        self.armed = True  # raise in the running code; once the kernel is gone, only record

    def _handler(self, signum, frame):
        name = signal.Signals(signum).name
        first = self.state.signal is None
        self.state.signal = self.state.signal or name
        if self.armed and first:
            if _event_loop_running():
                # nbclient waits on the kernel inside asyncio's event loop. An exception raised here could
                # land in one of the loop's callbacks, which logs and drops it (asyncio's Handle._run: only
                # KeyboardInterrupt and SystemExit get through), and the run would go on. The kernel's death
                # ends the run instead: nbclient raises DeadKernelError within its 1 s liveness poll, and
                # the run is KILLED because state.signal is set.
                self.state.kill_kernel()
                return
            raise Interrupted(name)
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


def _event_loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


_REGISTER_LOCK = threading.Lock()


def register_engine() -> None:
    """Register the 'labkit' papermill engine once (papermill imported here, not at module import)."""
    from papermill.engines import papermill_engines

    with _REGISTER_LOCK:
        try:
            papermill_engines.get_engine(ENGINE)
        except Exception:  # PapermillException: not registered yet
            papermill_engines.register(ENGINE, _build_engine())
            _register_atomic_io()


def _register_atomic_io() -> None:
    """papermill saves the executed notebook with a plain ``open(path, "w")`` after every cell, so a full
    disk or a kill mid-save leaves half a notebook. labkit passes absolute paths only: a handler for the
    ``/`` prefix (checked before papermill's local fallback) writes them through a temp file and
    ``os.replace`` instead, so the file on disk is always the last complete save."""
    from papermill.iorw import LocalHandler, papermill_io

    class AtomicLocalHandler(LocalHandler):
        def write(self, buf, path):
            write_atomic(Path(path), buf, fsync=False)  # after every cell: no fsync, as papermill

    if not any(scheme == "/" for scheme, _ in papermill_io._handlers):
        papermill_io.register("/", AtomicLocalHandler())


def _build_engine():
    import nbformat
    from jupyter_client import AsyncKernelManager
    from nbclient.exceptions import CellExecutionError
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine
    from papermill.utils import merge_kwargs, remove_args

    class LabkitKernelManager(AsyncKernelManager):
        """jupyter_client's manager without the SIGINT it sends a kernel just before asking it to shut down.

        That interrupt is there to stop a running cell. A labkit run never shuts down a busy kernel
        gracefully: the last reply is in, or the cell raised and ended, or (timeout, dead kernel, signal)
        the client shuts down "immediate" and labkit kills the kernel's group. The SIGINT could then only
        land while ipykernel still finishes the last request's handler, which logs "KeyboardInterrupt
        caught in kernel." into the kernel log of a run that went well (4 runs in 160, four at a time).
        """

        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

        interrupt_kernel = _async_interrupt_kernel

    class LabkitClient(PapermillNotebookClient):
        """papermill's client, plus: which cell runs, a per-cell output cap, cancellation, hard kill."""

        def __init__(self, nb_man, *, labkit_state: RunState, **kw):
            super().__init__(nb_man, **kw)
            self.labkit = labkit_state
            labkit_state.nb = nb_man.nb
            start = nb_man.cell_start

            def cell_start(cell, cell_index=None, **kwargs):
                # papermill saves the cell as running before execute_cell is called: a signal in between
                # must name that cell, the one the saved notebook (and the user) sees running
                labkit_state.cell_index = cell_index
                return start(cell, cell_index, **kwargs)

            nb_man.cell_start = cell_start

        def papermill_execute_cells(self):
            _forget_connection_file(self.km)
            if getattr(self.km, "ipykernel", False):
                limit = self.labkit.max_output_bytes
                note = f"\n[labkit] this cell's output passed the {_mb(limit)} cap (max_output_bytes); the rest is not kept\n"
                code = _KERNEL_CAP.format(limit=limit, note=note)
                self.wait_for_reply(self.kc.execute(code, silent=True, store_history=False))
            return super().papermill_execute_cells()

        def create_kernel_manager(self):
            km = super().create_kernel_manager()
            provisioner = warm.provisioner_for(km)  # in a batch: a kernel forked from a pre-imported one
            if provisioner is not None:
                km.provisioner = provisioner
            self.labkit.km = km
            return km

        def execute_cell(self, cell, cell_index, *args, **kwargs):
            state = self.labkit
            state.cell_index = cell_index
            state.cell_bytes, state.note, state.dropped = 0, None, 0
            try:
                if state.signal:  # cancel_all() before this cell began
                    raise Interrupted(state.signal)
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
            labkit_state: RunState,
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
                iopub_timeout=IOPUB_DRAIN_S,
                config=_kernel_config(),
                kernel_manager_class=LabkitKernelManager,
            )
            client = LabkitClient(nb_man, labkit_state=labkit_state, **final)
            # the kernel process's own stdout/stderr (its log lines, not the notebook's outputs) go to
            # a file rather than into labkit's terminal
            log_file = labkit_state.kernel_log
            return client.execute(stdout=log_file, stderr=subprocess.STDOUT if log_file else None)

    LabkitEngine.kernel_manager_class = LabkitKernelManager  # for the tests
    return LabkitEngine


def _forget_connection_file(km) -> None:
    """Remove the kernel's connection file once the kernel has read it and the client is connected: its
    ports, HMAC key and CurveZMQ keys are not read again (a restart writes the file anew). jupyter_client
    removes it at an orderly shutdown only, and a labkit killed by SIGKILL left one in the temporary folder
    per fresh kernel (warm kernels' files are also removed by their server, labkit.runner.forkserver)."""
    if getattr(km, "_connection_file_written", False) and km.connection_file:
        with contextlib.suppress(OSError):
            os.remove(km.connection_file)


def _kernel_config():
    """CurveZMQ between labkit and the kernel when pyzmq and the kernelspec support it, so outputs
    (customer data) do not cross 127.0.0.1 in clear text (jupyter_client refuses 'auto' without curve);
    and a short exit after the run (:data:`KERNEL_SHUTDOWN_WAIT_S`)."""
    import zmq
    from traitlets.config import Config

    manager = {"shutdown_wait_time": KERNEL_SHUTDOWN_WAIT_S}
    if zmq.has("curve"):
        manager["transport_encryption"] = "auto"
    return Config({"KernelManager": manager})


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
