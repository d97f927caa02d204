"""The leadership view saved in the lab's MLflow experiment: the runs table as leadership reads it."""

from __future__ import annotations

import json

from labkit.tracking.record import (
    TAG_CHANNEL,
    TAG_DECISION,
    TAG_FUNCTION,
    TAG_LATEST,
    TAG_RECOMMENDATION,
    TAG_RECOMMENDATION_ARM,
    TAG_STAGE,
)
from labkit.tracking.rules import display_uri

LEADERSHIP_VIEW = "labkit-leadership"  # the saved view's key: ?viewStateShareKey=labkit-leadership
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."  # MLflow ≥ 3.15 keeps an experiment's saved views in its tags
RUN_NAME_COLUMN = "attributes.`Run Name`"


def _tag(name: str) -> str:
    return f"tags.`{name}`"


def _metric(name: str) -> str:
    return f"metrics.`{name}`"


LEADERSHIP_COLUMNS = (  # in reading order: what to do first, then the money, then where it ran
    "attributes.`Description`", _tag(TAG_DECISION), _tag(TAG_RECOMMENDATION), _tag(TAG_RECOMMENDATION_ARM),
    _metric("roi_pct"), _metric("gain_pct"), _metric("value"), _metric("cost"), _metric("exposed"),
    _tag(TAG_FUNCTION), _tag(TAG_CHANNEL), _tag(TAG_STAGE), _metric("roi_pct_ci_low"),
    _metric("roi_pct_ci_high"), _metric("gain_pct_ci_low"), _metric("gain_pct_ci_high"),
    _metric("srm_p_value"),
)  # fmt: skip


def leadership_view(*, created_ms: int = 0) -> tuple[str, str]:
    """The experiment tag holding the runs table's leadership view, as MLflow's UI saves one (MLflow 3.15's
    "Views → Save as new view"; read by the UI of 3.17): ``mlflow.sharedViewState.<key>`` whose value is
    ``{"name", "createdAt", "updatedAt", "state"}`` and ``state`` the view as JSON text — the columns
    (:data:`LEADERSHIP_COLUMNS`: description, decision, recommendation, ROI, gain, value, cost, exposed,
    SRM p, in the UI's ``<type>.`<name>``` keys), the latest run of each pilot only, highest ROI first.
    MLflow offers no way to preset an experiment's *default* columns, so the view is saved here and opened
    by the link `labkit ui` prints (``?viewStateShareKey=labkit-leadership``). ``created_ms`` keeps the
    value stable (the experiment's creation time), so it is written once."""
    state = {
        "selectedColumns": list(LEADERSHIP_COLUMNS),
        # the grid otherwise orders columns by kind (attributes, metrics, tags) and renders only those in
        # sight: the decision and recommendation tags would sit off-screen to the right
        "columnOrder": [RUN_NAME_COLUMN, *LEADERSHIP_COLUMNS],
        "columnWidths": {
            "attributes.`Description`": 300,
            _tag(TAG_DECISION): 110,
            _tag(TAG_RECOMMENDATION): 170,
            _tag(TAG_RECOMMENDATION_ARM): 150,
        },  # fmt: skip
        "searchFilter": f"{_tag(TAG_LATEST)} = 'true'",
        "orderByKey": _metric("roi_pct"),
        "orderByAsc": False,
    }
    envelope = {
        "name": "Leadership (labkit): latest run of each pilot",
        "createdAt": int(created_ms),
        "updatedAt": int(created_ms),
        "state": json.dumps(state, separators=(",", ":")),
    }
    return SHARED_VIEW_PREFIX + LEADERSHIP_VIEW, json.dumps(envelope, separators=(",", ":"))


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in the UI's "Model training" view (MLflow 3 opens on GenAI otherwise),
    in labkit's leadership view (:func:`leadership_view`: decision, recommendation, ROI, gain… as columns,
    the latest run of each pilot) — MLflow has no per-experiment default columns, so the link carries the
    saved view's key."""
    return (
        f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        f"&viewStateShareKey={LEADERSHIP_VIEW}"
    )


def run_page(uri: str, experiment_id: str | None, run_id: str) -> str | None:
    """A run's page in the MLflow UI when the store is a tracking server (``http(s)://``, which serves the
    UI itself; credentials and query left out); None for a local store, whose UI `labkit ui` starts on a
    port of its own, so no address is known yet."""
    if experiment_id is None or not uri.startswith(("http://", "https://")):
        return None
    return f"{display_uri(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
