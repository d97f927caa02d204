"""The files a run leaves beside its notebook: the partial notebook's banner, redaction, the html export and
the report without code, and the figures the run wrote.

Exports never raise: a failed one is logged and said, and the run's own outcome stays its message. Files are
written through ``labkit._files.write_atomic`` without fsync (papermill saves after every cell; a crash
leaves the previous complete file, which is what matters here).
"""

from __future__ import annotations

import html
import logging
import threading
from pathlib import Path

from labkit._files import write_atomic
from labkit.runner.lazy_iri import defer_iri_grammars

log = logging.getLogger("labkit.runner")

REPORT_FILE = "report.html"
FIGURE_SUFFIXES = (".png", ".svg")
BANNER_TAG = "papermill-error-cell-tag"  # papermill strips these cells when the notebook is re-run


def cell_tags(cell) -> list:
    return (cell.get("metadata") or {}).get("tags") or []


def first_line(text: str) -> str:
    line = next((x.strip() for x in str(text).splitlines() if x.strip()), "")
    return line if len(line) <= 300 else line[:297] + "..."


def default_redactor(params: dict):
    """The default redactor of a labkit notebook's run: its pilot's cohort ids (``labkit.privacy``)."""
    if params.get("pilot_path") and params.get("lab_path"):
        from labkit.privacy import cohort_redactor

        return cohort_redactor(params["lab_path"], params["pilot_path"])
    return None


def redact_errors(executed: Path, redact) -> None:
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
        if BANNER_TAG in cell_tags(cell):  # papermill's banner and labkit's quote the error
            new = redact(cell.get("source", ""))
            changed |= new != cell.get("source", "")
            cell["source"] = new
    if changed:
        write_atomic(executed, nbformat.writes(nb), fsync=False)


def save_partial(executed: Path, nb, status: str, message: str) -> None:
    """Save the in-memory notebook with a banner: papermill marks only a raising cell, and an interrupt
    may have cut its own last save short."""
    if nb is None:
        return
    import nbformat

    banner = nbformat.v4.new_markdown_cell(
        '<span style="color:red; font-family:Helvetica Neue, Helvetica, Arial, sans-serif; font-size:2em;">'
        f"labkit: this run {status}: {html.escape(message)}</span>"
    )
    banner.metadata["tags"] = [BANNER_TAG]
    nb.cells.insert(0, banner)
    try:
        write_atomic(executed, nbformat.writes(nb), fsync=False)
    except Exception as e:  # noqa: BLE001 - the run's own failure must stay the message
        log.warning("%s: could not save the partial notebook: %s", executed, e)


# One exporter of each kind per process, used by one export at a time. Building one compiles nbconvert's
# Jinja templates (~0.06 CPU-s, ~8x the export of a small notebook with a built exporter), and an exporter
# is not made to be shared by threads: a lock serialises the exports, which hold the GIL anyway. (Exporters
# per thread, as before, made the warm-up thread's exporters die with it: every run built them again.)
_EXPORTERS: dict[bool, object] = {}
_EXPORT_LOCK = threading.Lock()


def render_html(nb, *, code: bool = True) -> str:
    """The HTML of a notebook node: with code (``<stem>.html``) or without (``report.html``: nbconvert's
    ``--no-input``, i.e. no code cells and no In/Out prompts; markdown, outputs and figures kept)."""
    with _EXPORT_LOCK:
        exporter = _EXPORTERS.get(code)
        if exporter is None:
            from nbconvert import HTMLExporter

            exporter = HTMLExporter() if code else HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                                                                exclude_output_prompt=True)  # fmt: skip
            _EXPORTERS[code] = exporter
        body, _ = exporter.from_notebook_node(nb)
    return body


def report_path(output_dir: Path, notebook: Path) -> Path:
    """``report.html``, or ``report.no-input.html`` beside a notebook whose own export is report.html."""
    return output_dir / (REPORT_FILE if Path(notebook).stem != "report" else "report.no-input.html")


def warm_html_export() -> None:
    """Import nbconvert and render a small notebook once, in this process: its first export (templates,
    Markdown and highlighting set up) costs ~0.7 s against ~0.1 s later. `labkit run` calls this in a
    background thread while the kernels run, so no pilot waits for it after its notebook."""
    defer_iri_grammars()  # nbconvert and nbformat import jsonschema (labkit.runner.lazy_iri)
    try:
        import nbformat

        nb = nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_markdown_cell("**warm-up** `x`"), nbformat.v4.new_code_cell("x = 1  # x")]
        )
        render_html(nb)
        render_html(nb, code=False)
    except Exception:  # noqa: BLE001 - only a head start: the real export reports its own failure
        pass


def export_html(executed: Path, html_path: Path, *, code: bool = True) -> tuple[Path | None, str | None]:
    try:
        import nbformat

        body = render_html(nbformat.read(executed, as_version=4), code=code)
        write_atomic(html_path, body, fsync=False)
        return html_path, None
    except Exception as e:  # noqa: BLE001 - an export failure never hides the run's outcome
        return None, f"{type(e).__name__}: {first_line(str(e))}"


def export_both(executed: Path, html_path: Path, report: Path | None):
    """``((html, error), (report, error))``: the export with code, and the one without (none for no report)."""
    return export_html(executed, html_path), (
        export_html(executed, report, code=False) if report is not None else (None, None)
    )


def export_views(
    executed: Path, html_path: Path, report: Path | None, *, via=None
) -> tuple[Path | None, Path | None, str | None]:
    """The executed notebook's html export, and its export without code to ``report`` (None: no report,
    the run did not finish); returns (html, report, why the html export failed). A failed export is
    logged and never raised: the run's own outcome stays its message. ``via``: a batch's export process
    (``labkit.runner.exporter.ExportServer``) does the work; without one, or when it fails, this process."""
    if not executed.is_file():
        return None, None, None
    views = via.export(executed, html_path, report) if via is not None else None
    (exported, export_error), (written, report_error) = views or export_both(executed, html_path, report)
    if export_error:
        log.warning("%s: html export failed: %s", executed, export_error)
    if report_error:
        log.warning("%s: report export failed: %s", executed, report_error)
    return exported, written, export_error


def snapshot_figures(folder: Path) -> dict[Path, tuple[int, int]]:
    """Figures in output_dir and its direct subfolders (output_dir/figures/x.png), with mtime and size."""
    found = {}
    for pattern in ("*", "*/*"):
        for path in folder.glob(pattern):
            if path.suffix.lower() in FIGURE_SUFFIXES and path.is_file():
                st = path.stat()
                found[path] = (st.st_mtime_ns, st.st_size)
    return found


def new_figures(folder: Path, before: dict[Path, tuple[int, int]]) -> list[Path]:
    """Figures the run wrote: new files, or files whose mtime or size changed."""
    return sorted(p for p, sig in snapshot_figures(folder).items() if before.get(p) != sig)
