"""`labkit run`: each pilot's notebook through papermill, then one MLflow run per analysis.

The only module that joins the runner (papermill) and tracking (MLflow). For every pilot:

1. before anything is created: the pilot validates, its notebook is a notebook with a ``parameters`` cell
   and a known kernel, and its assignment exists;
2. ``results/<id>/runs/<UTC stamp>/`` receives first a copy of the pilot file (``<id>.yaml``: the run
   analyses, logs and hashes this snapshot, so an edit while the run is in flight changes nothing in it),
   then the executed notebook (.ipynb and .html), results.json and figures — kept even when MLflow is down or the notebook fails. The folder is created before the MLflow
   run: a read-only or full results disk is then one line and no run (status NOT-RUN); a disk error later
   ends the run FAILED with the last complete save of the notebook, never a RUNNING run or a traceback;
3. the notebook starts at once; beside it (``BackgroundTracking``: importing MLflow and opening the store cost
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

The package, by job: ``batch`` (pilots resolved and checked, run in parallel, signals, the summary table,
``--record-only``), ``one`` (one pilot's run and its :class:`Outcome`), ``recording`` (MLflow opened and
written beside the notebooks).
"""

from __future__ import annotations

from labkit.pipeline.batch import (
    all_pilots,
    preflight,
    record_only,
    render_outcomes,
    resolve_pilots,
    run_batch,
)
from labkit.pipeline.one import Outcome, run_one, snapshot_pilot
from labkit.pipeline.recording import RECORDED, run_link

__all__ = [
    "RECORDED",
    "Outcome",
    "all_pilots",
    "preflight",
    "record_only",
    "render_outcomes",
    "resolve_pilots",
    "run_batch",
    "run_link",
    "run_one",
    "snapshot_pilot",
]
