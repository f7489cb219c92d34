"""Rank agreement between a predicted quality and the true one: the one Spearman correlation of the project."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import spearmanr


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation of paired values; None where it is undefined (fewer than 3 pairs, or a
    side that is constant)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rho = spearmanr(x, y).statistic
    return float(rho) if np.isfinite(rho) else None
