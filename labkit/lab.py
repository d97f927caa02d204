"""configs/lab.yaml: the lab's data sources, registries, tracking store and defaults.

Precedence is settled here once, for every command: command-line option > environment variable >
lab.yaml > built-in default. The environment overrides are ``LABKIT_TRACKING_URI`` (the MLflow store)
and ``LABKIT_LAB`` (the lab root, when ``--lab`` is not given).

Relative paths resolve against the lab root (the folder holding ``configs/``). Data files must resolve
inside the lab root, or inside ``data_root`` when the lab file names one (an absolute folder a lab may
keep its CRM extracts in); anything else is refused, so a pilot cannot make labkit read ``/etc/passwd``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote

from pydantic import Field

from labkit._validation import (
    COLUMN,
    NAME,
    Strict,
    bad_text,
    dates_misplaced,
    merge_problems,
    one_line_errors,
    read_yaml,
    unlocated,
    validate_doc,
)
from labkit.errors import SpecError, SpecErrors
from labkit.yamlfile import YamlDoc

LAB_FILE = Path("configs") / "lab.yaml"
FORMATS = ("csv", "parquet", "postgres", "spark")
MEMORY = re.compile(r"[1-9][0-9]*(\.[0-9]+)? ?(KB|MB|GB|TB|KiB|MiB|GiB|TiB)")


class SourceSpec(Strict):
    format: Literal["csv", "parquet", "postgres", "spark"]
    path: str | None = None  # csv / parquet / spark (a file or folder of the lab)
    url_env: str | None = None  # postgres: the environment variable holding the connection URL
    table: str | None = None  # postgres / spark table name
    timestamp: str | None = None  # event tables: the event time column


class Defaults(Strict):
    alpha: float = Field(0.05, gt=0, le=0.5)
    power: float = Field(0.8, gt=0, lt=1)
    engine: Literal["frequentist", "bayesian"] = "frequentist"
    correction: Literal["holm", "bh", "none"] = "holm"
    sequential: bool = False
    # Bayesian engine: normal prior on the relative lift, N(prior_mean, prior_sd^2).
    prior_mean: float = 0.0
    prior_sd: float = Field(0.3, gt=0)
    bootstrap_samples: int = Field(2000, ge=100, le=100_000)


class Privacy(Strict):
    pseudonymize: bool = True
    key_env: str = "LABKIT_ID_KEY"
    # Medians, maxima and other order statistics over fewer customers than this are suppressed.
    min_cell_size: int = Field(10, ge=1)


class Runner(Strict):
    timeout_seconds: int = Field(600, gt=0)  # per notebook cell
    workers: int | None = Field(None, gt=0)  # default: the number of cores + 2 (batch.default_workers)
    kernel: str = "python3"


class DuckDBSettings(Strict):
    # DuckDB's buffer pool for a lab of files: past it, joins and aggregates spill to results/.duckdb-tmp,
    # so an analysis's memory stays bounded whatever the number of customers (benchmarks/README.md).
    memory_limit: str = "1GB"


class LabSpec(Strict):
    lab: str
    tracking_uri: str = "sqlite:///results/mlflow.db"
    mlflow_experiment: str = "labkit-pilots"
    currency: str = "USD"
    data_root: str | None = None
    sources: dict[str, SourceSpec] = Field(default_factory=dict)
    functions: list[str] = Field(default_factory=lambda: ["sales", "marketing", "service", "pr"])
    channels: list[str] = Field(default_factory=list)
    stages: list[str] = Field(
        default_factory=lambda: [
            "acquisition",
            "onboarding",
            "service",
            "development",
            "retention",
            "winback",
        ]
    )
    defaults: Defaults = Field(default_factory=Defaults)
    privacy: Privacy = Field(default_factory=Privacy)
    runner: Runner = Field(default_factory=Runner)
    duckdb: DuckDBSettings = Field(default_factory=DuckDBSettings)
    notebook: str = "notebooks/pilot_analysis.ipynb"


@dataclass(frozen=True)
class Lab:
    """A loaded, validated lab: its root folder, file and settings."""

    root: Path
    path: Path
    spec: LabSpec
    doc: YamlDoc = field(repr=False)

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @property
    def experiments_dir(self) -> Path:
        return self.root / "experiments"

    @property
    def tracking_uri(self) -> str:
        """The MLflow store, with a sqlite path made absolute against the lab root (percent-encoded: see
        :func:`sqlite_uri`)."""
        uri = os.environ.get("LABKIT_TRACKING_URI") or self.spec.tracking_uri
        if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
            relative, query = (uri[len(SQLITE) :].split("?", 1) + [""])[:2]
            store = sqlite_uri((self.root / unquote(relative)).resolve())
            return f"{store}?{query}" if query else store
        return uri

    def source(self, name: str) -> SourceSpec:
        try:
            return self.spec.sources[name]
        except KeyError:
            allowed = ", ".join(self.spec.sources) or "none"
            message = f"unknown source '{name}'; the lab defines: {allowed}"
            raise unlocated(message, file=self.doc.path, field="sources") from None

    def source_path(self, name: str) -> Path:
        """The file of a file source, checked to lie inside the lab root or its data root."""
        spec = self.source(name)
        if spec.path is None:
            raise unlocated(f"source '{name}' has no path", file=self.doc.path, field=f"sources.{name}")
        try:
            return resolve_inside(self, spec.path, what=f"sources.{name}.path")
        except SpecError:  # checked when the lab was loaded; a symlink may have changed since
            loc = ("sources", name, "path")
            message = _outside(spec.path, self.root, self.spec.data_root)
            raise SpecErrors(
                [SpecError(self.doc.path, self.doc.line_of(loc), f"sources.{name}.path", message)]
            ) from None

    def display(self, path: Path) -> str:
        """A path as shown in messages: relative to the lab root when inside it."""
        try:
            return str(Path(path).resolve().relative_to(self.root))
        except ValueError:
            return str(path)


SQLITE = "sqlite:///"


def sqlite_uri(path: Path) -> str:
    """The ``sqlite:///`` URI of a store file. SQLAlchemy (and MLflow through it) ends the file's path at
    the first ``?`` and percent-decodes the rest, so the path is percent-encoded: a lab in ``lab?1`` kept its
    runs in a file ``lab`` beside it (shared with ``lab?2``), one in ``team%20a`` in ``team a``."""
    return SQLITE + quote(str(path), safe="/")


def sqlite_file(uri: str) -> Path | None:
    """The store file of a ``sqlite:///`` URI as SQLAlchemy reads it (the path before ``?``,
    percent-decoded), else None."""
    if not uri.startswith(SQLITE):
        return None
    return Path(unquote(uri[len(SQLITE) :].split("?", 1)[0]))


def resolve_inside(lab: Lab, relative: str, *, what: str) -> Path:
    """Resolve a path from a lab or pilot file, refusing anything outside the lab (or data) root."""
    roots = [lab.root]
    if lab.spec.data_root:
        roots.append(Path(lab.spec.data_root).resolve())
    candidate = Path(relative)
    target = (candidate if candidate.is_absolute() else lab.root / candidate).resolve()
    for root in roots:
        if target == root or root in target.parents:
            return target
    raise SpecError(what, None, "", f"'{relative}' lies outside the lab; paths must stay inside {lab.root}")


def _outside(relative: str, root: Path, data_root: str | None) -> str:
    allowed = f"the lab ({root})" + (f" or data_root ({Path(data_root).resolve()})" if data_root else "")
    hint = "" if data_root else "; a lab may name an absolute data_root folder for data kept elsewhere"
    return f"'{relative}' lies outside the lab; data files must be inside {allowed}{hint}"


def _source_paths_outside(spec: LabSpec, doc: YamlDoc, root: Path) -> list[SpecError]:
    """File sources whose path (symlinks followed) leaves the lab root and the data root."""
    roots = [root.resolve()]
    if spec.data_root:
        roots.append(Path(spec.data_root).resolve())
    errors = []
    for name, src in spec.sources.items():
        if not src.path:
            continue
        candidate = Path(src.path)
        try:
            target = (candidate if candidate.is_absolute() else root / candidate).resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
            target = None
        if target is None or not any(target == r or r in target.parents for r in roots):
            loc = ("sources", name, "path")
            message = _outside(src.path, root.resolve(), spec.data_root)
            errors.append(SpecError(doc.path, doc.line_of(loc), ".".join(loc), message))
    return errors


def find_root(start: Path | None = None, explicit: str | os.PathLike | None = None) -> Path:
    """The lab root: ``--lab``, else $LABKIT_LAB, else the nearest folder upward holding configs/lab.yaml."""
    chosen = explicit or os.environ.get("LABKIT_LAB")
    if chosen:
        root = Path(chosen).resolve()
        if root.is_file():  # --lab may name the lab file itself
            root = root.parent.parent
        if not (root / LAB_FILE).is_file():
            raise unlocated(f"no {LAB_FILE} under {root}", file=str(root / LAB_FILE))
        return root
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / LAB_FILE).is_file():
            return folder
    raise unlocated(
        f"no lab found: no {LAB_FILE} in {here} or above; run inside a lab or pass --lab PATH",
        file=str(LAB_FILE),
    )


def check_lab(spec: LabSpec, doc: YamlDoc) -> list[SpecError]:
    """Semantic checks over a lab file that pydantic's shape checks cannot express."""
    errors: list[SpecError] = []

    def err(loc: tuple, message: str) -> None:
        errors.append(SpecError(doc.path, doc.line_of(loc), ".".join(map(str, loc)), message))

    # fullmatch, not match: `$` also matches before a final newline, so match() lets "crm\n" through
    for key in ("lab", "mlflow_experiment", "currency", "notebook", "data_root"):
        value = getattr(spec, key)
        if isinstance(value, str) and _not_one_line(value):
            err((key,), _not_one_line(value))
    for name, src in spec.sources.items():
        loc = ("sources", name)
        if not NAME.fullmatch(name):
            err(loc, f"source name '{name}' must be lowercase letters, digits and _ (starting with a letter)")
        if isinstance(src.path, str) and _not_one_line(src.path):
            err((*loc, "path"), _not_one_line(src.path))
        if src.format in ("csv", "parquet") and not src.path:
            err(loc, f"a {src.format} source needs 'path'")
        if src.format == "postgres":
            if not src.url_env:
                err(loc, "a postgres source needs 'url_env', the environment variable holding its URL")
            if not src.table:
                err(loc, "a postgres source needs 'table'")
        if src.format == "spark" and not (src.path or src.table):
            err(loc, "a spark source needs 'path' or 'table'")
        for key in ("table", "timestamp"):
            value = getattr(src, key)
            if value is not None and not COLUMN.fullmatch(value):
                err((*loc, key), f"'{value}' is not a plain identifier (letters, digits, _)")
        if src.url_env is not None and not COLUMN.fullmatch(src.url_env):
            err((*loc, "url_env"), f"'{src.url_env}' is not an environment variable name")
    for key in ("functions", "channels", "stages"):
        values = getattr(spec, key)
        for i, value in enumerate(values):
            if not NAME.fullmatch(value):
                err((key, i), f"'{value}' must be lowercase letters, digits and _")
        if len(set(values)) != len(values):
            err((key,), "entries must be unique")
    if not MEMORY.fullmatch(spec.duckdb.memory_limit):
        err(
            ("duckdb", "memory_limit"),
            f"'{spec.duckdb.memory_limit}' is not an amount of memory; give a number and a unit, e.g. 512MB, "
            "1GB, 4GiB",
        )
    if not NAME.fullmatch(spec.privacy.key_env.lower()):
        err(("privacy", "key_env"), f"'{spec.privacy.key_env}' is not an environment variable name")
    if spec.data_root is not None and not Path(spec.data_root).is_absolute():
        err(
            ("data_root",), "data_root must be an absolute folder (relative paths already resolve in the lab)"
        )
    return errors


def _not_one_line(value: str) -> str | None:
    """Why a name, label or path of the lab file is refused (a line break, a control or bidi character), or
    None: these reach messages, MLflow, reports and file names, where such characters split or disguise."""
    if "\n" in value:
        return "contains a line break; one line of plain text only"
    return bad_text(value)


def parse_lab(path: Path, root: Path, display: str | None = None) -> tuple[Lab | None, list[SpecError]]:
    """Load and validate a lab file; every problem is returned, none raised."""
    doc, typing_problems = read_yaml(path, display)
    if typing_problems:
        dates = dates_misplaced(doc, set()) if doc is not None else []
        return None, one_line_errors(merge_problems(typing_problems, dates))
    spec, errors = validate_doc(LabSpec, doc, lambda view: check_lab(view, doc), set())
    if spec is not None and not errors:
        errors = _source_paths_outside(spec, doc, root)
    if errors:
        return None, one_line_errors(errors)
    return Lab(root=root.resolve(), path=path.resolve(), spec=spec, doc=doc), []


def load_lab(path: str | os.PathLike | None = None) -> Lab:
    """Load configs/lab.yaml: from ``path`` (the file or the lab folder), else found upward from the cwd."""
    if path is None:
        root = find_root()
        file = root / LAB_FILE
    else:
        p = Path(path)
        if p.is_dir():
            root, file = p, p / LAB_FILE
        else:
            file = p
            root = p.resolve().parent.parent if p.resolve().parent.name == "configs" else p.resolve().parent
    if not Path(file).is_file():
        raise SpecError(str(file), None, "", "no such lab file")
    lab, errors = parse_lab(Path(file), Path(root), display=_display(Path(file), Path(root)))
    if errors:
        raise SpecErrors(errors)
    return lab


def _display(file: Path, root: Path) -> str:
    try:
        return str(file.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        try:
            return str(file.resolve().relative_to(root.resolve()))
        except ValueError:
            return str(file)
