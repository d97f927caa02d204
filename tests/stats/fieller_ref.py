"""An independent Fieller interval for the lift, written from the textbook form on the ratio ρ = m_t/m_c.

Fieller (1954): {ρ : (m_t − ρ·m_c)² ≤ c²·(v_t + ρ²·v_c)}, solved here with ``numpy.roots`` on the quadratic
in ρ (labkit solves the same set in λ = effect/|m_c| with a cancellation-free root formula). The lift is
λ = sign(m_c)·(ρ − 1). Bounded only when g = c²·v_c/m_c² < 1 (Fieller's g); None otherwise.
"""

import numpy as np


def fieller_lift(m_c, m_t, v_c, v_t, crit):
    """(low, high) of the lift's Fieller interval, or None when the set is unbounded."""
    if crit * crit * v_c / (m_c * m_c) >= 1:
        return None
    # (m_c² − c²v_c)·ρ² − 2·m_t·m_c·ρ + (m_t² − c²v_t) ≤ 0
    roots = np.roots([m_c * m_c - crit * crit * v_c, -2 * m_t * m_c, m_t * m_t - crit * crit * v_t])
    rho = np.sort(np.real(roots))
    lifts = np.sign(m_c) * (rho - 1)
    return float(lifts.min()), float(lifts.max())
