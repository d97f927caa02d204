"""The kernel fork-server of a batch: a process that imported a kernel's libraries once and forks kernels.

A batch of pilots starts one kernel per pilot, and each fresh kernel spends most of its CPU importing the
same libraries (ipykernel, matplotlib, pandas, labkit's analysis with Ibis, DuckDB and scipy: ~3 s of the
~4.5 s a demo pilot's kernel takes). This process imports them once — ipykernel, the modules the batch's
notebooks import (of the standard library and labkit's own libraries), and labkit's analysis engine
when they import labkit (:func:`preload`) — then, for every
request on its Unix socket, forks a child that becomes a kernel exactly as ``python -m ipykernel_launcher
-f <connection file>`` would: its own session and process group (so labkit's SIGKILL of the group reaches
the kernel and whatever it started), the request's working directory, environment and stdout/stderr, the
interpreter's ``sys.path`` and ``sys.argv`` of a fresh kernel, fresh random seeds, default signal handlers.

Protocol (one connection per kernel): the client sends a 4-byte length and a JSON request ``{"argv",
"env", "cwd"}`` with the kernel's stdout and stderr descriptors attached (SCM_RIGHTS); the server answers
``pid <n>`` or ``no <reason>`` (then the client starts a fresh kernel itself), and later ``exit <code>``
when it reaped the child (the code as :class:`subprocess.Popen` gives it: minus the signal number).

The server forks only while it has a single thread, and only when the request's environment agrees with
its own on every variable that shapes how the preloaded libraries were imported (:func:`env_mismatch`), and
only when the kernel's folder holds no module of its own that a fresh kernel would import instead (:func:`shadowed`).
It ends when its stdin closes — labkit closes it at the end of the batch, and the kernel dies with labkit —
SIGKILLing the process group of every kernel still alive, removing those kernels' connection files and its
own folder (a labkit killed by SIGKILL cleans up nothing). Run by :mod:`labkit.runner.warm`, never by hand.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import gc
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback

# The temporary folder labkit.runner.warm makes for the server's socket and log starts with this.
FOLDER_PREFIX = "labkit-kernels-"
_ARGV: dict[int, list[str]] = {}  # pid -> the argv of each live kernel forked here (its -f connection file)

# Every kernel imports these before its first cell; the server adds the imports of the batch's notebooks.
BASE = (
    "setproctitle",
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.debugger",
)
# What `labkit.analyze` imports on first use (its engine): preloaded when a notebook imports labkit.
LABKIT_ENGINE = (
    "labkit.analysis",
    "labkit.notebook",
    "labkit.methods",
    "labkit.data.aggregate",
    "labkit.data.sources",
    "labkit.stats.sequential",
    "labkit.assignment",
    "labkit.planning",
    "labkit.segments",
    "labkit.over_time",
    *(
        f"labkit.stats.{m}"
        for m in ("cuped", "multiplicity", "over_time", "power", "proportions", "ratios", "srm")
    ),
    "pyarrow",
    "duckdb",
    "ibis",
    "ibis.backends.duckdb",
    "ibis.backends.sql.compilers",
    "ibis.formats.pandas",
)
# What labkit.notebook's figures and `%matplotlib inline` import: preloaded when a notebook uses either.
FIGURES = ("matplotlib.pyplot", "matplotlib_inline.backend_inline")
# Of a notebook's imports the server takes only the standard library's and those of the libraries labkit
# itself installs: importing a module runs its code, and another package's import may have effects (open a
# connection, write a file) that must not happen in a server started before the preflight has passed.
KNOWN = frozenset({
    "labkit", "numpy", "pandas", "scipy", "matplotlib", "matplotlib_inline", "IPython", "ipykernel", "duckdb",
    "ibis", "pyarrow", "yaml", "pydantic", "rich", "dateutil", "pytz", "nbformat", "traitlets", "zmq",
})  # fmt: skip
NOT_STDLIB = frozenset(
    {"antigravity", "this", "turtle", "turtledemo", "tkinter", "idlelib"}
)  # effects on import
# Variables whose value at import time shapes the preloaded libraries (paths, threads, locale, backends).
_SHAPING = ("PYTHON", "MPL", "MATPLOTLIB", "OMP_", "OPENBLAS", "MKL_", "NUMEXPR", "VECLIB", "LD_", "MALLOC",
            "LC_", "LANG", "HOME", "XDG_", "IPYTHON", "JUPYTER", "LABKIT_", "ARROW_", "TZ", "PATH", "VIRTUAL_ENV")  # fmt: skip
_MAX_REQUEST = 1 << 20


def env_mismatch(server_env: dict[str, str], kernel_env: dict[str, str]) -> str | None:
    """The first variable that shapes imports and differs between the server and the kernel, if any."""
    for key in sorted(set(server_env) | set(kernel_env)):
        if key.startswith(_SHAPING) and server_env.get(key) != kernel_env.get(key):
            return key
    return None


def preloadable(name: str) -> bool:
    """A module the server may import for a notebook: the standard library's (bar a few with effects on
    import) and those of the libraries labkit installs (:data:`KNOWN`)."""
    top = name.partition(".")[0]
    return top in KNOWN or (top in sys.stdlib_module_names and top not in NOT_STDLIB)


def preload(modules: list[str]) -> None:
    # the backend ipykernel sets when it starts (kernelapp.init_io), before matplotlib reads it at import
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    modules = [m for m in modules if preloadable(m)]
    wanted = [*BASE, *modules]
    if any(m == "labkit" or m.startswith("labkit.") for m in modules):
        wanted += LABKIT_ENGINE
    if "labkit.notebook" in modules:
        wanted += FIGURES
    for name in dict.fromkeys(wanted):
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - the kernel imports it itself, as a fresh one would
            traceback.print_exc()


def main(argv: list[str] | None = None) -> int:
    path, *modules = argv if argv is not None else sys.argv[1:]
    try:
        return _main(path, modules)
    finally:  # also when labkit died before the server was ready (its "ready" then meets a broken pipe)
        _remove_own_folder(path)


def _main(path: str, modules: list[str]) -> int:
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]  # as ipykernel_launcher does: a kernel's own folder is added back by IPython
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is labkit's to handle
    env = dict(os.environ)
    preload(modules)
    _retitle(None)  # setproctitle finds the argv area now, while the environment is the interpreter's
    gc.collect()
    gc.freeze()  # the children share these pages; a frozen heap is not rewritten by their collections
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: None)  # ends the loop below through the wakeup fd
    children: dict[int, socket.socket] = {}
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        while True:
            ready, _, _ = select.select([listener, sys.stdin, wake_r], [], [], 1.0)
            if wake_r in ready and _sigterm_in(wake_r):
                break
            _reap(children)
            if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
                break  # labkit closed the pipe, or died
            if listener in ready:
                conn, _ = listener.accept()
                _serve(conn, env, children, (listener, wake_r, wake_w))
    finally:
        ending = [_ARGV.get(pid, []) for pid in children]
        for pid in list(children):
            _kill_group(pid)
        deadline = time.monotonic() + 5
        while children and time.monotonic() < deadline:
            _reap(children)
            time.sleep(0.01)
        for argv in ending:  # killed here: no kernel manager will clean up after them if labkit died
            _remove_connection_file(argv)
    return 0


def _remove_connection_file(argv: list[str]) -> None:
    """The connection file (``-f PATH``: ports and the HMAC key) of a kernel this server killed as it ended.
    jupyter_client writes it in the temp dir and removes it when it shuts the kernel down; labkit removes it
    as soon as the kernel is up (labkit.runner.kernels), so this is for a kernel still starting when a
    labkit killed by SIGKILL left it."""
    if "-f" in argv[:-1]:
        with contextlib.suppress(OSError):
            os.remove(argv[argv.index("-f") + 1])


def _remove_own_folder(path: str) -> None:
    """The folder labkit made for this server (its socket and log), removed as the server ends: labkit
    removes it too when it closes the server, but a labkit killed by SIGKILL cannot, and each such run left
    one in the temp dir. Only a folder of labkit's own naming is removed."""
    import shutil

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(folder).startswith(FOLDER_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)


def _sigterm_in(fd: int) -> bool:
    """Drain the signal wakeup pipe; whether SIGTERM was among the signals."""
    try:
        data = os.read(fd, 4096)
    except BlockingIOError:
        return False
    return signal.SIGTERM in data


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        _ARGV.pop(pid, None)  # a kernel that ended is its kernel manager's to clean up
        if conn is not None:
            _reply(conn, f"exit {os.waitstatus_to_exitcode(status)}")
            conn.close()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _reply(conn: socket.socket, text: str) -> None:
    try:
        conn.sendall(text.encode() + b"\n")
    except OSError:
        pass  # the client is gone; the kernel's fate is its process group's


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    conn.settimeout(10)
    data, fds, _, _ = socket.recv_fds(conn, _MAX_REQUEST, 4)
    if len(data) < 4:
        raise ValueError("short request")
    (size,) = struct.unpack("!I", data[:4])
    body = data[4:]
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            raise ValueError("truncated request")
        body += more
    return json.loads(body), fds


def _serve(conn: socket.socket, env: dict[str, str], children: dict, own_fds: tuple) -> None:
    fds: list[int] = []
    try:
        request, fds = _read_request(conn)
        why = _refusal(request, env, fds)
        if why:
            _reply(conn, f"no {why}")
            conn.close()
            return
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns (covered through the kernels it runs)
            _become_kernel(request, fds, [conn, *children.values()], own_fds)
        children[pid] = conn
        _ARGV[pid] = list(request["argv"])
        _reply(conn, f"pid {pid}")
    except (OSError, ValueError) as e:
        _reply(conn, f"no {type(e).__name__}: {e}")
        conn.close()
    finally:
        for fd in fds:
            os.close(fd)


def _refusal(request: dict, env: dict[str, str], fds: list[int]) -> str | None:
    if len(fds) != 2:
        return "expected the kernel's stdout and stderr"
    if threading.active_count() != 1:
        return "the server has started a thread; forking it is not safe"
    key = env_mismatch(env, request["env"])
    if key:
        return f"the kernel's environment differs in {key}"
    shadow = shadowed(request["cwd"], {name.partition(".")[0] for name in sys.modules})
    return f"the kernel's folder has its own {shadow}, which a fresh kernel would import" if shadow else None


def shadowed(folder: str, names: set[str]) -> str | None:
    """A module of ``names`` that ``folder`` (first on a fresh kernel's path) would provide instead."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return None
    for entry in sorted(entries):
        stem = entry.partition(".")[0]
        if stem not in names:
            continue
        full = os.path.join(folder, entry)
        if entry.endswith((".py", ".pyc", ".so", ".pyd")) or os.path.isfile(
            os.path.join(full, "__init__.py")
        ):
            return entry
    return None


def _become_kernel(request: dict, fds: list[int], conns: list[socket.socket], own_fds: tuple) -> None:
    """In the forked child: turn into ``python -m ipykernel_launcher <argv>``; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setsid()
        listener, wake_r, wake_w = own_fds
        for sock in (listener, *conns):
            sock.close()  # through the object: a bare os.close would let its finalizer close a reused fd
        os.close(wake_r)
        os.close(wake_w)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in (null, *fds):
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ["JPY_PARENT_PID"] = str(os.getppid())  # the kernel's poller: exit when this server dies
        time.tzset()
        _reseed()
        import ipykernel_launcher  # noqa: F401 - a module without side effects when not __main__
        from ipykernel.kernelapp import IPKernelApp

        sys.argv = [ipykernel_launcher.__file__, *request["argv"]]
        _retitle(request["argv"])
        IPKernelApp.launch_instance(argv=request["argv"])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - printed to the kernel's log, as a fresh kernel's would be
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _retitle(argv: list[str] | None) -> None:
    """The command line ``ps`` shows: for a kernel (``argv``), a fresh kernel's rather than the server's."""
    try:
        from setproctitle import getproctitle, setproctitle
    except ImportError:  # pragma: no cover - a dependency; without it the kernel keeps the server's name
        return
    if argv is None:
        setproctitle(getproctitle())
    else:
        setproctitle(" ".join([sys.executable, "-m", "ipykernel_launcher", *argv]))


def _reseed() -> None:
    """A fresh kernel draws fresh random state; a fork copies the server's (``random`` reseeds itself)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise
