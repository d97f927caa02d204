"""`labkit validate`: every problem of every pilot and lab file, in one pass."""

from __future__ import annotations

from pathlib import Path

from labkit._validation import SLUG, display_path
from labkit.errors import LabkitError, SpecError
from labkit.lab import LAB_FILE, find_root, parse_lab
from labkit.spec import find_pilot_file, list_pilots, parse_pilot
from labkit.spec.rules import closest


def _is_lab_file(path: Path) -> bool:
    return path.name == "lab.yaml" and path.resolve().parent.name == "configs"


def _pilot_of_id(path: Path, lab) -> Path:
    """A PATH that does not exist may be a pilot id, as ``labkit run``, ``analyze`` and ``plan`` take one:
    its file in the lab's experiments folder; else the one line ``run`` gives (the closest id, the pilots)."""
    if lab is None or not SLUG.match(str(path)):
        raise SpecError(display_path(path), None, "", "no such file or folder")
    return find_pilot_file(str(path), lab)


def validate_paths(
    paths: list[Path], explicit_lab: str | None = None, data: bool = False
) -> tuple[list[SpecError], int]:
    """(problems sorted by file and line, number of files checked). Nothing is written. ``data``: also
    check each valid pilot against its sources' schemas (`data_problems`)."""
    start = paths[0].resolve() if paths else None
    if start is not None and start.is_file():
        start = start.parent
    root = find_root(start=start, explicit=explicit_lab)
    lab_file = root / LAB_FILE
    lab, lab_problems = parse_lab(lab_file, root, display=display_path(lab_file))
    problems: list[SpecError] = []

    pilots: list[Path] = []
    check_lab = not paths
    for path in paths or [root / "experiments"]:
        if not path.exists():
            try:
                pilots.append(_pilot_of_id(path, lab))
            except SpecError as exc:
                problems.append(exc)
        elif path.is_dir():
            if (path / LAB_FILE).is_file():
                check_lab = True
                pilots += sorted((path / "experiments").glob("*.yaml"))
            else:
                pilots += sorted(p for p in path.glob("*.y*ml") if not _is_lab_file(p))
                check_lab |= (path / "lab.yaml").is_file() and path.name == "configs"
        elif _is_lab_file(path):
            check_lab = True
        else:
            pilots.append(path)
    if not paths:
        pilots = list_pilots(lab) if lab else sorted((root / "experiments").glob("*.yaml"))
    if check_lab or lab is None:  # the lab's own problems show when it was asked for, or block the pilots
        problems += lab_problems
    if lab is None:
        for path in pilots:
            problems.append(
                SpecError(
                    display_path(path), None, "", "not checked: the lab file configs/lab.yaml has errors"
                )
            )
        return problems, len(pilots) + int(check_lab)
    ids: dict[str, Path] = {}
    for path in pilots:
        try:
            pilot, errors = parse_pilot(path, lab, display=display_path(path))
        except LabkitError as exc:  # unreadable file and the like
            errors, pilot = [SpecError(display_path(path), None, "", str(exc))], None
        problems += errors
        if pilot is not None:
            if pilot.id in ids and ids[pilot.id].resolve() != path.resolve():
                problems.append(
                    SpecError(
                        display_path(path),
                        1,
                        "id",
                        f"'{pilot.id}' is also the id of {display_path(ids[pilot.id])}",
                    )
                )
            ids.setdefault(pilot.id, path)
            if data:
                problems += data_problems(pilot)
    problems.sort(key=SpecError.sort_key)
    return problems, len(pilots) + int(check_lab)


def data_problems(pilot) -> list[SpecError]:
    """`labkit validate --data`: the pilot against its sources' schemas, without reading a row.

    Each column the pilot names must exist in its source (the cohort's id, filters and strata; each metric's
    columns, and the cohort's id column in every metric source, the join key), and its type must fit the
    use: numeric for mean, ratio and quantile values; boolean or numeric for a proportion (whether a
    numeric column holds only 0 and 1 needs its rows, so it is left to the analysis); a timestamp or date
    for an event source's time column (``sources.<name>.timestamp`` of the lab). A source that cannot be
    opened yet (no file) is one problem at the line that names it. The types are the schema's (Ibis over
    DuckDB: a Parquet footer, a CSV's sniffed header and sample), so a column that is numeric in the sample
    but text further down is caught by the analysis, not here."""
    from labkit.data.sources import Engine

    spec, doc = pilot.spec, pilot.doc
    problems: list[SpecError] = []
    schemas: dict[str, dict | None] = {}
    engine = Engine.for_lab(pilot.lab)

    def err(loc: tuple, message: str) -> None:
        problems.append(SpecError(doc.path, doc.line_of(loc), ".".join(map(str, loc)), message))

    def schema(name: str, loc: tuple):
        if name not in schemas:
            try:
                schemas[name] = dict(engine.table(name).schema().items())
            except Exception as exc:  # noqa: BLE001 -- any reader error is reported, one line
                schemas[name] = None
                why = (str(exc).splitlines() or [type(exc).__name__])[0].removeprefix(f"source '{name}': ")
                err(loc, f"source '{name}' cannot be read: {why}")
        return schemas[name]

    def check(
        name: str,
        column: str,
        loc: tuple,
        kind: str | None = None,
        src_loc: tuple | None = None,
        suggest: bool = False,
    ):
        have = schema(name, src_loc or loc)
        if have is None:
            return
        if column not in have:
            shown = ", ".join(have)
            hint = closest(column, have) if suggest else ""
            err(loc, f"no column '{column}' in source '{name}'; {hint}its columns: {shown}")
            return
        dtype = have[column]
        fits = {
            "numeric": dtype.is_numeric() or dtype.is_boolean(),
            "proportion": dtype.is_boolean() or dtype.is_numeric(),
            "time": dtype.is_timestamp() or dtype.is_date(),
            "cluster": dtype.is_string() or dtype.is_integer(),
        }
        if kind is not None and not fits[kind]:
            allowed = {"numeric": "a numeric column", "proportion": "a boolean or 0/1 numeric column",
                       "time": "a timestamp or date column", "cluster": "a text or integer column"}[kind]  # fmt: skip
            err(loc, f"column '{column}' of source '{name}' is {dtype}; allowed: {allowed}")

    try:
        c = spec.cohort
        check(c.source, c.id_column, ("cohort", "id_column"), src_loc=("cohort", "source"))
        for i, f in enumerate(c.where):
            check(c.source, f.column, ("cohort", "where", i, "column"), src_loc=("cohort", "source"))
        for i, col in enumerate(c.stratify_by):
            check(c.source, col, ("cohort", "stratify_by", i), src_loc=("cohort", "source"))
        # the cluster column and the segments are read from the cohort source (issue #16)
        design = [(("cohort", "unit_column"), c.unit_column, "cluster")]
        segments = spec.analysis.segments or []
        design += [(("analysis", "segments", i), col, None) for i, col in enumerate(segments)]
        for loc, col, kind in design:
            if col is not None:
                check(c.source, col, loc, kind, src_loc=("cohort", "source"), suggest=True)
        for i, m in enumerate(spec.metrics):
            here = ("metrics", i)
            value_kind = "proportion" if m.type == "proportion" else "numeric"
            if m.source is not None:
                check(m.source, c.id_column, (*here, "source"))
            if m.event is not None and m.source is not None:
                check(m.source, m.event.column, (*here, "event", "column"), src_loc=(*here, "source"))
                ts = pilot.lab.source(m.source).timestamp
                if ts:
                    check(m.source, ts, (*here, "window_days"), "time", src_loc=(*here, "source"))
                if m.column is not None:
                    check(m.source, m.column, (*here, "column"), "numeric", src_loc=(*here, "source"))
            elif m.column is not None and m.source is not None:
                check(m.source, m.column, (*here, "column"), value_kind, src_loc=(*here, "source"))
            for part in ("numerator", "denominator"):
                ref = getattr(m, part)
                if ref is not None:
                    check(
                        ref.source,
                        ref.column,
                        (*here, part, "column"),
                        "numeric",
                        src_loc=(*here, part, "source"),
                    )
    finally:
        engine.close()
    return problems
