"""A shared MLflow server with authentication (RELIABILITY.md cases 28 and 33; issue #7).

The server is the one the README's "A shared MLflow server" section describes, started the same way:
``mlflow server --app-name basic-auth`` on 127.0.0.1, its auth config in ``MLFLOW_AUTH_CONFIG_PATH``
(its own sqlite user store, ``default_permission = READ``, an admin password that is not a default),
``MLFLOW_FLASK_SERVER_SECRET_KEY`` set, and a lab user created through the admin API. labkit reaches it
with ``LABKIT_TRACKING_URI`` and ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``.

- case 33: an anonymous request is 401, a wrong password 401 (and labkit says so in one line, without
  the password), a foreign ``Host`` 403 even with good credentials; the lab user records runs.
  `labkit ui` binding 127.0.0.1 and refusing a foreign Host is tests/tracking/test_ui.py.
- case 28: the server is stopped while a `labkit run` notebook runs (retries 0, timeout 5 s), and
  restarted on the same port and stores: the outputs are kept, the CLI says "not recorded ... use
  `labkit run --record-only`", the run left RUNNING on the server is taken over by ``--record-only``
  (exactly one run for the run key, FINISHED, with its metrics and artifacts), and a re-run succeeds.
  An unreachable server *before* the run: tests/test_pipeline.py::test_an_unreachable_server_keeps_the_outputs_and_says_how_to_record_them
  and ::test_record_only_records_the_kept_run_exactly_once.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
import urllib.error
import urllib.request

import pytest
from mlflow_server import start_server, stop_server
from test_faults import OK_ARTIFACTS, make_lab
from test_pipeline import labkit_cli, labkit_popen, one_line_with, output

from labkit.tracking import metrics_from_results

ADMIN_PASSWORD = secrets.token_urlsafe(18)
LAB_USER, LAB_PASSWORD = "pilot-lab", secrets.token_urlsafe(18)

AUTH_INI = """\
[mlflow]
default_permission = READ
database_uri = sqlite:///{db}
admin_username = admin
admin_password = {password}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# MLflow's own cache of successful credential checks (off by default): without it every request of a run
# pays a PBKDF2 check (~0.3 CPU-s here, ~30 CPU-s per run); wrong passwords are never cached (README)
auth_cache_ttl_seconds = 300
"""


def request(
    uri: str, path: str, *, user: str | None = None, password: str = "", host: str | None = None
) -> int:
    """The HTTP status of GET ``uri + path``, with basic auth and a Host header if given."""
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    if host is not None:
        headers["Host"] = host
    try:
        with urllib.request.urlopen(urllib.request.Request(uri + path, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


SEARCH = "/api/2.0/mlflow/experiments/search?max_results=10"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The basic-auth server, with the lab user created by the admin; yields a dict the tests share."""
    root = tmp_path_factory.mktemp("auth-server")
    ini = root / "auth.ini"
    ini.write_text(AUTH_INI.format(db=root / "basic_auth.db", password=ADMIN_PASSWORD))
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}
    args = ("--app-name", "basic-auth")
    process, uri = start_server(root, args=args, env=env)
    from mlflow.server import get_app_client

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    state = {"process": process, "uri": uri, "root": root, "env": env, "args": args}
    try:  # the server is stopped even when the set-up below fails
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
        get_app_client("basic-auth", tracking_uri=uri).create_user(username=LAB_USER, password=LAB_PASSWORD)
        os.environ.update(MLFLOW_TRACKING_USERNAME=LAB_USER, MLFLOW_TRACKING_PASSWORD=LAB_PASSWORD)
        yield state
    finally:
        stop_server(state["process"])
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def lab_env(uri: str, password: str = LAB_PASSWORD) -> dict[str, str]:
    return {
        "LABKIT_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": LAB_USER, "MLFLOW_TRACKING_PASSWORD": password,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ case 33


def test_anonymous_and_wrong_password_requests_are_401(server):
    uri = server["uri"]
    assert request(uri, "/health") == 200  # the health check stays open, for the proxy
    assert request(uri, SEARCH) == 401
    assert request(uri, SEARCH, user=LAB_USER, password="not-the-password") == 401
    assert request(uri, SEARCH, user="admin", password="password1234") == 401  # the old default
    assert request(uri, SEARCH, user=LAB_USER, password=LAB_PASSWORD) == 200


def test_a_foreign_host_header_is_403_even_with_credentials(server):
    uri = server["uri"]
    assert request(uri, SEARCH, host="evil.com") == 403
    assert request(uri, SEARCH, user=LAB_USER, password=LAB_PASSWORD, host="evil.com") == 403
    assert request(uri, SEARCH, user=LAB_USER, password=LAB_PASSWORD, host=uri.split("//")[1]) == 200


def test_a_wrong_password_is_one_line_without_the_password(server, tmp_path):
    lab = make_lab(tmp_path / "lab", {})
    proc = labkit_cli(lab, "compare", **lab_env(server["uri"], password="wrong-" + LAB_PASSWORD))
    text = output(proc)
    assert proc.returncode == 1, text
    assert "Traceback" not in text and LAB_PASSWORD not in text
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "401" in proc.stderr or "nauthorized" in proc.stderr or "credentials" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------------ case 28


def waiting(lab, pid: str) -> bool:
    """Whether the pilot's notebook is saved with its ``wait`` cell running (read from its run folder, not
    from the server: each request to the basic-auth server checks the password hash, which costs CPU)."""
    for folder in lab.run_dirs(pid):
        try:
            cells = json.loads((folder / "fault.ipynb").read_text())["cells"]
        except (FileNotFoundError, ValueError):  # not written yet, or caught mid-write
            continue
        if any(
            'fault == "wait"' in "".join(c["source"])
            and c["metadata"].get("papermill", {}).get("status") == "running"
            for c in cells
        ):
            return True
    return False


@pytest.fixture(scope="module")
def outage(server, tmp_path_factory) -> dict:
    """`labkit run w-1` through the auth server; the server stops mid-notebook and comes back."""
    lab = make_lab(tmp_path_factory.mktemp("outage") / "lab", {"w-1": "wait"})
    uri = server["uri"]
    env = lab_env(uri)
    proc = labkit_popen(lab, "run", "w-1", **env)
    try:
        deadline = time.monotonic() + 180
        # the notebook waits first; then the server is asked until it holds the run, RUNNING
        while not (
            waiting(lab, "w-1") and [r for r in lab.runs("w-1", uri=uri) if r.info.status == "RUNNING"]
        ):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the run never started on the server: {proc.communicate(timeout=60)}")
            time.sleep(0.2)
        stop_server(server["process"])  # mid-notebook: the cell waits for faults/w-1.go
        (lab.root / "faults" / "w-1.go").touch()
        began = time.monotonic()
        stdout, stderr = proc.communicate(timeout=180)
        seconds = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    folder = lab.run_dirs("w-1")[-1]
    kept = {p.name for p in folder.iterdir()}
    port = int(uri.rsplit(":", 1)[1])
    server["process"], _ = start_server(server["root"], port=port, args=server["args"], env=server["env"])
    lab._clients.clear()  # new connections to the restarted server
    left = lab.runs("w-1", uri=uri)
    record = labkit_cli(lab, "run", "--record-only", "w-1", **env)
    recorded = lab.runs("w-1", uri=uri)
    lab.clear_faults()
    rerun = labkit_cli(lab, "run", "w-1", **env)
    return {
        "lab": lab, "uri": uri, "code": proc.returncode, "stdout": stdout, "stderr": stderr, "seconds": seconds,
        "folder": folder, "kept": kept, "left": left, "record": record, "recorded": recorded, "rerun": rerun,
        "after": lab.runs("w-1", uri=uri),
    }  # fmt: skip


def test_a_server_stopped_mid_run_keeps_the_outputs_and_says_how_to_record_them(outage):
    text = outage["stdout"] + outage["stderr"]
    assert outage["code"] == 1, text
    assert "Traceback" not in text and LAB_PASSWORD not in text
    line = one_line_with(outage["stdout"], "w-1:", "not recorded in MLflow")
    assert "cannot reach the MLflow tracking server" in line
    assert f"outputs kept in results/w-1/runs/{outage['folder'].name}" in line
    assert line.endswith("record them later with `labkit run --record-only w-1`"), line
    assert "NOT-RECORDED" in one_line_with(outage["stdout"], "│ w-1 ")
    assert outage["seconds"] < 60, "a stopped server must fail fast, not retry for minutes"
    assert outage["kept"] >= {"fault.ipynb", "fault.html", "results.json", "record.json", "figure.png"}
    assert "recorded.json" not in outage["kept"]
    (left,) = outage["left"]  # the server could not take the status either: the run waits, RUNNING
    assert left.info.status == "RUNNING"


def test_record_only_after_the_restart_finishes_that_same_run_once(outage):
    lab, uri, folder = outage["lab"], outage["uri"], outage["folder"]
    record = outage["record"]
    assert record.returncode == 0, output(record)
    (run,) = outage["recorded"]  # the RUNNING run was taken over, not duplicated
    assert run.info.run_id == outage["left"][0].info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["labkit.run_key"] == f"w-1/{folder.name}"
    assert json.loads((folder / "recorded.json").read_text())["run_id"] == run.info.run_id
    results = json.loads((folder / "results.json").read_text())
    assert run.data.metrics == pytest.approx(metrics_from_results(results), rel=1e-12)
    assert lab.artifacts(run, uri=uri) == OK_ARTIFACTS | {"pilot/w-1.yaml"}
    assert run.data.tags["labkit.latest"] == "true"


def test_after_the_outage_a_rerun_succeeds_and_nothing_is_running(outage):
    rerun = outage["rerun"]
    assert rerun.returncode == 0, output(rerun)
    first, second = outage["after"]
    assert (first.info.status, second.info.status) == ("FINISHED", "FINISHED")
    assert (first.data.tags["labkit.latest"], second.data.tags["labkit.latest"]) == ("false", "true")
    assert [r.info.run_id for r in outage["after"] if r.info.status == "RUNNING"] == []
