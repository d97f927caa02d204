"""The bodies of `labkit`'s commands: each reads the lab, calls the library and renders its result.

A body is a skin: load, call, render. Heavy modules (the engine, MLflow, papermill, rich) are imported
inside the command that needs them, so `labkit validate` and `labkit list` stay light. Problems are
raised as ``labkit.errors`` classes; ``labkit.cli.main`` prints each as one line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from labkit.errors import AssignmentError, SpecError


def _lab(args):
    from labkit.lab import find_root, load_lab

    return load_lab(find_root(explicit=args.lab))


def cmd_validate(args) -> int:
    from labkit.validate import validate_paths

    problems, checked = validate_paths([Path(p) for p in args.paths], explicit_lab=args.lab, data=args.data)
    for problem in problems:
        print(problem.message, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {checked} file(s)", file=sys.stderr)
        return 1
    print(f"ok: {checked} file(s) valid")
    return 0


def cmd_new(args) -> int:
    from labkit.scaffold import new_pilot

    lab = _lab(args)
    options = ("function", "channel", "stage", "owner", "source", "metric", "kind")
    path = new_pilot(lab, args.id, **{name: getattr(args, name) for name in options})
    print(
        f"wrote {lab.display(path)}; edit the hypothesis, cohort and metrics, then: labkit validate {lab.display(path)}"
    )
    if args.metric is None:
        print(
            "its metric column 'converted' is a placeholder: name yours with --metric [SOURCE.]COLUMN "
            "(the file lists the columns of the lab's sources)"
        )
    return 0


def cmd_list(args) -> int:
    from labkit.listing import pilot_rows, render_rows

    lab = _lab(args)
    rows, problems = pilot_rows(lab)
    fmt = _format(args)
    if fmt == "table":
        render_rows(rows)
    else:
        from labkit.render import print_csv, print_json

        if fmt == "json":
            print_json({"pilots": rows})
        else:
            print_csv(rows)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def _format(args) -> str:
    """--format, with --json kept as its alias (scripts written before --format keep working)."""
    return "json" if getattr(args, "json", False) else getattr(args, "format", "table")


def _pilot(args):
    from labkit.spec import load_pilot

    lab = _lab(args)
    return load_pilot(args.pilot, lab=lab)


def cmd_plan(args) -> int:
    from labkit.listing import record_plan
    from labkit.planning import plan
    from labkit.render import print_json, render_plan

    pilot = _pilot(args)
    result = plan(pilot)
    record_plan(pilot, result.to_dict())
    fmt = _format(args)
    if fmt == "json":
        print_json(result.to_dict())
    elif fmt == "csv":
        from labkit.render import plan_rows, print_csv

        print_csv(plan_rows(pilot.id, result.to_dict()))
    else:
        render_plan(result)
    return 0


def cmd_assign(args) -> int:
    from labkit.assignment import assign
    from labkit.render import render_assignment

    pilot = _pilot(args)
    kept = not args.force and (pilot.results_dir / "assignment.parquet").is_file()
    try:
        result = assign(pilot, force=args.force)
    except OSError as exc:  # a full or read-only disk: assign removed its temporary files and wrote nothing
        folder = pilot.lab.display(pilot.results_dir)
        raise AssignmentError(
            pilot.id, f"cannot write the assignment in {folder}: {exc.strerror or exc}; nothing was written"
        ) from None
    if kept:  # assign never redraws silently: say that nothing was drawn, and which file stands
        from labkit.render import terminal_console

        drawn = str(result.meta.get("created_at") or "?")[:10]
        terminal_console().print(  # wrapped at spaces on a terminal: no number or path is cut
            f"{pilot.id}: kept the existing assignment {pilot.lab.display(result.path)} (drawn {drawn}, "
            f"{result.assigned:,} customers); `labkit assign {pilot.id} --force` archives it and draws anew",
            markup=False,
            highlight=False,
        )
        return 0
    render_assignment(pilot, result)
    return 0


def cmd_analyze(args) -> int:
    """Before the start or while the outcome window is open there is no verdict to give: one line (or, with
    --json, ``{"pilot", "status", "detail", ..., "decision": null}`` — ``labkit.listing.Status.to_dict``
    plus a null decision) and exit 0, instead of an `invalid` verdict on data that does not exist yet."""
    from labkit.analysis import analyze
    from labkit.listing import pilot_status
    from labkit.render import render_analysis

    pilot = _pilot(args)
    status = pilot_status(pilot)
    fmt = _format(args)
    if status.status in ("assigned", "running"):
        if fmt == "table":
            print(f"{pilot.id}: {status.line}")
        else:
            _print_data(status.to_dict(), fmt)
        return 0
    asked = getattr(args, "over_time", False)
    result = analyze(pilot, over_time=asked)
    if fmt == "table":
        render_analysis(result)
    elif asked and fmt == "csv" and result.over_time.note is None:  # the curve: one row per day and arm
        from labkit.render import print_csv

        print_csv([{"pilot": pilot.id, **row} for row in result.over_time.rows])
    else:
        _print_data(result.to_dict(), fmt)
    if asked:
        _print_over_time(result.over_time, fmt)
    return 0


def _print_over_time(block, fmt: str) -> None:
    """The per-day table below the analysis; with --json or --format csv only the line saying there is no
    over-time, on stderr (stdout stays the data)."""
    from labkit.over_time import over_time_lines

    if fmt == "table":
        print("\n" + "\n".join(over_time_lines(block)))
    elif block.note is not None:
        print(block.note, file=sys.stderr)


def _print_data(data: dict, fmt: str) -> None:
    """An analysis (or the status that stands in for it) as JSON, or as CSV one row per metric and arm."""
    from labkit.render import analysis_rows, print_csv, print_json

    if fmt == "json":
        print_json(data)
    else:
        print_csv(analysis_rows(data))


def _check_run_args(args) -> None:
    """`labkit run`'s options, checked before a kernel starts or a run is created (RELIABILITY.md case 43):
    a bad one found later would leave a FAILED run behind for a typo."""
    from labkit.yamlfile import shorten

    if args.workers is not None and args.workers < 1:
        raise SpecError(
            "--workers",
            None,
            "",
            f"{args.workers} is not allowed; give a whole number of 1 or more (default: the number of cores + 2)",
        )
    if args.as_of:
        import datetime as dt

        try:
            dt.datetime.fromisoformat(args.as_of)  # what the analysis accepts (labkit.analysis._as_of)
        except ValueError:
            raise SpecError(
                "--as-of",
                None,
                "",
                f"'{shorten(args.as_of)}' is not an ISO date (YYYY-MM-DD, e.g. 2026-11-15)",
            ) from None


def cmd_run(args) -> int:
    from labkit.pipeline import record_only, render_outcomes, resolve_pilots, run_batch

    _check_run_args(args)
    lab = _lab(args)
    pilots = resolve_pilots(lab, args.pilots)
    if args.record_only:
        outcomes = record_only(lab, pilots)
        if not outcomes:
            print("nothing to record: every kept run is in MLflow already")
            return 0
        render_outcomes(outcomes)
        return 0
    if not args.as_of:
        pilots = _started_of_folders(lab, args.pilots, pilots)
        if not pilots:
            return 0
    outcomes, code = run_batch(lab, pilots, workers=args.workers, as_of=args.as_of, track=not args.no_track)
    render_outcomes(outcomes)
    return code


def _started_of_folders(lab, refs: list[str], pilots: list) -> list:
    """The pilots to run: run over a folder (`labkit run`, `labkit run experiments/`), a pilot that has not
    started yet is left out with one line saying when it starts — a lab's weekly run goes on while next month's
    pilot waits; named, it is refused (the batch's preflight, ``labkit.listing.not_started``)."""
    from pathlib import Path

    from labkit.listing import not_started

    if refs and not all(Path(ref).is_dir() for ref in refs):
        return pilots
    waiting = [p for p in pilots if not_started(p)]
    for pilot in waiting:
        print(
            f"{pilot.id}: not run: it starts {pilot.start.isoformat()} (UTC); nothing of it has happened yet"
        )
    if waiting and len(waiting) == len(pilots):
        where = ", ".join(refs) or lab.display(lab.experiments_dir)
        print(f"no pilot in {where} has started yet: nothing to run")
    left = {p.id for p in waiting}
    return [p for p in pilots if p.id not in left]


def cmd_ui(args) -> int:
    from labkit.ui import serve

    return serve(_lab(args), host=args.host, port=args.port)


def _check_output(output: str | None) -> None:
    """``--output`` must name a file: a folder (or a file inside a file) is refused before the report is
    built or anything is recorded."""
    if output is None:
        return
    path = Path(output)
    if output.endswith(("/", os.sep)) or path.is_dir():
        raise SpecError(
            "--output", None, "", f"{output} is a folder; give a file name, e.g. {path / 'report.html'}"
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise SpecError("--output", None, "", f"{parent} is a file, not a folder; give another path")
            break


def cmd_compare(args) -> int:
    from labkit.compare import portfolio
    from labkit.report import log_portfolio, render, render_table, to_html, write_output

    _check_output(args.output)
    lab = _lab(args)
    result = portfolio(lab, by=args.by, function=args.function, since=args.since, decision=args.decision)
    text = (
        None
        if args.format == "table" and not args.output
        else render(result, args.format, output=args.output)
    )
    if args.output:
        try:
            written = write_output(text, args.output)
        except OSError as exc:
            raise SpecError(
                "--output", None, "", f"cannot write {args.output}: {exc.strerror or exc}"
            ) from None
        print(f"wrote {written}", file=sys.stderr)
    elif text is None:
        render_table(result)
    else:
        sys.stdout.write(text)
    if args.log:
        run_id = log_portfolio(lab, result, text if args.format == "html" else to_html(result))
        print(
            f"logged the report as portfolio run {run_id} in experiment '{lab.spec.mlflow_experiment}'",
            file=sys.stderr,
        )
    return 0


def cmd_demo(args) -> int:
    from labkit.demo.run import run_demo

    return run_demo(_lab(args), seed=args.seed)


COMMANDS = {
    "validate": cmd_validate,
    "new": cmd_new,
    "list": cmd_list,
    "plan": cmd_plan,
    "assign": cmd_assign,
    "analyze": cmd_analyze,
    "analyse": cmd_analyze,  # an alias (ALIASES): the same command, spelt the British way
    "run": cmd_run,
    "ui": cmd_ui,
    "compare": cmd_compare,
    "demo": cmd_demo,
}
