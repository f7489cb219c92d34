"""Choosing a proposal for a peak (WISE, Laradji et al., eq. 1).

Among the proposals whose mask contains the peak, proposal k is drawn with probability b_k / sum_j b_j, b being
objectness: the proposals of one object share its salient pixels, so sampling (rather than always taking the
top one) spreads the pseudo labels over plausible masks and averages out the proposal method's ranking noise.
Negative objectness counts as 0; when no candidate has positive objectness all are equally likely.
"""

from __future__ import annotations

import numpy as np

from ..masks import mask_box
from ..proposals import Proposals

from .settings import MODES


def objectness_probabilities(scores: np.ndarray) -> np.ndarray:
    """Selection probabilities proportional to objectness (uniform when none is positive)."""
    b = np.clip(np.asarray(scores, np.float64), 0.0, None)
    b[~np.isfinite(b)] = 0.0
    total = b.sum()
    if total <= 0:
        return np.full(len(b), 1.0 / len(b)) if len(b) else b
    return b / total


def choose(candidates: np.ndarray, scores: np.ndarray, rng: np.random.Generator, mode: str = "sample") -> int:
    """One of `candidates` (proposal indices): drawn by objectness, or the highest-scoring one for "best"."""
    if mode not in MODES:
        raise ValueError(f"proposal selection must be one of {MODES}, got {mode!r}")
    if len(candidates) == 0:
        return -1
    s = np.asarray(scores, np.float64)[candidates]
    if mode == "best":
        return int(candidates[int(np.argmax(s))])  # first of equal scores
    return int(candidates[rng.choice(len(candidates), p=objectness_probabilities(s))])


class ProposalPicker:
    """The proposals of one image, indexed for repeated "which proposals contain (y, x)" queries."""

    def __init__(self, proposals: Proposals):
        self.proposals = proposals
        self._member = proposals.membership()  # (R, S) once per image, not once per peak

    def candidates(self, y: int, x: int) -> np.ndarray:
        return np.flatnonzero(self._member[:, self.proposals.superpixels[y, x]])

    def pick(self, y: int, x: int, rng: np.random.Generator, mode: str = "sample") -> int:
        """Index of the chosen proposal containing (y, x), or -1 when none contains it."""
        return choose(self.candidates(y, x), self.proposals.scores, rng, mode)

    def mask(self, i: int) -> np.ndarray:
        return self.proposals.mask(i)

    def box(self, i: int) -> list[float] | None:
        return mask_box(self.mask(i))
