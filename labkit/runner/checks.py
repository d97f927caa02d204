"""Checks before any run: the notebook file and its kernel, and the parameters papermill will inject.

Both fail before a kernel starts or an output file exists, so a bad notebook or value costs no run.
A notebook that cannot run raises :class:`~labkit.errors.RunError`; the runner knows notebooks, not pilots,
so the error names the notebook where a pilot's id would stand (``labkit.pipeline`` raises it again under
the pilot's id). A bad parameter is the caller's argument, not a run, and stays a plain LabkitError.
"""

from __future__ import annotations

import json
import keyword
import math
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from labkit.errors import RunError
from labkit.runner.lazy_iri import defer_iri_grammars


def check_notebook(path: Path, *, kernel_name: str = "python3") -> None:
    """Raise RunError unless ``path`` is a valid v4 notebook with a ``parameters`` cell that
    ``kernel_name`` (an installed kernel of the notebook's language) can run."""
    load_notebook(Path(path), kernel_name)


def load_notebook(path: Path, kernel_name: str):
    """The checks of check_notebook; returns (notebook node, kernel language)."""
    if not path.exists():
        raise RunError(str(path), "no such notebook")
    if not path.is_file():
        raise RunError(str(path), "not a notebook file (a directory or a special file)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise RunError(str(path), f"not a notebook: not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise RunError(str(path), f"cannot read the notebook: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunError(
            str(path), f"not a notebook: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("nbformat"), int):
        raise RunError(str(path), "not a notebook: JSON without an 'nbformat' version")

    defer_iri_grammars()  # nbformat imports jsonschema: ~1.8 s of CPU less (labkit.runner.lazy_iri)
    import nbformat

    try:
        node = nbformat.convert(nbformat.from_dict(data), 4)
        if node.get("nbformat_minor", 0) >= 5 and isinstance(node.get("cells"), list):
            for cell in node.cells:  # a missing id is repaired on read, not worth a warning here
                if isinstance(cell, dict) and "id" not in cell:
                    cell["id"] = uuid.uuid4().hex[:8]
        nbformat.validate(node)
    except Exception as e:  # ValidationError, NBFormatError, and whatever conversion of junk raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(str(path), f"not a valid nbformat v4 notebook: {first[:300]}") from None

    tagged = [
        i
        for i, cell in enumerate(node.cells)
        if cell.get("cell_type") == "code" and "parameters" in (cell.get("metadata", {}).get("tags") or [])
    ]
    if not tagged:
        raise RunError(
            str(path),
            "no code cell is tagged 'parameters'; without it papermill injects the values above "
            "the notebook's own defaults, which then silently overwrite them. Tag the cell that sets the defaults",
        )

    spec = _kernel_spec(path, kernel_name)
    language = (spec.language or "").lower()
    meta = node.metadata
    declared = (meta.get("kernelspec") or {}).get("language") or (meta.get("language_info") or {}).get("name")
    if declared and language and str(declared).lower() != language:
        raise RunError(
            str(path),
            f"the notebook is written in {declared} but kernel '{kernel_name}' runs {spec.language}",
        )
    return node, language or "python"


def _kernel_spec(path: Path, kernel_name: str):
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        return manager.get_kernel_spec(kernel_name)
    except NoSuchKernel:
        installed = ", ".join(sorted(manager.find_kernel_specs())) or "none"
        raise RunError(
            str(path),
            f"kernel '{kernel_name}' is not installed; installed kernels: {installed} "
            "(see `jupyter kernelspec list`)",
        ) from None


_HINTS = {
    "date": "pass it as an ISO string (value.isoformat())",
    "datetime": "pass it as an ISO string (value.isoformat())",
    "time": "pass it as an ISO string (value.isoformat())",
    "bytes": "decode it to a str first",
    "bytearray": "decode it to a str first",
    "tuple": "pass a list",
    "set": "pass a sorted list",
    "frozenset": "pass a sorted list",
    "Decimal": "pass a float or a str",
}


def check_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-clean copy of ``params``, or LabkitError naming the first bad name or value.

    Names must be Python identifiers and not keywords: papermill writes ``name = value`` without
    checking the name, so ``"x\\nimport os"`` would run code. Values may be str, int, float (finite),
    bool, None and lists / str-keyed dicts of them; subclasses of str, int and float (numpy.float64,
    IntEnum) are converted to the plain type. Anything else — dates, bytes, tuples, sets — is refused,
    because papermill would insert it as code or as a surprising string.
    """
    if not isinstance(params, Mapping):
        raise RunError(
            None, f"notebook parameters must be a mapping of names to values, not {type(params).__name__}"
        )
    clean: dict[str, Any] = {}
    for name, value in params.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise RunError(
                None,
                f"notebook parameter name {name!r} is not allowed; a name must be a Python identifier "
                "and not a keyword (letters, digits and _, not starting with a digit)",
            )
        clean[name] = _json_value(value, name, ())
    return clean


def _json_value(value: Any, where: str, seen: tuple[int, ...]) -> Any:
    if value is None or type(value) is bool:
        return value
    if isinstance(value, str):
        text = str.__str__(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RunError(
                None, f"notebook parameter {where}: not valid Unicode text (a lone surrogate)"
            ) from None
        return text
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RunError(
                None, f"notebook parameter {where}: {value!r} is not a JSON number; only finite floats"
            )
        return float(value)
    if isinstance(value, list | dict):
        if id(value) in seen:
            raise RunError(None, f"notebook parameter {where}: the value contains itself")
        inner = (*seen, id(value))
        if isinstance(value, list):
            return [_json_value(v, f"{where}[{i}]", inner) for i, v in enumerate(value)]
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise RunError(
                    None, f"notebook parameter {where}: dict key {key!r} is not a str; JSON keys are strings"
                )
            out[str.__str__(key)] = _json_value(v, f"{where}[{key!r}]", inner)
        return out
    kind = type(value).__name__
    hint = _HINTS.get(kind, "only str, int, float, bool, None and lists/dicts of them are allowed")
    raise RunError(None, f"notebook parameter {where}: a {kind} value is not allowed; {hint}")
