"""Warm kernels (labkit.runner.warm, labkit.runner.forkserver) against real kernels: a forked kernel is the
fresh kernel it replaces — same working directory, path, argv, environment, backend, process group and
command line, its own random state — it dies by the same kill, and whatever the server cannot serve
starts a fresh kernel instead. (Batches use them: tests/reliability/test_faults.py, tests/test_pipeline.py,
tests/demo run every notebook fault and every demo pilot through forked kernels.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit.runner import cancel_all, execute, warm

TOKEN = "warm-5e1f"
PROBE = """\
import json, os, sys, pathlib, random
import labkit
import matplotlib
import numpy as np
facts = {
    "pid": os.getpid(), "ppid": os.getppid(), "own_group": os.getpgid(0) == os.getpid(),
    "own_session": os.getsid(0) == os.getpid(), "cwd": os.getcwd(), "path0": sys.path[0],
    "argv0": pathlib.Path(sys.argv[0]).name, "mark": os.environ.get("LABKIT_TEST_MARK"),
    "jpy_parent": os.environ.get("JPY_PARENT_PID"), "backend": matplotlib.get_backend(),
    "numpy": np.random.random(), "random": random.random(), "main": __name__,
    "preloaded": "labkit.analysis" in sys.modules, "stdin": sys.stdin.read() if sys.stdin else None,
}
pathlib.Path(output_dir, "facts.json").write_text(json.dumps(facts))
print("to the notebook")
pathlib.Path(output_dir, "results.json").write_text(json.dumps({"meta": {"run_token": run_token}}))
"""


def notebook(path: Path, *cells: str) -> Path:
    params = nbformat.v4.new_code_cell('run_token = ""\noutput_dir = "."')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, *(nbformat.v4.new_code_cell(c) for c in cells)])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    path.write_text(nbformat.writes(nb))
    return path


def probe(tmp: Path, name: str) -> tuple[dict, object]:
    out = tmp / name
    run = execute(notebook(tmp / f"{name}.ipynb", PROBE), out, {}, cwd=tmp, run_token=TOKEN, timeout_s=60)
    assert run.status == "FINISHED", run.message
    return json.loads((out / "facts.json").read_text()), run


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    """The probe in two warm kernels and in a fresh one, in the same folder, with a variable set."""
    tmp = tmp_path_factory.mktemp("warm")
    mp = pytest.MonkeyPatch()
    mp.setenv("LABKIT_TEST_MARK", "m-42")
    try:
        fresh, fresh_run = probe(tmp, "fresh")
        with warm.warm_kernels([notebook(tmp / "probe.ipynb", PROBE)]) as server:
            assert server is not None
            forked = [probe(tmp, f"warm{i}") for i in (1, 2)]
            server_pid = server.proc.pid
        return {
            "fresh": fresh,
            "warm": [f for f, _ in forked],
            "runs": [r for _, r in forked],
            "fresh_run": fresh_run,
            "server": server_pid,
        }
    finally:
        mp.undo()


def test_a_warm_kernel_is_forked_from_the_server(facts):
    for got in facts["warm"]:
        assert got["ppid"] == facts["server"] and got["preloaded"]
    assert facts["fresh"]["ppid"] == os.getpid() and not facts["fresh"]["preloaded"]


def test_a_warm_kernel_sees_what_a_fresh_one_sees(facts):
    same = ("own_group", "own_session", "cwd", "path0", "argv0", "mark", "backend", "main", "stdin")
    for got in facts["warm"]:
        assert {k: got[k] for k in same} == {k: facts["fresh"][k] for k in same}
        assert got["jpy_parent"] == str(facts["server"])  # its poller ends it if the server dies
    assert facts["fresh"]["own_group"] and facts["fresh"]["mark"] == "m-42"
    assert facts["fresh"]["backend"] == "module://matplotlib_inline.backend_inline"


def test_each_warm_kernel_draws_its_own_random_numbers(facts):
    draws = [(f["numpy"], f["random"]) for f in [facts["fresh"], *facts["warm"]]]
    assert len({d[0] for d in draws}) == 3 and len({d[1] for d in draws}) == 3


def test_a_warm_kernels_notebook_is_saved_as_a_fresh_ones(facts):
    def outputs(run) -> list:
        nb = json.loads(Path(run.executed).read_text())
        return [o for c in nb["cells"] for o in c.get("outputs", [])]

    assert {"name": "stdout", "output_type": "stream", "text": ["to the notebook\n"]} in outputs(
        facts["fresh_run"]
    )
    for run in facts["runs"]:
        assert outputs(run) == outputs(facts["fresh_run"])


def _run_in_thread(nb: Path, out: Path, cwd: Path) -> tuple[threading.Thread, list]:
    box: list = []
    t = threading.Thread(
        target=lambda: box.append(execute(nb, out, {}, cwd=cwd, run_token=TOKEN, timeout_s=120))
    )
    t.start()
    return t, box


def _wait_for(path: Path, within_s: float = 60) -> str:
    deadline = time.monotonic() + within_s
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def gone(pid: int, within_s: float = 10) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


SLEEPER = """\
import os, pathlib, subprocess, time
child = subprocess.Popen(["sleep", "600"])
pathlib.Path(output_dir).mkdir(exist_ok=True)
pathlib.Path(output_dir, "pids").write_text(f"{os.getpid()} {child.pid}")
time.sleep(600)
"""


def test_a_cancelled_warm_kernel_dies_with_its_group_and_shows_as_a_kernel(tmp_path):
    nb = notebook(tmp_path / "sleeps.ipynb", SLEEPER)
    with warm.warm_kernels([nb]):
        t, box = _run_in_thread(nb, tmp_path / "out", tmp_path)
        kernel, child = map(int, _wait_for(tmp_path / "out" / "pids").split())
        cmdline = " ".join(psutil.Process(kernel).cmdline())
        assert "ipykernel_launcher" in cmdline and "forkserver" not in cmdline  # ps sees a kernel
        cancel_all("SIGTERM")
        t.join(30)
    assert box and box[0].status == "KILLED"
    assert gone(kernel) and gone(child)  # the kernel and what it started: one process group


def test_a_warm_kernel_that_exits_fails_the_run_as_a_fresh_one_does(tmp_path):
    nb = notebook(tmp_path / "exits.ipynb", "import os\nos._exit(3)")
    fresh = execute(nb, tmp_path / "fresh", {}, cwd=tmp_path, run_token=TOKEN, timeout_s=60)
    with warm.warm_kernels([nb]):
        forked = execute(nb, tmp_path / "warm", {}, cwd=tmp_path, run_token=TOKEN, timeout_s=60)
    assert (forked.status, forked.ename) == (fresh.status, fresh.ename) == ("FAILED", "DeadKernelError")


def test_what_the_server_cannot_serve_starts_a_fresh_kernel(tmp_path, monkeypatch):
    nb = notebook(tmp_path / "probe.ipynb", PROBE)

    def ppid(name: str) -> int:
        run = execute(nb, tmp_path / name, {}, cwd=tmp_path, run_token=TOKEN, timeout_s=60)
        assert run.status == "FINISHED", run.message
        return json.loads((tmp_path / name / "facts.json").read_text())["ppid"]

    with warm.warm_kernels([nb]) as server:
        assert server.usable()
        # a module of the server's that this folder provides too: a fresh kernel would import the folder's
        (tmp_path / "setproctitle.py").write_text("")
        assert ppid("shadowed") == os.getpid()
        (tmp_path / "setproctitle.py").unlink()
        with monkeypatch.context() as m:
            m.setenv("PYTHONWARNINGS", "ignore")  # shapes imports: the server refuses
            assert ppid("env") == os.getpid()
        assert ppid("served") == server.proc.pid
        server.proc.kill()  # the server is gone: every later kernel is a fresh one
        server.proc.wait()
        assert ppid("dead") == os.getpid()
    monkeypatch.setenv("LABKIT_WARM_KERNELS", "0")
    with warm.warm_kernels() as server:
        assert server is None


def test_the_server_imports_what_the_notebooks_import(tmp_path):
    nb = notebook(
        tmp_path / "a.ipynb",
        "%matplotlib inline\nimport pandas as pd, json\nfrom scipy import stats\n!ls",
        "from . import local\nif True:\n    import fractions",
        "def broken(:",
    )
    hostile = [tmp_path / f"h{i}.ipynb" for i in range(5)]
    for path, text in zip(hostile, ["1", '{"cells": 3}', '{"cells": [1, {"cell_type": "code", "source": 5}]}',
                                    "[]", '{"cells": [{"cell_type": "code", "source": "import a\\u0000"}]}']):  # fmt: skip
        path.write_text(text)
    assert warm.imports_of([nb, tmp_path / "missing.ipynb", *hostile]) == [
        "matplotlib.pyplot",  # `%matplotlib inline` imports pyplot and the inline backend
        "matplotlib_inline.backend_inline",
        "pandas",
        "json",
        "scipy",
        "fractions",
    ]


def test_the_server_imports_only_the_standard_library_and_labkits_own_libraries(tmp_path):
    nb = notebook(
        tmp_path / "mixed.ipynb",
        "import json, pathlib, sys\n"
        "facts = {m: m in sys.modules for m in ('wave', 'hypothesis', 'antigravity')}\n"
        "pathlib.Path(output_dir, 'facts.json').write_text(json.dumps(facts))\n"
        "pathlib.Path(output_dir, 'results.json').write_text(json.dumps({'meta': {'run_token': run_token}}))",
        "if False:\n    import wave, hypothesis, antigravity",  # named, never run
    )
    with warm.warm_kernels([nb]):
        run = execute(nb, tmp_path / "out", {}, cwd=tmp_path, run_token=TOKEN, timeout_s=60)
    assert run.status == "FINISHED", run.message
    facts = json.loads((tmp_path / "out" / "facts.json").read_text())
    # wave: preloaded (standard library, imported by nothing else); hypothesis: another package's import may
    # have effects, so its import is the kernel's own; antigravity opens a web browser on import
    assert facts == {"wave": True, "hypothesis": False, "antigravity": False}


def test_env_mismatch_names_the_first_variable_that_shapes_imports():
    base = {"HOME": "/h", "PATH": "/bin", "MLFLOW_RUN_ID": "a", "JPY_PARENT_PID": "1"}
    assert warm_env(base, base | {"MLFLOW_RUN_ID": "b", "JPY_SESSION_NAME": "x"}) is None
    assert warm_env(base, base | {"OMP_NUM_THREADS": "1"}) == "OMP_NUM_THREADS"
    assert warm_env(base, {k: v for k, v in base.items() if k != "HOME"}) == "HOME"


def warm_env(a, b):
    from labkit.runner.forkserver import env_mismatch

    return env_mismatch(a, b)


KILLED_PARENT = """\
import sys
from pathlib import Path
from labkit.runner import execute, warm
with warm.warm_kernels([Path(sys.argv[1])]):
    execute(Path(sys.argv[1]), Path(sys.argv[2]), {}, cwd=Path(sys.argv[3]), run_token="t", timeout_s=600)
"""


def test_when_labkit_is_killed_the_server_and_its_kernels_die_too(tmp_path):
    nb = notebook(tmp_path / "sleeps.ipynb", SLEEPER)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_PARENT, str(nb), str(tmp_path / "out"), str(tmp_path)]
    )
    try:
        kernel, child = map(int, _wait_for(tmp_path / "out" / "pids").split())
        server = psutil.Process(kernel).ppid()
        command = psutil.Process(server).cmdline()
        assert "labkit.runner.forkserver" in " ".join(command)
        folder = Path(command[command.index("labkit.runner.forkserver") + 1]).parent  # its socket's
        assert folder.name.startswith("labkit-kernels-") and folder.is_dir()
        # its title, as a fresh kernel's command line: ... ipykernel_launcher -f <connection file>
        kernel_argv = " ".join(psutil.Process(kernel).cmdline()).split()
        # its connection file (ports, HMAC key) was removed by labkit once the kernel was up: no SIGKILL of
        # labkit can leave it behind now (the server removes the file of a kernel killed while starting)
        assert not Path(kernel_argv[kernel_argv.index("-f") + 1]).exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert gone(server) and gone(kernel) and gone(child)
        assert not folder.exists()  # labkit could not remove it: the server did, as it ended
    finally:
        if proc.poll() is None:
            proc.kill()


KILLED_EARLY = """\
import time
from labkit.runner import warm
server = warm.KernelServer(["labkit", "matplotlib.pyplot"])  # seconds of imports
print(server.dir, server.proc.pid, flush=True)
time.sleep(600)
"""


def test_when_labkit_is_killed_while_the_server_imports_the_server_still_removes_its_folder():
    """SIGKILL before the server is ready: it finishes its imports, its "ready" meets a broken pipe, and it
    ends (as the stdin it watches closed) removing its folder."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_EARLY], stdout=subprocess.PIPE, text=True)
    try:
        folder, pid = proc.stdout.readline().split()
        assert Path(folder).is_dir() and psutil.Process(int(pid)).is_running()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert gone(int(pid), 60) and not Path(folder).exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_batch_refused_at_once_stops_the_server_in_its_imports(tmp_path):
    nb = notebook(tmp_path / "heavy.ipynb", "import labkit, matplotlib.pyplot")  # seconds of imports
    with warm.warm_kernels([nb]) as server:
        pass  # the preflight refused: no kernel was asked for
    assert server.proc.returncode == -signal.SIGTERM  # once serving, SIGTERM is handled: it exits 0


def test_the_server_ends_with_its_batch_and_leaves_no_folder(tmp_path):
    with warm.warm_kernels() as server:
        assert server.usable()
        folder, pid = server.dir, server.proc.pid
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert gone(pid, 5) and not folder.exists() and server.proc.returncode == 0


def test_only_modules_and_packages_of_the_kernels_folder_shadow(tmp_path):
    from labkit.runner.forkserver import shadowed

    names = {"pandas", "data", "labkit", "six"}
    (tmp_path / "data").mkdir()  # a plain folder: a namespace portion loses to an installed package
    (tmp_path / "labkit.yaml").write_text("")
    assert shadowed(str(tmp_path), names) is None
    (tmp_path / "six.cpython-311-x86_64-linux-gnu.so").write_text("")
    assert shadowed(str(tmp_path), names) == "six.cpython-311-x86_64-linux-gnu.so"
    (tmp_path / "six.cpython-311-x86_64-linux-gnu.so").unlink()
    (tmp_path / "pandas").mkdir()
    (tmp_path / "pandas" / "__init__.py").write_text("")
    assert shadowed(str(tmp_path), names) == "pandas"
    assert shadowed(str(tmp_path / "missing"), names) is None


def test_batches_in_one_process_share_the_server_until_the_last_ends():
    with warm.warm_kernels() as first:
        with warm.warm_kernels() as second:
            assert second is first and first.users == 2
        assert first.proc.poll() is None and warm.current() is first  # still serving the first batch
    assert gone(first.proc.pid, 5) and warm.current() is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["cells", "cell_type", "source", "code"]) | st.text(max_size=5), inner, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=JSON)
def test_any_json_file_as_a_notebook_gives_a_list_of_imports_never_an_error(tmp_path, document):
    path = tmp_path / "any.ipynb"
    path.write_text(json.dumps(document))
    assert isinstance(warm.imports_of([path]), list)
