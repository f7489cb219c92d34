"""Rank agreement between a predicted quality and the true one: the one Spearman correlation of the project.

Computed with numpy (Pearson's correlation of average ranks, as `scipy.stats.spearmanr`): importing
scipy.stats takes about 0.4 s, which every CLI start would pay through the report.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def average_ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks of `a`, ties sharing the mean of their ranks (scipy's `rankdata(method="average")`)."""
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    first = np.r_[True, s[1:] != s[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(a), np.float64)
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(first) - 1]
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation of paired values; None where it is undefined (fewer than 3 pairs, a NaN, or
    a side that is constant)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 3 or np.isnan(x).any() or np.isnan(y).any() or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rho = np.corrcoef(average_ranks(x), average_ranks(y))[0, 1]
    return float(rho) if np.isfinite(rho) else None
