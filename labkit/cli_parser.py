"""`labkit`'s argument parser: every command, its options, help and example, from argparse alone.

`labkit --help` and a command's help answer from here without importing pydantic, PyYAML or rich
(tests/test_layers.py), so the parser imports nothing of labkit but what ``--version`` asks for.
"""

from __future__ import annotations

import argparse

EPILOG = {
    "validate": "example: labkit validate experiments/service-twitter-fast-reply.yaml",
    "new": "example: labkit new sales-linkedin-warm-intro --function sales --channel linkedin "
    "--metric outcomes.converted",
    "list": "example: labkit list",
    "plan": "example: labkit plan service-twitter-fast-reply",
    "assign": "example: labkit assign service-twitter-fast-reply",
    "analyze": "example: labkit analyze service-twitter-fast-reply --json  (also spelt: labkit analyse)",
    "run": "example: labkit run experiments/  (kernels are forked from one pre-imported process on Linux; "
    "LABKIT_WARM_KERNELS=0 starts each afresh)",
    "compare": "example: labkit compare --by function --format html > report.html",
    "ui": "example: labkit ui --port 5000",
    "demo": "example: labkit demo",
}


def build_parser() -> argparse.ArgumentParser:
    """The `labkit` parser; its sub-command names are the keys of ``labkit.cli_commands.COMMANDS``."""

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
    p.add_argument(
        "paths", nargs="*", metavar="PATH", help="files, folders or pilot ids (default: the lab's files)"
    )
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
    p.add_argument(
        "--over-time",
        action="store_true",
        help="also the primary metric's effect on each day since the start (an event metric's; JSON: "
        "over_time and over_time_interval; CSV: those rows)",
    )
    p = add("run", "execute each pilot's notebook with papermill and record the run in MLflow")
    p.add_argument(
        "pilots", nargs="*", metavar="PILOT", help="pilot files, ids or folders (default: every pilot)"
    )
    p.add_argument(
        "--workers", type=int, default=None, help="pilots in parallel (default: the number of cores + 2)"
    )
    p.add_argument(
        "--as-of",
        default=None,
        metavar="DATE",
        help="analyse as of this ISO date (a sequential look; a look back does not become the latest run)",
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
