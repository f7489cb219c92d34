"""Mask quality: a predicted IoU of each pseudo mask with its (unknown) true mask.

`features` computes deterministic per-instance features; `scorer` fits (scikit-learn) and evaluates (numpy,
from a JSON file) the regressor; `select` keeps per instance the candidate with the highest predicted quality.
The stage loops (`pseudomask.loops`) write every mask stage's `quality` column with `scorer.get_scorer()`.
"""

from .features import FEATURES, instance_features
from .scorer import Scorer, fit, get_scorer

__all__ = ["FEATURES", "Scorer", "fit", "get_scorer", "instance_features"]
