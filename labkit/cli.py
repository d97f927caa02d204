"""The `labkit` command: a thin skin over the library. Every LabkitError becomes one message and exit 1."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from pathlib import Path

from labkit.errors import LabkitError

EPILOG = {
    "validate": "example: labkit validate experiments/service-twitter-fast-reply.yaml",
    "new": "example: labkit new sales-linkedin-warm-intro --function sales --channel linkedin "
    "--metric outcomes.converted",
    "list": "example: labkit list",
    "plan": "example: labkit plan service-twitter-fast-reply",
    "assign": "example: labkit assign service-twitter-fast-reply",
    "analyze": "example: labkit analyze service-twitter-fast-reply --json  (also spelt: labkit analyse)",
    "run": "example: labkit run experiments/",
    "compare": "example: labkit compare --by function --format html > report.html",
    "ui": "example: labkit ui --port 5000",
    "demo": "example: labkit demo",
}


def _parser() -> argparse.ArgumentParser:
    def common(default):
        # Sub-commands accept the global options too; SUPPRESS keeps their absence from overriding them.
        p = argparse.ArgumentParser(add_help=False)
        p.add_argument(
            "--lab",
            metavar="PATH",
            default=default or None,
            help="the lab folder (default: found upward from here)",
        )
        p.add_argument("--debug", action="store_true", default=default or False, help="show tracebacks")
        return p

    parser = argparse.ArgumentParser(
        prog="labkit",
        description="labkit: plan, assign, analyse, record and compare social-engagement pilots.",
        epilog="example: labkit validate && labkit plan service-twitter-fast-reply",
        parents=[common(None)],
    )
    parser.add_argument("--version", action=_Version, help="print labkit's version and exit")
    sub_common = common(argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help: str, aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=EPILOG[name],
            parents=[sub_common],
            aliases=list(aliases),
        )

    p = add("validate", "check pilot and lab files; every problem as file:line: field: message")
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or folders (default: the lab's)")
    p.add_argument(
        "--data",
        action="store_true",
        help="also check each pilot against its sources' schemas (columns exist, types fit); no row is read",
    )
    p = add("new", "write a commented pilot file that validates as written")
    p.add_argument("id", help="the pilot id, a slug: lowercase letters, digits and dashes")
    p.add_argument("--function", required=True, help="sales, marketing, service, pr (the lab's registry)")
    p.add_argument("--channel", required=True, help="a channel of the lab's registry")
    p.add_argument("--stage", default=None, help="a lifecycle stage (default: the lab's first)")
    p.add_argument("--owner", default="lab-team@example.com", help="who answers for the pilot")
    p.add_argument(
        "--source", default=None, help="the cohort's per-customer source (default: the lab's first)"
    )
    p.add_argument(
        "--metric",
        default=None,
        metavar="[SOURCE.]COLUMN",
        help="the primary metric's per-customer column, checked against the source's columns",
    )
    p.add_argument(
        "--type", dest="kind", choices=("proportion", "mean"), default="proportion", help="the metric's type"
    )
    p = add("list", "the pilots with function, channel, stage, owner, status and latest decision")
    p.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output (default: table)"
    )
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p = add("plan", "power analysis: customers needed per arm for the MDE, and the MDE reachable at the cap")
    p.add_argument("pilot", metavar="PILOT", help="a pilot file or a pilot id of the lab")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (--format json)")
    p.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output (default: table)"
    )
    p = add("assign", "draw the cohort and assign arms; written once, never silently redrawn")
    p.add_argument("pilot", metavar="PILOT", help="a pilot file or a pilot id of the lab")
    p.add_argument("--force", action="store_true", help="redraw; the old assignment is archived beside it")
    p = add(
        "analyze",
        "the statistics alone (no notebook, no tracking): a table, or the JSON contract; before the outcome "
        "window closes, the pilot's status in one line",
        aliases=("analyse",),
    )
    p.add_argument("pilot", metavar="PILOT", help="a pilot file or a pilot id of the lab")
    p.add_argument("--json", action="store_true", help="print the JSON contract of DESIGN.md (--format json)")
    p.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output (default: table)"
    )
    p = add("run", "execute each pilot's notebook with papermill and record the run in MLflow")
    p.add_argument(
        "pilots", nargs="*", metavar="PILOT", help="pilot files, ids or folders (default: every pilot)"
    )
    p.add_argument(
        "--workers", type=int, default=None, help="pilots in parallel (default: the number of cores)"
    )
    p.add_argument(
        "--as-of", default=None, metavar="DATE", help="analyse as of this ISO date (a sequential look)"
    )
    p.add_argument(
        "--record-only",
        action="store_true",
        help="record kept runs that MLflow does not hold yet (after the tracking server was down)",
    )
    p.add_argument("--no-track", action="store_true", help="run the notebooks without recording in MLflow")
    p = add("ui", "start the MLflow UI on the lab's store (127.0.0.1 unless told otherwise)")
    p.add_argument(
        "--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=5000)
    p = add("compare", "the leadership view: the latest run of every pilot, by function, channel or stage")
    p.add_argument(
        "--by",
        choices=("function", "channel", "stage"),
        default="function",
        help="grouping (default: function)",
    )
    p.add_argument(
        "--format", choices=("table", "json", "csv", "html"), default="table", help="output (default: table)"
    )
    p.add_argument("--function", default=None, help="only pilots of this function")
    p.add_argument(
        "--since",
        default=None,
        metavar="DATE",
        help="only pilots whose latest run started on or after this ISO date (UTC)",
    )
    p.add_argument(
        "--decision",
        default=None,
        help="only pilots with this decision: ship, harm, no-effect, inconclusive, invalid",
    )
    p.add_argument("--output", default=None, metavar="FILE", help="write the report to FILE, not stdout")
    p.add_argument("--log", action="store_true", help="record the HTML report in MLflow too (portfolio run)")
    p = add("demo", "build the demo lab's synthetic CRM and take every demo pilot through the workflow")
    p.add_argument("--seed", type=int, default=None, help="the synthetic CRM's seed (default: fixed)")
    return parser


@contextlib.contextmanager
def _without_pydantic_plugins():
    """Build labkit's spec models without pydantic's plugin discovery.

    pydantic looks for plugins (``importlib.metadata`` entry points) when it builds its first model: a scan
    of every installed distribution, 0.1-0.2 s in an environment holding MLflow and Spark — a third of
    `labkit validate`. labkit's own models need no plugin, so the scan is skipped while they are built and
    the environment is restored at once: models built later (MLflow's, a notebook's) see plugins as usual,
    and an explicit ``PYDANTIC_DISABLE_PLUGINS`` is respected.
    """
    key = "PYDANTIC_DISABLE_PLUGINS"
    if key in os.environ:
        yield
        return
    os.environ[key] = "__all__"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _version() -> str:
    """The installed distribution's version, else the package's own (a source checkout)."""
    from importlib import metadata

    try:
        return metadata.version("labkit")
    except metadata.PackageNotFoundError:
        from labkit import __version__

        return __version__


class _Version(argparse.Action):
    """``--version``: the version is looked up only when asked (importlib.metadata is not free)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"labkit {_version()}")
        parser.exit()


ALIASES = {"analyse": "analyze"}  # British spelling: the same command


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    args.command = ALIASES.get(args.command, args.command)
    debug = args.debug or os.environ.get("LABKIT_DEBUG") == "1"
    try:
        with _without_pydantic_plugins():
            _check_names(args)  # imports labkit._validation, whose import builds pydantic models
            import labkit.spec  # noqa: F401 - every command reads the lab; its models are built here
        return COMMANDS[args.command](args) or 0
    except LabkitError as exc:
        if debug:
            raise
        print(_capped(str(exc)), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # A full or read-only disk is the machine's state, not a bug: one line, whichever command met it.
        if debug or exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        # the folder, not the file: the file is often a temporary one, removed by now
        where = (
            f"cannot write in {_shown_path(Path(os.fsdecode(exc.filename)).parent)}: " if exc.filename else ""
        )
        print(_capped(f"labkit {args.command}: {where}{exc.strerror}"), file=sys.stderr)
        return 1


MAX_ERROR_LINE = 1_000  # characters; past it a line of an error is cut (see _capped)


def _capped(message: str) -> str:
    """An error's lines, each cut to MAX_ERROR_LINE characters with its length shown: the last guard for a
    message quoting a value the user gave (a column name, an argument) that may be many kilobytes long."""
    from labkit.yamlfile import shorten

    lines = message.split("\n")
    return "\n".join(line if len(line) <= MAX_ERROR_LINE else shorten(line, MAX_ERROR_LINE) for line in lines)


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _name_max() -> int:
    try:
        return os.pathconf(".", "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


# argument -> (how a message names it, whether it may be a pilot id that becomes the file ``<id>.yaml``)
_PATH_ARGUMENTS = {
    "lab": ("--lab", False),
    "paths": ("PATH", False),
    "pilot": ("PILOT", True),
    "pilots": ("PILOT", True),
    "id": ("the pilot id", True),
    "output": ("--output", False),
}


def _check_names(args) -> None:
    """Refuse, in one line and before anything is read or created, a path argument the file system cannot
    name: one part longer than NAME_MAX bytes (255 on Linux) makes ``Path.exists()`` raise ENAMETOOLONG. A
    pilot id counts with the ``.yaml`` it becomes."""
    from labkit._validation import SLUG
    from labkit.yamlfile import shorten

    limit = _name_max()
    for attribute, (label, is_id) in _PATH_ARGUMENTS.items():
        value = getattr(args, attribute, None)
        for text in [value] if isinstance(value, str) else value or []:
            names = [text, f"{text}.yaml"] if is_id and SLUG.match(text) else [text]
            longest = max(len(part) for name in names for part in os.fsencode(name).split(b"/"))
            if longest > limit:
                raise LabkitError(
                    f"{label}: '{shorten(text)}' is too long for a file name ({longest:,} bytes in one part; "
                    f"the limit is {limit})"
                )


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
    path = new_pilot(
        lab,
        args.id,
        function=args.function,
        channel=args.channel,
        stage=args.stage,
        owner=args.owner,
        source=args.source,
        metric=args.metric,
        kind=args.kind,
    )
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
    from labkit.planning import plan
    from labkit.render import print_json, render_plan

    pilot = _pilot(args)
    result = plan(pilot)
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
        raise LabkitError(
            f"{pilot.id}: cannot write the assignment in {folder}: {exc.strerror or exc}; nothing was written"
        ) from None
    if kept:  # assign never redraws silently: say that nothing was drawn, and which file stands
        drawn = str(result.meta.get("created_at") or "?")[:10]
        print(
            f"{pilot.id}: kept the existing assignment {pilot.lab.display(result.path)} (drawn {drawn}, "
            f"{result.assigned:,} customers); `labkit assign {pilot.id} --force` archives it and draws anew"
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
    result = analyze(pilot)
    if fmt != "table":
        _print_data(result.to_dict(), fmt)
    else:
        render_analysis(result)
    return 0


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
        raise LabkitError(
            f"--workers: {args.workers} is not allowed; give a whole number of 1 or more "
            "(default: the number of cores)"
        )
    if args.as_of:
        import datetime as dt

        try:
            dt.datetime.fromisoformat(args.as_of)  # what the analysis accepts (labkit.analysis._as_of)
        except ValueError:
            raise LabkitError(
                f"--as-of: '{shorten(args.as_of)}' is not an ISO date (YYYY-MM-DD, e.g. 2026-11-15)"
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
    outcomes, code = run_batch(lab, pilots, workers=args.workers, as_of=args.as_of, track=not args.no_track)
    render_outcomes(outcomes)
    return code


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
        raise LabkitError(f"--output: {output} is a folder; give a file name, e.g. {path / 'report.html'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LabkitError(f"--output: {parent} is a file, not a folder; give another path")
            break


def cmd_compare(args) -> int:
    from labkit.compare import portfolio
    from labkit.report import log_portfolio, render, render_table, to_html, write_output

    _check_output(args.output)
    lab = _lab(args)
    result = portfolio(lab, by=args.by, function=args.function, since=args.since, decision=args.decision)
    text = None if args.format == "table" and not args.output else render(result, args.format, output=args.output)
    if args.output:
        try:
            written = write_output(text, args.output)
        except OSError as exc:
            raise LabkitError(f"--output: cannot write {args.output}: {exc.strerror or exc}") from None
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
    from labkit.demo_run import run_demo

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

if __name__ == "__main__":
    sys.exit(main())
