"""`labkit new`: a commented pilot file that validates as written, for the lab team to fill in."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

from labkit._validation import SLUG
from labkit.errors import LabkitError, SpecErrors
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

cohort:
  source: {source}             # a data source of configs/lab.yaml
  id_column: customer_id
  where:                       # eligibility: column, op (== != < <= > >= in not_in is_null not_null), value
    - {{column: consent_contact, op: "==", value: true}}
  max_size: 2000               # exposure cap: at most this many customers enter the pilot
  arms: {{control: 0.5, treatment: 0.5}}
  control: control
  start: {start}               # assignment date; event windows count from here

metrics:
  - name: {metric}
    type: proportion           # proportion | mean | ratio | quantile
    source: {source}
    column: {metric}           # a per-customer 0/1 column; rename to your outcome column

analysis: {{}}                   # alpha, power, engine, sequential, correction default from the lab

budget:
  cost: 1000                   # what the pilot costs, in {currency}
  value_per_unit: 100          # value of a one-unit change of the primary metric per customer
"""


def new_pilot(lab: Lab, pilot_id: str, *, function: str, channel: str, stage: str | None, owner: str) -> Path:
    """Write experiments/<id>.yaml atomically after checking that it validates; never overwrites."""
    if not SLUG.match(pilot_id):
        raise LabkitError(f"'{pilot_id}' is not a slug; use lowercase letters, digits and single dashes")
    sources = [name for name, s in lab.spec.sources.items() if s.timestamp is None]
    if not sources:
        raise LabkitError("the lab file defines no per-customer source to draw a cohort from")
    spec = lab.spec
    text = TEMPLATE.format(
        id=pilot_id,
        function=function,
        channel=channel,
        stage=stage or spec.stages[0],
        owner=owner,
        functions=", ".join(spec.functions),
        channels=", ".join(spec.channels),
        stages=", ".join(spec.stages),
        metric="converted",
        source=sources[0],
        start=(dt.date.today() + dt.timedelta(days=7)).isoformat(),
        currency=spec.currency,
    )
    target = lab.experiments_dir / f"{pilot_id}.yaml"
    if target.exists():
        raise LabkitError(f"{lab.display(target)} exists already; labkit new never overwrites a pilot")
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
        raise LabkitError(
            f"{lab.display(target)} exists already; labkit new never overwrites a pilot"
        ) from None
    finally:
        os.unlink(tmp)
    return target
