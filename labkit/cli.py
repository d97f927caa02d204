"""The `labkit` command: a thin skin over the library. Every LabkitError becomes one message and exit 1.

The parser is ``labkit.cli_parser``, the command bodies ``labkit.cli_commands``; here is what every
command shares: arguments the file system cannot name refused first, pydantic's plugin scan skipped
while labkit's models are built, and each error mapped to one line and an exit code.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import gc
import os
import sys
from pathlib import Path

from labkit.cli_commands import COMMANDS
from labkit.cli_parser import build_parser
from labkit.errors import LabkitError, SpecError


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


ALIASES = {"analyse": "analyze"}  # British spelling: the same command
# Commands whose process ends holding a large heap (MLflow, SQLAlchemy, nbconvert, Ibis, the kernels'
# clients): the interpreter's exit skips collecting it (see _skip_final_collection).
LARGE_HEAP = {"run", "analyze"}  # analyze closes its engine (and DuckDB its spill folder) in a finally
_EXIT_FREEZE = []  # registered once per process


def _skip_final_collection() -> None:
    """Freeze the heap at exit, so that the interpreter's last garbage collections (run while it tears its
    modules down) skip it: after `labkit run` they took 1.2 s of a ~8 s command, against 0.08 s frozen
    (benchmarks/README.md, "Run and CLI overhead"). Everything that must happen at exit still does: atexit
    handlers (logging, temporary folders, MLflow), threads joined, streams flushed, objects freed by their
    reference counts; only cyclic garbage is left to the operating system, as Python never promised to
    finalize it at exit. Every file and store of a run is written and closed before `main` returns, and
    `labkit analyze` closes its engine in a ``finally`` (0.43 s of exit after `analyze --json` -> ~0.05 s)."""
    if not _EXIT_FREEZE:
        _EXIT_FREEZE.append(True)
        atexit.register(gc.freeze)  # last in, first out: handlers registered before it run after it


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    args.command = ALIASES.get(args.command, args.command)
    if args.command in LARGE_HEAP:
        _skip_final_collection()
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
    except Exception as exc:  # a query engine's Ctrl-C (labkit.data.backends.is_interrupt), else a bug
        from labkit.data.backends import is_interrupt

        if debug or not is_interrupt(exc):
            raise
        print("interrupted", file=sys.stderr)
        return 130


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
                raise SpecError(
                    label,
                    None,
                    "",
                    f"'{shorten(text)}' is too long for a file name ({longest:,} bytes in one part; "
                    f"the limit is {limit})",
                )


if __name__ == "__main__":
    sys.exit(main())
