"""Multiple-comparison adjustment of a family of p-values (Holm, Benjamini–Hochberg, or none).

DESIGN.md: the primary metric over treatment arms uses Holm; secondary metrics × arms use the pilot's
``correction``; guardrails are not corrected. Entries that are None (a degenerate estimate with no
p-value) stay None and do not count towards the family size — a test that could not be run cannot
produce a false positive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METHODS = ("holm", "bh", "none")


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down: p_(i) · (m − i + 1), running maximum, capped at 1 (Holm 1979)."""
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg step-up: p_(i) · m / i, running minimum from the top, capped at 1 (BH 1995)."""
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    stepped = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out


def adjust(p_values: Sequence[float | None], method: str) -> list[float | None]:
    """Adjusted p-values in input order: Holm (FWER), Benjamini–Hochberg (FDR) or none."""
    if method not in METHODS:
        raise ValueError(f"unknown correction {method!r}; allowed: {', '.join(METHODS)}")
    present = [i for i, p in enumerate(p_values) if p is not None]
    values = np.array([float(p_values[i]) for i in present], dtype=float)
    if values.size and not (np.all(np.isfinite(values)) and values.min() >= 0 and values.max() <= 1):
        raise ValueError(f"p-values must be in [0, 1], got {list(p_values)}")
    out: list[float | None] = [None] * len(p_values)
    if not present:
        return out
    adjusted = {"holm": _holm, "bh": _bh, "none": lambda p: p}[method](values)
    for i, value in zip(present, adjusted):
        out[i] = float(value)
    return out
