"""``labkit.binned_distribution``: how a quantile metric's values spread in each arm, for a figure, with no
customer's own value in it.

A median or a 90th percentile is compared by the analysis (``labkit.methods``); a reader also wants to see
the whole distribution per arm. The shares per bin are aggregates, and the privacy rules of the analysis
hold here too: bins below the lab's ``privacy.min_cell_size`` are hidden, and the outer edges never show a
customer's exact minimum or maximum.
"""

from __future__ import annotations

import math

from labkit.spec import Pilot


def binned_distribution(pilot: Pilot, metric: str, *, bins: int = 20, engine=None):
    """Share of each arm's customers per bin of a quantile metric's values (log-spaced bins for positive
    data), as a DataFrame: arm, bin_low, bin_high, count, share. Bins with fewer customers than the lab's
    ``privacy.min_cell_size`` are suppressed (count and share set to 0, ``suppressed`` true), so a figure
    never shows an individual customer's value."""
    import numpy as np
    import pandas as pd

    from labkit.data.aggregate import aggregate_metric, units_table
    from labkit.data.sources import Engine

    m = pilot.metric(metric)
    if m.type != "quantile":
        from labkit._validation import unlocated

        raise unlocated(
            f"metric '{metric}' is a {m.type} metric; distributions are drawn for quantile metrics",
            field="metric",
        )
    own = engine is None
    engine = engine or Engine.for_lab(pilot.lab)
    try:
        data = aggregate_metric(engine, pilot, m, units_table(engine, pilot))
    finally:
        if own:
            engine.close()
    pooled = np.concatenate([v for v in data.values.values() if len(v)]) if data.values else np.array([])
    if pooled.size == 0:
        return pd.DataFrame(columns=["arm", "bin_low", "bin_high", "count", "share", "suppressed"])
    # The outer edges are rounded outwards to two significant digits, so they show no customer's exact
    # minimum or maximum (zero stays zero: the floor of a non-negative metric is nobody's value).
    lo, hi = _round_out(float(pooled.min()), down=True), _round_out(float(pooled.max()), down=False)
    if lo > 0 and hi > lo:
        edges = np.geomspace(lo, hi, bins + 1)
    else:
        edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    floor = pilot.lab.spec.privacy.min_cell_size
    rows = []
    for arm, values in data.values.items():
        counts, _ = np.histogram(values, bins=edges)
        total = max(len(values), 1)
        for low, high, n in zip(edges[:-1], edges[1:], counts):
            hidden = 0 < n < floor
            rows.append(
                {
                    "arm": arm,
                    "bin_low": float(low),
                    "bin_high": float(high),
                    "count": 0 if hidden else int(n),
                    "share": 0.0 if hidden else n / total,
                    "suppressed": bool(hidden),
                }
            )
    return pd.DataFrame(rows)


def _round_out(x: float, *, down: bool) -> float:
    """x rounded to two significant digits, strictly below (``down``) or above it; 0 stays 0."""
    if x == 0 or not math.isfinite(x):
        return x
    step = 10.0 ** (math.floor(math.log10(abs(x))) - 1)
    edge = (math.floor(x / step) if down else math.ceil(x / step)) * step
    if edge == x:
        edge += -step if down else step
    return float(edge)
