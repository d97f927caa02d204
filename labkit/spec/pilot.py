"""A validated pilot bound to its lab: ``load_pilot``, its settings after the lab defaults, and its hashes.

``load_pilot`` reads a pilot through the strict YAML loader, validates its shape with pydantic and its
meaning against the lab (``labkit.spec.rules``), and returns a frozen ``Pilot`` whose ``settings``
already hold the lab defaults. Every problem of a file is reported in one pass.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from labkit._validation import (
    SLUG,
    display_path,
    merge_problems,
    one_line_errors,
    read_yaml,
    unlocated,
    validate_doc,
)
from labkit.errors import SpecError, SpecErrors
from labkit.lab import Lab, load_lab, resolve_inside
from labkit.spec.models import Metric, PilotSpec, arm_weights
from labkit.spec.rules import check_pilot, closest
from labkit.yamlfile import YamlDoc


@dataclass(frozen=True)
class Settings:
    """Analysis settings after lab defaults are applied."""

    alpha: float
    power: float
    engine: str
    sequential: bool
    correction: str
    prior_mean: float
    prior_sd: float
    bootstrap_samples: int


@dataclass(frozen=True)
class Pilot:
    """A validated pilot, bound to its lab."""

    spec: PilotSpec
    lab: Lab = field(repr=False)
    path: Path
    settings: Settings
    doc: YamlDoc = field(repr=False)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def salt(self) -> str:
        return self.spec.cohort.salt or self.spec.id

    @property
    def primary(self) -> Metric:
        return self.metric(self.spec.hypothesis.metric)

    def metric(self, name: str) -> Metric:
        return next(m for m in self.spec.metrics if m.name == name)

    @property
    def arms(self) -> dict[str, float]:
        """The arms (in the order written) with their weights normalised to sum to 1 (``arm_weights``): what
        the SRM check, planning and the analysis use, so ``{a: 1, b: 1, c: 1}`` means thirds everywhere (the
        draw uses the exact ``arm_weights``)."""
        return {arm: float(w) for arm, w in arm_weights(self.spec.cohort.arms).items()}

    @property
    def control(self) -> str:
        return self.spec.cohort.control

    @property
    def treatments(self) -> list[str]:
        return [a for a in self.spec.cohort.arms if a != self.spec.cohort.control]

    @property
    def results_dir(self) -> Path:
        return self.lab.results_dir / self.spec.id

    @property
    def cap(self) -> int | None:
        """``cohort.max_size``; an imported assignment without one is capped at the customers it holds
        (read from the written ``assignment.json``; None before `labkit assign`)."""
        c = self.spec.cohort
        if c.max_size is not None or c.assignment is None:
            return c.max_size
        value = self._assigned_meta().get("max_size")
        return int(value) if isinstance(value, int) else None

    @property
    def start(self) -> dt.date | None:
        """``cohort.start``; an imported assignment without one starts on its earliest ``assigned_at``
        (UTC date, from the written ``assignment.json``; None before `labkit assign`)."""
        c = self.spec.cohort
        if c.start is not None or c.assignment is None:
            return c.start
        value = self._assigned_meta().get("start")
        try:
            return dt.date.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            return None

    def _assigned_meta(self) -> dict:
        """The written assignment's metadata when it belongs to this cohort, else {} (never raises)."""
        try:
            meta = json.loads((self.results_dir / "assignment.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) and meta.get("cohort_sha256") == self.cohort_sha256 else {}

    @property
    def notebook_path(self) -> Path:
        return resolve_inside(self.lab, self.spec.notebook or self.lab.spec.notebook, what="notebook")

    @property
    def spec_sha256(self) -> str:
        """Hash of the whole spec's meaning: comments and formatting do not change it."""
        return _sha(_hashed(self.spec.model_dump(mode="json")))

    @property
    def prereg_sha256(self) -> str:
        """Hash of what pre-registration fixes: the hypothesis, the metrics, the cohort and the segments
        (``analysis.segments``, when given: a segment added after the first run changes the hash, so the
        run is flagged as a changed hypothesis and its segments read as exploratory)."""
        s = _hashed(self.spec.model_dump(mode="json"))
        s["hypothesis"].pop("baseline", None)  # a planning assumption: the analysis never reads it
        fixed = {k: s[k] for k in ("hypothesis", "metrics", "guardrails", "cohort")}
        segments = s.get("analysis", {}).get("segments")
        if segments is not None:  # left out while unset: the hash of a pilot without segments is unchanged
            fixed["segments"] = sorted(segments)  # a set of columns: their order means nothing
        return _sha(fixed)

    @property
    def cohort_sha256(self) -> str:
        """Hash of the cohort definition; an assignment drawn under another hash is stale."""
        return _sha(cohort_dump(self.spec.cohort))


#: Fields added to the pilot file after pilots were pre-registered and assigned, left out of the hashes while
#: unset: a labkit upgrade must not make every existing pilot look changed (pre-registration, `assign`).
_LATER_FIELDS = {
    "metric": {"missing": None},
    "assignment": {"arms": None, "strata": []},
    "hypothesis": {"baseline": None},
    "baseline": {"icc": None, "pilot": None},
    "cohort": {"unit_column": None, "max_clusters": None, "saturation": None},
    "analysis": {"segments": None},
}


def cohort_dump(cohort) -> dict:
    """The cohort section as its hash and the assignment's metadata see it (``model_dump(mode="json")``
    without the `_LATER_FIELDS` that hold their default), so an assignment drawn before a field existed is
    still current, and its metadata reads as it did."""
    return _hashed({"cohort": cohort.model_dump(mode="json")})["cohort"]


def _hashed(dump: dict) -> dict:
    """A spec dump (``model_dump(mode="json")``) without the `_LATER_FIELDS` that hold their default."""

    def drop(part, fields: dict):
        if isinstance(part, dict):
            for key, default in fields.items():
                if key in part and part[key] == default:
                    del part[key]

    for metric in dump.get("metrics") or []:
        drop(metric, _LATER_FIELDS["metric"])
    drop(dump.get("cohort"), _LATER_FIELDS["cohort"])
    drop((dump.get("cohort") or {}).get("assignment"), _LATER_FIELDS["assignment"])
    drop(dump.get("analysis"), _LATER_FIELDS["analysis"])
    drop((dump.get("hypothesis") or {}).get("baseline"), _LATER_FIELDS["baseline"])
    drop(dump.get("hypothesis"), _LATER_FIELDS["hypothesis"])
    return dump


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def parse_pilot(path: Path, lab: Lab, display: str | None = None) -> tuple[Pilot | None, list[SpecError]]:
    """Load and validate one pilot file; every problem is returned, none raised."""
    doc, typing_problems = read_yaml(path, display)
    if typing_problems:
        if doc is None:  # a syntax error, an anchor, a second document: nothing more can be read
            return None, one_line_errors(typing_problems)
        # YAML-typing problems (`title: no`) are reported together with every other problem of the file:
        # the rest is judged on the document as YAML 1.2 reads it, minus what those problems already flag
        rest = [e for e in _problems(doc, lab, path)[1] if not _same_spot(e, typing_problems)]
        return None, one_line_errors(merge_problems(typing_problems, rest))
    spec, errors = _problems(doc, lab, path)
    if errors:
        return None, one_line_errors(errors)
    d, a = lab.spec.defaults, spec.analysis
    settings = Settings(
        alpha=a.alpha if a.alpha is not None else d.alpha,
        power=a.power if a.power is not None else d.power,
        engine=a.engine or d.engine,
        sequential=a.sequential if a.sequential is not None else d.sequential,
        correction=a.correction or d.correction,
        prior_mean=d.prior_mean,
        prior_sd=d.prior_sd,
        bootstrap_samples=d.bootstrap_samples,
    )
    return Pilot(spec=spec, lab=lab, path=Path(path).resolve(), settings=settings, doc=doc), []


def _same_spot(error: SpecError, typing_problems: list[SpecError]) -> bool:
    """Whether a YAML-typing problem already names this spot: a key YAML 1.1 reads as something else
    (``on: true``) is flagged on its mapping's field, so the shape pass's "unknown field 'on'" on the same
    line says nothing more."""
    return any(
        error.line == y.line
        and (not y.field or error.field == y.field or error.field.startswith(y.field + "."))
        for y in typing_problems
    )


def _problems(doc: YamlDoc, lab: Lab, path) -> tuple[PilotSpec | None, list[SpecError]]:
    """The validated spec (None when it has problems) and every shape and meaning problem (none raised)."""
    stem = Path(path).stem
    return validate_doc(PilotSpec, doc, lambda view: check_pilot(view, doc, lab, stem), {("cohort", "start")})


def find_pilot_file(ref: str | os.PathLike, lab: Lab) -> Path:
    """``PILOT`` on the command line: a path to a pilot file, or a pilot id of the lab."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise SpecError(str(ref), None, "", "no such pilot file")
        return p
    if not SLUG.match(str(ref)):
        raise unlocated(f"'{ref}' is neither a pilot file nor a pilot id", file=str(ref))
    candidate = lab.experiments_dir / f"{ref}.yaml"
    if not candidate.is_file():
        known = sorted(q.stem for q in lab.experiments_dir.glob("*.yaml"))
        raise unlocated(
            f"no pilot '{ref}' in {lab.display(lab.experiments_dir)}; {closest(str(ref), known)}"
            f"pilots: {', '.join(known) or 'none'}",
            file=str(ref),
        )
    return candidate


def load_pilot(path: str | os.PathLike, lab: Lab | None = None) -> Pilot:
    """Load a pilot by path or id; raises SpecErrors listing every problem of the file."""
    lab = lab or load_lab()
    file = find_pilot_file(path, lab)
    pilot, errors = parse_pilot(file, lab, display=display_path(file))
    if errors:
        raise SpecErrors(errors)
    return pilot


def list_pilots(lab: Lab) -> list[Path]:
    return sorted(lab.experiments_dir.glob("*.yaml"))
