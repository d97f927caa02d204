"""`labkit validate`: every problem of every pilot and lab file, in one pass."""

from __future__ import annotations

from pathlib import Path

from labkit.errors import LabkitError, SpecError
from labkit.lab import LAB_FILE, find_root, parse_lab
from labkit.spec import list_pilots, parse_pilot


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _is_lab_file(path: Path) -> bool:
    return path.name == "lab.yaml" and path.resolve().parent.name == "configs"


def validate_paths(paths: list[Path], explicit_lab: str | None = None) -> tuple[list[SpecError], int]:
    """(problems sorted by file and line, number of files checked). Nothing is written."""
    start = paths[0].resolve() if paths else None
    if start is not None and start.is_file():
        start = start.parent
    root = find_root(start=start, explicit=explicit_lab)
    lab_file = root / LAB_FILE
    lab, lab_problems = parse_lab(lab_file, root, display=_shown(lab_file))
    problems: list[SpecError] = []

    pilots: list[Path] = []
    check_lab = not paths
    for path in paths or [root / "experiments"]:
        if not path.exists():
            problems.append(SpecError(_shown(path), None, "", "no such file or folder"))
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
                SpecError(_shown(path), None, "", "not checked: the lab file configs/lab.yaml has errors")
            )
        return problems, len(pilots) + int(check_lab)
    ids: dict[str, Path] = {}
    for path in pilots:
        try:
            pilot, errors = parse_pilot(path, lab, display=_shown(path))
        except LabkitError as exc:  # unreadable file and the like
            errors, pilot = [SpecError(_shown(path), None, "", str(exc))], None
        problems += errors
        if pilot is not None:
            if pilot.id in ids and ids[pilot.id].resolve() != path.resolve():
                problems.append(
                    SpecError(
                        _shown(path), 1, "id", f"'{pilot.id}' is also the id of {_shown(ids[pilot.id])}"
                    )
                )
            ids.setdefault(pilot.id, path)
    problems.sort(key=SpecError.sort_key)
    return problems, len(pilots) + int(check_lab)
