"""The feature scorer: gradient-boosted regression trees from mask features to the mask's IoU with its true mask.

Trained with scikit-learn's `GradientBoostingRegressor` (`fit`), stored as plain JSON (the trees' arrays: no
pickle, so loading a model file runs no code) and evaluated here with numpy, so predicting needs neither
scikit-learn nor network access. The package ships a default model (`default_scorer.json`, trained on real
COCO images by `scripts/train_scorer.py`; see `default_scorer.md` beside it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import PseudomaskError
from ..files import write_json
from .features import FEATURES, image_features, source_of

FORMAT = "pseudomask-quality-gbrt"
DEFAULT = "default"
# the choice model's inputs: a candidate's features and their difference from the mean of its box's candidates
CHOICE_FEATURES = FEATURES + tuple(f"box_rel_{f}" for f in FEATURES)


def choice_features(x: np.ndarray) -> np.ndarray:
    """(C, 2F) inputs of the choice model from the (C, F) features of one box's candidates."""
    x = np.asarray(x, np.float64).reshape(-1, len(FEATURES))
    return np.hstack([x, x - x.mean(0, keepdims=True)]) if len(x) else np.zeros((0, len(CHOICE_FEATURES)))


class ScorerError(PseudomaskError, ValueError):
    """A scorer file that cannot be read or does not match the features of this version."""


@dataclass(frozen=True)
class Tree:
    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        node = np.zeros(len(x), np.int64)
        rows = np.arange(len(x))
        while True:
            inner = self.left[node] >= 0
            if not inner.any():
                return self.value[node]
            n = node[inner]
            go_left = x[rows[inner], self.feature[n]] <= self.threshold[n]
            node[inner] = np.where(go_left, self.left[n], self.right[n])


@dataclass(frozen=True)
class Forest:
    """All trees of an ensemble in padded (T, nodes) arrays, walked together: one numpy step per tree level
    instead of one per level of each tree (200 trees of depth 3 in 4 steps, not 800)."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray

    @classmethod
    def of(cls, trees: Sequence[Tree]) -> "Forest":
        n = max((len(t.left) for t in trees), default=1)

        def pad(name: str, fill: float, dtype) -> np.ndarray:
            out = np.full((len(trees), n), fill, dtype)
            for i, t in enumerate(trees):
                a = getattr(t, name)
                out[i, :len(a)] = a
            return out

        return cls(pad("left", -1, np.int64), pad("right", -1, np.int64), pad("feature", 0, np.int64),
                   pad("threshold", 0.0, np.float64), pad("value", 0.0, np.float64))

    def leaf_values(self, x: np.ndarray) -> np.ndarray:
        """(T, N) value of the leaf each row of x (N, F) reaches in each tree."""
        n_trees, n_nodes = self.left.shape
        left, right = self.left.ravel(), self.right.ravel()
        feature, threshold = self.feature.ravel(), self.threshold.ravel()
        base = (np.arange(n_trees) * n_nodes)[:, None]      # flat index of each tree's root
        row = (np.arange(len(x)) * x.shape[1])[None, :]      # flat index of each row's first feature
        node = np.broadcast_to(base, (n_trees, len(x))).copy()
        xf = np.ascontiguousarray(x).ravel()
        while True:
            nxt = left[node]
            inner = nxt >= 0
            if not inner.any():
                return self.value.ravel()[node]
            go_left = xf[row + feature[node]] <= threshold[node]
            node = np.where(inner, base + np.where(go_left, nxt, right[node]), node)


@dataclass(frozen=True)
class Scorer:
    """Predicts the IoU (0..1) of masks from `FEATURES`; `name` identifies it in artifacts' provenance.

    `choice` (optional) ranks the candidates of one box: trained on `CHOICE_FEATURES` to predict each
    candidate's IoU minus the mean IoU of its box's candidates, it picks better than the absolute IoU,
    which stays the `quality` written."""

    features: tuple[str, ...]
    init: float
    learning_rate: float
    trees: tuple[Tree, ...]
    name: str = ""
    meta: Mapping[str, Any] | None = None
    choice: "Scorer | None" = None

    def raw(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64).reshape(-1, len(self.features))
        steps = self.learning_rate * self._forest.leaf_values(x)
        # cumsum adds tree by tree, in order: the sum of the `Tree.predict`s, bit for bit
        return np.cumsum(np.vstack([np.full((1, len(x)), self.init), steps]), axis=0)[-1]

    @functools.cached_property
    def _forest(self) -> "Forest":
        return Forest.of(self.trees)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.clip(self.raw(x), 0.0, 1.0)

    def rank(self, x: np.ndarray) -> np.ndarray:
        """Scores to choose among one box's candidates (features `x`, with the cross-source ones): the
        choice model's when there is one, else the predicted IoU."""
        return self.choice.raw(choice_features(x)) if self.choice is not None else self.predict(x)

    def to_json(self) -> dict:
        return {"format": FORMAT, "features": list(self.features), "init": self.init,
                "learning_rate": self.learning_rate, "meta": dict(self.meta or {}),
                "trees": [{"left": t.left.tolist(), "right": t.right.tolist(), "feature": t.feature.tolist(),
                           "threshold": [round(float(v), 9) for v in t.threshold],
                           "value": [round(float(v), 9) for v in t.value]} for t in self.trees],
                **({"choice": self.choice.to_json()} if self.choice is not None else {})}

    def save(self, path: str | os.PathLike) -> Path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return write_json(self.to_json(), path)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], name: str = "", features: tuple[str, ...] = FEATURES) -> "Scorer":
        if d.get("format") != FORMAT:
            raise ScorerError(f"{name or 'scorer'}: not a {FORMAT} model (format {d.get('format')!r})")
        feats = tuple(d["features"])
        if feats != features:
            missing = sorted(set(FEATURES) ^ set(feats))
            raise ScorerError(f"{name or 'scorer'}: trained on other features than this version computes "
                              f"(differing: {missing[:5] or 'order'}); retrain it with scripts/train_scorer.py")
        trees = tuple(Tree(np.asarray(t["left"], np.int64), np.asarray(t["right"], np.int64),
                           np.asarray(t["feature"], np.int64), np.asarray(t["threshold"], np.float64),
                           np.asarray(t["value"], np.float64)) for t in d["trees"])
        choice = cls.from_json(d["choice"], name, CHOICE_FEATURES) if d.get("choice") else None
        return cls(feats, float(d["init"]), float(d["learning_rate"]), trees, name, d.get("meta") or {}, choice)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Scorer":
        path = Path(path)
        try:
            text = path.read_text()
            d = json.loads(text)
        except (OSError, ValueError) as e:
            raise ScorerError(f"{path}: cannot read the quality model ({e})") from None
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        return cls.from_json(d, name=f"{path.name}@{digest}")

    # --- artifacts ---------------------------------------------------------------------------------------
    def score_image(self, rgb: np.ndarray | None, rows: Sequence[Mapping[str, Any]], masks: np.ndarray,
                    stage: str) -> np.ndarray:
        """Predicted IoU per row; NaN where nothing is predicted: no image, or a failed, ignored or
        empty mask, or a true mask (source `gt`, quality 1)."""
        q = np.full(len(rows), np.nan)
        if rgb is None or not len(rows):
            return q
        todo = [k for k, r in enumerate(rows) if scorable(r) and np.any(masks[k] == 1)]
        for k, r in enumerate(rows):
            if r.get("source") == "gt":
                q[k] = 1.0
        if todo:
            feats = image_features(rgb, [rows[k] for k in todo], masks[todo],
                                   [source_of(stage, rows[k]) for k in todo])
            q[todo] = self.predict(feats)
        return q


def scorable(row: Mapping[str, Any]) -> bool:
    return row.get("status") not in ("failed", "ignored") and row.get("source") != "gt"


def fit(x: np.ndarray, y: np.ndarray, *, n_estimators: int = 200, learning_rate: float = 0.05, max_depth: int = 3,
        subsample: float = 0.8, min_samples_leaf: int = 5, seed: int = 0, meta: Mapping[str, Any] | None = None,
        name: str = "", features: tuple[str, ...] = FEATURES, choice: Scorer | None = None) -> Scorer:
    """A scorer fitted by scikit-learn's GradientBoostingRegressor (squared error) on features x, IoUs y."""
    try:
        from sklearn.ensemble import GradientBoostingRegressor
    except ImportError:  # pragma: no cover
        raise ScorerError("training a quality scorer needs scikit-learn: pip install scikit-learn") from None
    x = np.asarray(x, np.float64)
    if x.shape[1] != len(features):
        raise ScorerError(f"{x.shape[1]} feature columns, expected {len(features)}")
    gbr = GradientBoostingRegressor(n_estimators=n_estimators, learning_rate=learning_rate, max_depth=max_depth,
                                    subsample=subsample, min_samples_leaf=min_samples_leaf, random_state=seed)
    gbr.fit(x, np.asarray(y, np.float64))
    init = float(np.asarray(gbr.init_.predict(x[:1])).ravel()[0])
    trees = []
    for est in gbr.estimators_[:, 0]:
        t = est.tree_
        trees.append(Tree(t.children_left.astype(np.int64), t.children_right.astype(np.int64),
                          np.maximum(t.feature, 0).astype(np.int64), t.threshold.astype(np.float64),
                          t.value[:, 0, 0].astype(np.float64)))
    return Scorer(features, init, float(learning_rate), tuple(trees), name or "fitted", dict(meta or {}), choice)


def default_path() -> Path:
    return Path(str(resources.files("pseudomask.quality") / "default_scorer.json"))


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> Scorer:
    s = Scorer.load(path)
    return s if path != str(default_path()) else Scorer(s.features, s.init, s.learning_rate, s.trees,
                                                        f"default:{s.name}", s.meta, s.choice)


def get_scorer(model: str | os.PathLike | None = DEFAULT) -> Scorer | None:
    """The scorer named by a setting: "default" (the shipped model), a path to a JSON model, or "none"."""
    if model is None or str(model) == "none":
        return None
    path = default_path() if str(model) == DEFAULT else Path(model)
    if not path.exists():
        raise ScorerError(f"{path}: no such quality model" + (
            "; the package lacks its default model (reinstall, or run scripts/train_scorer.py)"
            if str(model) == DEFAULT else ""))
    return _load_cached(str(path), path.stat().st_mtime)
