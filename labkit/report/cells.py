"""The cells of the portfolio's views: numbers, money, percentages, intervals, flags and decision colours,
formatted once for the terminal table and the HTML report alike."""

from __future__ import annotations

from labkit.leadership import PilotRow

COLOURS = {"ship": "#1a7f37", "harm": "#cf222e", "no-effect": "#57606a", "inconclusive": "#bf8700",
           "invalid": "#8250df"}  # fmt: skip


def num(x, spec: str = ",.0f") -> str:
    return "–" if x is None else format(x, spec)


def pct(x) -> str:
    if x is None:
        return "–"
    return f"{x:+.0%}" if abs(x) >= 10 else f"{x:+.1%}"


def short(x) -> str:
    """Money for the terminal: 4,500 · 787k · 1.18M."""
    if x is None:
        return "–"
    if abs(x) >= 1e6:
        return f"{x / 1e6:,.2f}M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:,.0f}k"
    return f"{x:,.0f}"


def interval(lo, hi, fmt=pct) -> str:
    return "–" if lo is None or hi is None else f"[{fmt(lo)}, {fmt(hi)}]"


def sig(x) -> str:
    return format(x, "+.3g")


def money(x) -> str:
    return num(x, ",.0f")


def flags(row: PilotRow) -> list[str]:
    return [name for name, on in (("spec changed", row.spec_changed), ("running", row.running),
                                  ("data changed", row.data_changed)) if on]  # fmt: skip


def decisions(tally: dict[str, int]) -> str:
    return ", ".join(f"{n} {d}" for d, n in tally.items() if n) or "–"


def pooled(group, sep: str = " ") -> str:
    if group.pooled_gain is not None:
        return f"{pct(group.pooled_gain)}{sep}{interval(group.pooled_gain_ci_low, group.pooled_gain_ci_high)}"
    return "not pooled" if group.pooled_k == 1 else "–"


def advice(r: PilotRow) -> str:
    if not r.recommendation:
        return "–"
    arm = f" ({r.recommendation_arm})" if r.recommendation_arm else ""
    return f"{r.recommendation}{arm}"
