"""`labkit ui`: the MLflow UI on the lab's store, bound to 127.0.0.1 unless told otherwise.

The UI is `mlflow server` over the lab's tracking store, started with job execution off and one worker
(it starts in seconds and exits cleanly). It has no authentication: keep it on 127.0.0.1, or see the
README for a shared server with MLflow's basic-auth app behind TLS.

MLflow 3's UI opens in its "GenAI" view (traces, no runs table) unless told otherwise, so the command also
prints the address of the lab experiment's runs table in the "Model training" view.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from labkit.errors import LabkitError
from labkit.lab import Lab


def server_command(lab: Lab, *, host: str, port: int) -> list[str]:
    uri = lab.tracking_uri
    if uri.startswith(("http://", "https://")):
        raise LabkitError(
            f"the lab records to a shared server ({uri.split('@')[-1]}); open it in a browser instead"
        )
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in the UI's "Model training" view (MLflow 3 opens on GenAI otherwise)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def serve(lab: Lab, *, host: str = "127.0.0.1", port: int = 5000) -> int:
    from labkit.tracking import Tracker

    tracker = Tracker(lab)
    tracker.prepare()  # create the store once, so the server does not race a first run
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"  # IPv6 goes in brackets
    print(f"MLflow UI for {lab.spec.lab}: {base}  (Ctrl-C stops it)", flush=True)
    print(
        f"runs of experiment '{lab.spec.mlflow_experiment}': {runs_url(base, tracker.experiment_id)}",
        flush=True,
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            "warning: the MLflow UI has no authentication; anyone who reaches this address sees every run",
            file=sys.stderr,
        )
    proc = subprocess.Popen(server_command(lab, host=host, port=port), env=env, start_new_session=True)

    def stop(signum, frame):  # SIGTERM (and SIGINT, even where a background shell ignores it) stop the server
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        return 130
