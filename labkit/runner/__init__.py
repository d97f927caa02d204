"""Execute one pilot notebook with papermill and say, in one record, how it ended.

This package is papermill only: it knows nothing of MLflow (``labkit.tracking``) or of pilots
(``labkit.pipeline`` joins the three). The pipeline calls::

    check_notebook(path)                 # before any run exists: RunError on a bad notebook
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
    the kernel process's own stdout/stderr (startup errors, crashes), kept only when not empty; the
    traceback ipykernel sometimes logs as it shuts down (a race of its own, after the notebook) is dropped.
    A kernel that died while starting and was started again (two kernels drew the same free port) leaves
    its traceback here, even when the run then finished: it is why the run took a second start.
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

Importing this package is cheap: papermill, nbclient, nbformat and nbconvert are imported on use.

The package, by job: ``checks`` (the notebook file, its kernel and the parameters, before any run),
``kernels`` (the nbclient client and papermill engine, the kernel's process group, :func:`cancel_all`),
``execute`` (one run under signals and timeouts, and its verdict), ``export`` (the partial notebook's
banner, redaction, the html and report exports, figures), ``lazy_iri`` (nbformat imported without
compiling jsonschema's IRI grammars, ~1.8 s of CPU, until a schema checks an IRI).
"""

from __future__ import annotations

import logging

from labkit.runner.checks import check_notebook, check_parameters
from labkit.runner.execute import RESULTS_FILE, NotebookRun, execute
from labkit.runner.export import REPORT_FILE, warm_html_export
from labkit.runner.kernels import MAX_OUTPUT_BYTES, cancel_all

__all__ = [
    "MAX_OUTPUT_BYTES",
    "REPORT_FILE",
    "RESULTS_FILE",
    "NotebookRun",
    "cancel_all",
    "check_notebook",
    "check_parameters",
    "execute",
    "warm_html_export",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
