"""`labkit new`: a commented pilot file that validates, and plans, as written, for the lab team to fill in.

The scaffold names only columns the lab's sources have, where their schemas can be read (no row is read):
the cohort's id column (``customer_id``, else the first ``*_id`` column), a consent filter only if the
cohort source has ``consent_contact``, and the primary metric's column given by ``--metric [SOURCE.]COLUMN``
(checked against that source's columns; a bare COLUMN is looked up in the per-customer sources, the
cohort's first). Each source's columns are listed in the file's comments, so the team picks from what
exists. Without ``--metric`` the metric column is the placeholder ``converted``, and the command says so.
``hypothesis.baseline`` holds a placeholder assumption (a 10 % rate, or mean 1 and sd 1), so that
`labkit plan` sizes the pilot before any outcome data exists; replace it with the team's own estimate.
A source whose file does not exist yet offers no columns: then the names are taken as given.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

from labkit._validation import COLUMN, NAME, SLUG, did_you_mean, unlocated
from labkit.errors import LabkitError, SpecError, SpecErrors
from labkit.lab import Lab
from labkit.spec import parse_pilot

TEMPLATE = """\
# Pilot {id}: one channel, one hypothesis, a capped cohort. See DESIGN.md, "The pilot file".
id: {id}                      # equals the file name
title: "Describe the pilot in one line"
function: {function}          # {functions}
channel: {channel}            # {channels}
stage: {stage}                # {stages}
owner: {owner}

hypothesis:
  statement: "What the channel changes, for whom, and by how much."
  metric: {metric}             # the primary metric, a name from metrics below
  direction: increase          # increase | decrease: what the hypothesis predicts
  mde: {{relative: 0.10}}        # the smallest effect worth acting on: {{relative: x}} or {{absolute: x}}
  baseline: {baseline}  # an assumption for planning before data: replace it

cohort:
  source: {source}             # a data source of configs/lab.yaml
  id_column: {id_column}
  # eligibility: column, op (== != < <= > >= in not_in is_null not_null), value
{where}  max_size: 2000               # exposure cap: at most this many customers enter the pilot
  arms: {{control: 0.5, treatment: 0.5}}
  control: control
  start: {start}               # assignment date; event windows count from here

metrics:
  - name: {metric}
    type: {kind}           # proportion | mean | ratio | quantile
    source: {metric_source}
    column: {column}           # {column_note}
{offered}
analysis: {{}}                   # alpha, power, engine, sequential, correction default from the lab

budget:
  cost: 1000                   # what the pilot costs, in {currency}
  value_per_unit: 100          # value of a one-unit change of the primary metric per customer
"""


PLACEHOLDER = "converted"


def new_pilot(
    lab: Lab,
    pilot_id: str,
    *,
    function: str,
    channel: str,
    stage: str | None,
    owner: str,
    source: str | None = None,
    metric: str | None = None,
    kind: str = "proportion",
) -> Path:
    """Write experiments/<id>.yaml atomically after checking that it validates; never overwrites."""
    if not SLUG.match(pilot_id):
        raise unlocated(
            f"'{pilot_id}' is not a slug; use lowercase letters, digits and single dashes", field="id"
        )
    per_customer = [name for name, s in lab.spec.sources.items() if s.timestamp is None]
    if not per_customer:
        message = "the lab file defines no per-customer source to draw a cohort from"
        raise unlocated(message, file=lab.doc.path, field="sources")
    if source is not None and source not in per_customer:
        raise SpecError(
            "--source",
            None,
            "",
            f"'{source}' is not a per-customer source of the lab; {did_you_mean(source, per_customer)}"
            f"allowed: {', '.join(per_customer)}",
        )
    cohort = source or per_customer[0]
    columns = _columns(lab, [cohort, *[n for n in per_customer if n != cohort]])
    metric_source, column = _metric(metric, cohort, per_customer, columns)
    known = columns.get(cohort)
    id_column = "customer_id"
    if known and id_column not in known:
        id_column = next((c for c in known if c.endswith("_id")), next(iter(known)))
    where = (
        '  where:\n    - {column: consent_contact, op: "==", value: true}\n'
        if known is not None and "consent_contact" in known
        else '  where: []                    # e.g. - {column: consent_contact, op: "==", value: true}\n'
    )
    spec = lab.spec
    name = column.lower() if NAME.match(column.lower()) else "primary"
    text = TEMPLATE.format(
        id=pilot_id,
        function=function,
        channel=channel,
        stage=stage or spec.stages[0],
        owner=owner,
        functions=", ".join(spec.functions),
        channels=", ".join(spec.channels),
        stages=", ".join(spec.stages),
        metric=name,
        kind=kind,
        baseline="{rate: 0.10}" if kind == "proportion" else "{mean: 1.0, sd: 1.0}",
        source=cohort,
        id_column=id_column,
        where=where,
        metric_source=metric_source,
        column=column,
        column_note=(
            "a placeholder: give `labkit new --metric COLUMN`, or rename it to a column listed below"
            if metric is None
            else ("a per-customer 0/1 column" if kind == "proportion" else "a per-customer number")
        ),
        offered=_offered(columns),
        # in UTC, as labkit dates everything (the host's local date was a day off in far zones)
        start=(dt.datetime.now(dt.UTC).date() + dt.timedelta(days=7)).isoformat(),
        currency=spec.currency,
    )
    target = lab.experiments_dir / f"{pilot_id}.yaml"
    if target.exists():
        raise _exists(lab, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{pilot_id}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        tmp_as_pilot = Path(tmp).with_name(f"{pilot_id}.yaml")
        _, errors = parse_pilot(Path(tmp), lab, display=lab.display(tmp_as_pilot))
        # The temporary name differs from the id; that one check is the only one allowed to fail.
        errors = [e for e in errors if not (e.field == "id" and "file name" in e.detail)]
        if errors:
            raise SpecErrors(errors)
        os.link(tmp, target)  # fails if another process created the pilot meanwhile
    except FileExistsError:
        raise _exists(lab, target) from None
    finally:
        os.unlink(tmp)
    return target


def _exists(lab: Lab, target: Path) -> SpecError:
    return unlocated(
        f"{lab.display(target)} exists already; labkit new never overwrites a pilot", file=lab.display(target)
    )


def _columns(lab: Lab, sources: list[str]) -> dict[str, list[str] | None]:
    """Each source's column names from its schema (no row is read); None where it cannot be read yet."""
    from labkit.data.sources import Engine

    out: dict[str, list[str] | None] = {}
    engine = Engine.for_lab(lab)
    try:
        for name in sources:
            try:
                out[name] = list(engine.columns(name))
            except LabkitError:  # a DataError, or a source the lab cannot open yet
                out[name] = None
    finally:
        engine.close()
    return out


def _metric(metric: str | None, cohort: str, per_customer: list[str], columns: dict) -> tuple[str, str]:
    """(source, column) of the primary metric: ``--metric [SOURCE.]COLUMN``, checked against the schemas."""
    if metric is None:
        return cohort, PLACEHOLDER
    source, _, column = metric.rpartition(".")
    if source and source not in per_customer:
        raise SpecError(
            "--metric",
            None,
            "",
            f"'{source}' is not a per-customer source of the lab; {did_you_mean(source, per_customer)}"
            f"allowed: {', '.join(per_customer)}",
        )
    if not COLUMN.match(column):
        raise SpecError(
            "--metric", None, "", f"'{column}' is not a plain column name (letters, digits and _)"
        )
    if not source:  # the first per-customer source holding it, the cohort's first; else the cohort's
        source = next((n for n, cols in columns.items() if cols and column in cols), cohort)
    known = columns.get(source)
    if known is not None and column not in known:
        raise SpecError(
            "--metric",
            None,
            "",
            f"source '{source}' has no column '{column}'; {did_you_mean(column, known)}columns: {', '.join(known)}",
        )
    return source, column


def _offered(columns: dict) -> str:
    """Comment lines listing each readable source's columns: what a metric or a filter may name."""
    lines = []
    for name, cols in columns.items():
        if cols:
            shown = ", ".join(cols[:15]) + (f", … ({len(cols)} in all)" if len(cols) > 15 else "")
            lines.append(f"    # columns of {name}: {shown}\n")
    return "".join(lines)
