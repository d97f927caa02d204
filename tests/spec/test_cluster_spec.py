"""The pilot file's fields of issue #16: cohort.unit_column, max_clusters, saturation and analysis.segments.

One rule per test, the exact message and line (STYLE.md convention 9), as tests/spec/test_spec.py.
"""

from __future__ import annotations

import pandas as pd
import pytest

from labkit.errors import SpecErrors
from labkit.lab import load_lab
from labkit.spec import load_pilot
from labkit.validate import validate_paths

from conftest import PILOT_YAML

F = "experiments/p.yaml"
START = "  start: 2026-11-01\n"  # line 20; a field added after it is on line 21, the next on 22


def with_cohort(*lines: str, text: str = PILOT_YAML) -> str:
    assert START in text
    return text.replace(START, START + "".join(f"  {line}\n" for line in lines), 1)


def load(tiny_lab, text: str):
    return load_pilot(tiny_lab.pilot(text), lab=load_lab(tiny_lab.root))


def problems(tiny_lab, text: str) -> list[str]:
    with pytest.raises(SpecErrors) as info:
        load(tiny_lab, text)
    return [e.message for e in info.value.errors]


# --------------------------------------------------------------------------------------------------
# valid designs


def test_a_cluster_saturation_pilot_with_segments_loads(tiny_lab):
    text = with_cohort(
        "unit_column: community", "max_clusters: 40", "saturation: [0, 0.5, 1]",
        text=PILOT_YAML.replace("arms: {control: 0.5, fast: 0.5}", "arms: {control: 1, fast: 1}"),
    ) + "analysis: {segments: [segment, region]}\n"  # fmt: skip
    pilot = load(tiny_lab, text)
    c = pilot.spec.cohort
    assert (c.unit_column, c.max_clusters, c.saturation) == ("community", 40, [0.0, 0.5, 1.0])
    assert pilot.spec.analysis.segments == ["segment", "region"]


QUANTILE = "  - name: p50\n    type: quantile\n    quantile: 0.5\n    source: outcomes\n    column: spend\n"


def test_a_cluster_pilot_with_a_quantile_metric_loads(tiny_lab):
    pilot = load(tiny_lab, with_cohort("unit_column: community") + QUANTILE)
    assert pilot.spec.cohort.unit_column == "community"
    assert pilot.metric("p50").type == "quantile"


def test_a_saturation_pilot_refuses_quantile_metrics(tiny_lab):
    equal = PILOT_YAML.replace("arms: {control: 0.5, fast: 0.5}", "arms: {control: 1, fast: 1}")
    text = with_cohort("unit_column: community", "saturation: [0, 1]", text=equal) + QUANTILE
    (msg,) = problems(tiny_lab, text)
    assert msg == (
        f"{F}:36: metrics.2.type: a saturation design estimates its direct and spillover effects on cluster "
        "totals, which a quantile has none of; use a proportion, mean or ratio, or remove cohort.saturation"
    )


def test_a_cluster_pilot_with_segments_refuses_a_quantile_primary(tiny_lab):
    text = with_cohort("unit_column: community").replace("metric: churned", "metric: p50")
    (msg,) = problems(tiny_lab, text + QUANTILE + "analysis: {segments: [segment]}\n")
    assert msg == (
        f"{F}:39: analysis.segments: the primary metric 'p50' is a quantile: a cluster pilot's segments are "
        "estimated on cluster totals, which a quantile has none of; remove analysis.segments, or make the "
        "primary a proportion, mean or ratio"
    )


# --------------------------------------------------------------------------------------------------
# cohort.unit_column, max_clusters, saturation


def test_a_misspelt_cluster_field_suggests_the_right_one(tiny_lab):
    (msg,) = problems(tiny_lab, with_cohort("unit_colum: community"))
    assert msg.startswith(
        f"{F}:21: cohort.unit_colum: unknown field 'unit_colum'; did you mean 'unit_column'?"
    )


def test_the_unit_column_is_a_plain_column_name(tiny_lab):
    (msg,) = problems(tiny_lab, with_cohort("unit_column: 'account id'"))
    assert msg == (
        f"{F}:21: cohort.unit_column: 'account id' is not a plain column name (letters, digits and _, not "
        "starting with a digit)"
    )


def test_the_unit_column_is_not_the_id_column(tiny_lab):
    (msg,) = problems(tiny_lab, with_cohort("unit_column: customer_id"))
    assert msg == (
        f"{F}:21: cohort.unit_column: 'customer_id' is the id column: each customer would be its own cluster; "
        "name the cluster column (an account, community or region), or remove unit_column"
    )


def test_max_clusters_needs_a_unit_column(tiny_lab):
    (msg,) = problems(tiny_lab, with_cohort("max_clusters: 20"))
    assert msg == (
        f"{F}:21: cohort.max_clusters: max_clusters caps clusters; give cohort.unit_column, the column naming "
        "each customer's cluster"
    )


def test_max_clusters_is_positive(tiny_lab):
    (msg,) = problems(tiny_lab, with_cohort("unit_column: community", "max_clusters: 0"))
    assert msg == f"{F}:22: cohort.max_clusters: 0 (a number) is out of range; it must be > 0"


def test_saturation_needs_a_unit_column(tiny_lab):
    (msg,) = problems(tiny_lab, with_cohort("saturation: [0, 1]"))
    assert msg == (
        f"{F}:21: cohort.saturation: saturation draws clusters' treated shares; give cohort.unit_column, the "
        "column naming each customer's cluster"
    )


def test_saturation_needs_two_shares(tiny_lab):
    (msg,) = problems(tiny_lab, with_cohort("unit_column: community", "saturation: [0]"))
    assert msg == f"{F}:22: cohort.saturation: give at least two treated shares, e.g. [0, 0.5, 1]; got 1"


def test_saturation_shares_are_sorted_and_distinct(tiny_lab):
    (msg,) = problems(tiny_lab, with_cohort("unit_column: community", "saturation: [0, 1, 0.5, 1]"))
    assert msg == f"{F}:22: cohort.saturation: treated shares must be sorted and distinct; write [0, 0.5, 1]"


def test_saturation_shares_are_in_zero_one(tiny_lab):
    (msg,) = problems(tiny_lab, with_cohort("unit_column: community", "saturation: [0, 1.5]"))
    assert msg == f"{F}:22: cohort.saturation.1: 1.5 (a number) is out of range; it must be <= 1"


def test_saturation_includes_pure_control_clusters(tiny_lab):
    (msg,) = problems(tiny_lab, with_cohort("unit_column: community", "saturation: [0.5, 1]"))
    assert msg == (
        f"{F}:22: cohort.saturation: include 0: the spillover is measured against pure-control clusters; "
        "e.g. [0, 0.5, 1]"
    )


def test_a_saturation_pilot_has_two_arms(tiny_lab):
    text = with_cohort("unit_column: community", "saturation: [0, 1]")
    text = text.replace("arms: {control: 0.5, fast: 0.5}", "arms: {control: 1, fast: 1, slow: 1}")
    (msg,) = problems(tiny_lab, text)
    assert msg == (
        f"{F}:18: cohort.arms: a saturation pilot has exactly two arms, a control and the treatment; got 3: "
        "control, fast, slow"
    )


def test_a_saturation_pilot_has_equal_weights(tiny_lab):
    text = with_cohort("unit_column: community", "saturation: [0, 1]")
    (msg,) = problems(
        tiny_lab, text.replace("arms: {control: 0.5, fast: 0.5}", "arms: {control: 1, fast: 2}")
    )
    assert msg == (
        f"{F}:18: cohort.arms: with cohort.saturation each cluster's treated share comes from the saturation, "
        "not from the weights; give the two arms equal weights, e.g. {control: 1, treatment: 1}"
    )


def test_an_imported_assignment_takes_no_cluster_cap_nor_saturation(tiny_lab):
    text = with_cohort(
        "unit_column: community", "max_clusters: 5", "assignment: {source: outcomes, arm_column: arm}"
    )
    (msg,) = problems(tiny_lab, text)
    assert msg == (
        f"{F}:22: cohort.max_clusters: an imported assignment was drawn by its tool, so max_clusters has no "
        "effect; remove it"
    )


# --------------------------------------------------------------------------------------------------
# analysis.segments


def test_segments_are_column_names(tiny_lab):
    (msg,) = problems(tiny_lab, PILOT_YAML + "analysis: {segments: [segment, 'the region']}\n")
    assert msg == (
        f"{F}:33: analysis.segments.1: 'the region' is not a plain column name (letters, digits and _, not "
        "starting with a digit)"
    )


def test_segments_are_listed_once(tiny_lab):
    (msg,) = problems(tiny_lab, PILOT_YAML + "analysis: {segments: [segment, region, segment]}\n")
    assert msg == (
        f"{F}:33: analysis.segments.2: 'segment' is listed twice (first at analysis.segments.0); list it once"
    )


def test_segments_are_not_the_id_column(tiny_lab):
    (msg,) = problems(tiny_lab, PILOT_YAML + "analysis: {segments: [customer_id]}\n")
    assert (
        msg
        == f"{F}:33: analysis.segments.0: 'customer_id' is the id column: every segment would hold one customer"
    )


def test_an_empty_segment_list_is_refused(tiny_lab):
    (msg,) = problems(tiny_lab, PILOT_YAML + "analysis: {segments: []}\n")
    assert msg == (
        f"{F}:33: analysis.segments: the list is empty; name at least one cohort-source column (e.g. "
        "[segment]), or remove it"
    )


def test_segments_must_be_a_list_of_text(tiny_lab):
    (msg,) = problems(tiny_lab, PILOT_YAML + "analysis: {segments: segment}\n")
    assert msg == f"{F}:33: analysis.segments: expected a list, got 'segment' (text)"


# --------------------------------------------------------------------------------------------------
# hashes


def test_segments_are_pre_registered_and_the_new_fields_leave_old_hashes_alone(tiny_lab):
    plain = load(tiny_lab, PILOT_YAML)
    segmented = load(tiny_lab, PILOT_YAML + "analysis: {segments: [segment]}\n")
    more = load(tiny_lab, PILOT_YAML + "analysis: {segments: [segment, region]}\n")
    alpha = load(tiny_lab, PILOT_YAML + "analysis: {alpha: 0.1}\n")
    # a segment added after the first run is a changed pre-registration; other analysis options are not
    assert len({plain.prereg_sha256, segmented.prereg_sha256, more.prereg_sha256}) == 3
    assert alpha.prereg_sha256 == plain.prereg_sha256
    reordered = load(tiny_lab, PILOT_YAML + "analysis: {segments: [region, segment]}\n")
    assert reordered.prereg_sha256 == more.prereg_sha256
    assert segmented.cohort_sha256 == plain.cohort_sha256  # the assignment stays current
    clustered = load(tiny_lab, with_cohort("unit_column: community"))
    assert clustered.cohort_sha256 != plain.cohort_sha256  # a redraw: the design changed
    assert clustered.prereg_sha256 != plain.prereg_sha256


# --------------------------------------------------------------------------------------------------
# validate --data


def test_validate_data_checks_the_unit_column_and_segments_exist(tiny_lab):
    (tiny_lab.root / "data").mkdir()
    pd.DataFrame(
        {
            "customer_id": ["a", "b"],
            "has_twitter": [True, True],
            "community": ["x", "y"],
            "segment": ["s", "t"],
        }
    ).to_parquet(tiny_lab.root / "data" / "customers.parquet")
    text = with_cohort("unit_column: comunity") + "analysis: {segments: [segment, segmnt]}\n"
    path = tiny_lab.pilot(text)
    found, _ = validate_paths([path], data=True)
    shown = [str(e) for e in found if "comunity" in str(e) or "segmnt" in str(e)]
    assert shown == [
        f"{F}:21: cohort.unit_column: no column 'comunity' in source 'customers'; did you mean 'community'? its "
        "columns: customer_id, has_twitter, community, segment",
        f"{F}:34: analysis.segments.1: no column 'segmnt' in source 'customers'; did you mean 'segment'? its "
        "columns: customer_id, has_twitter, community, segment",
    ]


def test_validate_data_wants_a_text_or_integer_unit_column(tiny_lab):
    (tiny_lab.root / "data").mkdir()
    frame = pd.DataFrame({"customer_id": ["a", "b"], "has_twitter": [True, True], "community": [0.5, 1.5]})
    frame.to_parquet(tiny_lab.root / "data" / "customers.parquet")
    found, _ = validate_paths([tiny_lab.pilot(with_cohort("unit_column: community"))], data=True)
    assert (
        f"{F}:21: cohort.unit_column: column 'community' of source 'customers' is float64; allowed: a text or "
        "integer column" in [str(e) for e in found]
    )
