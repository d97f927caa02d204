"""Sample-ratio mismatch: do the arm counts match the planned allocation?

Large cohorts: Pearson's chi-square goodness-of-fit test, df = arms − 1 (method ``"chi-square"``).
Small cohorts — any expected count below 5 or fewer than 100 customers in total, where the chi-square
approximation is poor — get an exact test instead:

- two arms: the exact binomial test (``"binomial-exact"``; scipy ``binomtest``, two-sided by summing
  the probabilities of all outcomes no more likely than the observed one);
- three or more arms: the exact multinomial test (``"multinomial-exact"``) with the same "no more
  likely" ordering, by enumerating every allocation of the total; when that is more than 2·10⁶
  allocations it is estimated from 200 000 seeded multinomial draws (``"multinomial-mc"``,
  p = (1 + #{draws no more likely}) / (1 + draws)).

``ok`` is ``p_value >= threshold`` (DESIGN.md: p < 0.001 makes the pilot invalid). No customers at all
gives ``p_value`` None, ``ok`` True and method ``"no-data"``: nothing was observed, so nothing mismatched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from labkit.stats.moments import PlainRecord

#: Chi-square only when every expected count is at least this ...
MIN_EXPECTED = 5.0
#: ... and the cohort has at least this many customers.
MIN_TOTAL = 100
#: Enumerate the exact multinomial test up to this many allocations; Monte Carlo beyond.
MAX_ENUMERATION = 2_000_000
MC_DRAWS = 200_000

# Outcomes whose log-probability equals the observed one up to rounding count as "no more likely".
_LOG_TIE = 1e-7


@dataclass(frozen=True)
class SrmResult(PlainRecord):
    """Sample-ratio mismatch check: p-value, verdict at the threshold, observed and expected counts."""

    p_value: float | None
    ok: bool
    counts: dict
    expected: dict
    method: str


def _compositions(total: int, parts: int) -> np.ndarray:
    """Every way to write ``total`` as an ordered sum of ``parts`` non-negative integers, one per row."""
    rows = np.zeros((1, 0), dtype=np.int64)
    remaining = np.array([total], dtype=np.int64)
    for _ in range(parts - 1):
        # each row with r left to place branches into r + 1 rows, taking 0..r in the next part
        branches = remaining + 1
        parent = np.repeat(np.arange(len(rows)), branches)
        taken = np.arange(branches.sum()) - np.repeat(np.cumsum(branches) - branches, branches)
        rows = np.column_stack([rows[parent], taken])
        remaining = remaining[parent] - taken
    return np.column_stack([rows, remaining])


def _log_pmf(counts: np.ndarray, log_p: np.ndarray) -> np.ndarray:
    """Multinomial log-probability of each row of counts."""
    total = counts.sum(axis=-1)
    return (
        special.gammaln(total + 1) - special.gammaln(counts + 1).sum(axis=-1) + (counts * log_p).sum(axis=-1)
    )


def exact_multinomial_p(counts: list[int], probs: list[float]) -> tuple[float, str]:
    """Exact multinomial goodness-of-fit p-value: P(outcomes no more likely than observed) (Read & Cressie 1988)."""
    observed = np.asarray(counts, dtype=np.int64)
    p = np.asarray(probs, dtype=float)
    log_p = np.log(p)
    total, parts = int(observed.sum()), len(observed)
    log_obs = _log_pmf(observed, log_p)
    tie = _LOG_TIE * max(1.0, abs(log_obs))
    if math.comb(total + parts - 1, parts - 1) <= MAX_ENUMERATION:
        log_all = _log_pmf(_compositions(total, parts), log_p)
        mask = log_all <= log_obs + tie
        return min(1.0, float(np.exp(log_all[mask]).sum())), "multinomial-exact"
    draws = np.random.default_rng(0).multinomial(total, p, size=MC_DRAWS)
    hits = int(np.count_nonzero(_log_pmf(draws, log_p) <= log_obs + tie))
    return (1 + hits) / (1 + MC_DRAWS), "multinomial-mc"


def binomial_two_sided_p(k: int, n: int, p: float) -> float:
    """The exact two-sided binomial p-value of ``k`` successes in ``n`` at rate ``p``, as
    ``scipy.stats.binomtest(k, n, p).pvalue`` gives it: the probability of every outcome no more likely than
    ``k`` (within scipy's relative 1e-7), 1 when ``k == n p``. Written out because importing scipy.stats for
    it cost a kernel ~1 s of CPU (cluster pilots reach it through their few clusters)."""
    if k == p * n:
        return 1.0
    outcomes = np.arange(n + 1)
    log_pmf = (
        special.gammaln(n + 1) - special.gammaln(outcomes + 1) - special.gammaln(n - outcomes + 1)
        + special.xlogy(outcomes, p) + special.xlog1py(n - outcomes, -p)
    )  # fmt: skip
    pmf = np.exp(log_pmf)
    return min(1.0, float(pmf[pmf <= pmf[k] * (1 + 1e-7)].sum()))


def srm_test(counts: dict[str, int], weights: dict[str, float], *, threshold: float = 0.001) -> SrmResult:
    """Chi-square goodness of fit of arm counts to planned weights; exact binomial/multinomial on small cohorts."""
    if set(counts) != set(weights):
        raise ValueError(
            f"counts has arms {sorted(counts)} but weights has {sorted(weights)}; they must match"
        )
    if len(counts) < 2:
        raise ValueError(f"an SRM check needs at least 2 arms, got {len(counts)}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    arms = list(counts)
    observed = []
    for arm in arms:
        count = counts[arm]
        if isinstance(count, bool) or not float(count).is_integer() or count < 0:
            raise ValueError(f"count of arm {arm!r} must be a whole number >= 0, got {count!r}")
        observed.append(int(count))
    raw_weights = [float(weights[arm]) for arm in arms]
    if not all(math.isfinite(w) and w > 0 for w in raw_weights):
        raise ValueError(f"weights must be positive and finite, got {weights}")
    probs = [w / sum(raw_weights) for w in raw_weights]
    total = sum(observed)
    expected = [total * p for p in probs]
    counts_out = dict(zip(arms, observed))
    expected_out = dict(zip(arms, expected))
    if total == 0:
        return SrmResult(p_value=None, ok=True, counts=counts_out, expected=expected_out, method="no-data")
    if min(expected) >= MIN_EXPECTED and total >= MIN_TOTAL:
        method = "chi-square"
        statistic = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
        p_value = float(special.chdtrc(len(arms) - 1, statistic))
    elif len(arms) == 2:
        method = "binomial-exact"
        p_value = binomial_two_sided_p(observed[0], total, probs[0])
    else:
        p_value, method = exact_multinomial_p(observed, probs)
    p_value = min(p_value, 1.0)
    return SrmResult(
        p_value=p_value, ok=p_value >= threshold, counts=counts_out, expected=expected_out, method=method
    )
