"""MCG-style mask proposals of one image: hierarchies at several scales, grouped, deduplicated, ranked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..settings import Settings, setting, unknown_keys
from ..proposals import Proposals
from .grouping import (Candidates, deduplicate, grouped_candidates, leaf_totals, nested_duplicates, objectness,
                       suppress_near_duplicates, tree_candidates, weighted_sums)
from .hierarchy import adjacency, base_superpixels, boundary_strength, merge_trees, region_features

TREE_SCHEMA = {"type": "array", "minItems": 1, "items": {
    "type": "object", "additionalProperties": False, "required": ["scale"],
    "properties": {"scale": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                   **{k: {"type": "number", "minimum": 0} for k in ("boundary", "colour", "size", "fill")}}}}


@dataclass(frozen=True)
class McgSettings(Settings):
    """The `mcg` stage: where proposals come from, how they are computed, and how many are stored."""

    SECTION = "mcg"
    mat_dir: str = setting("", "folder of precomputed MCG .mat files (<image stem>.mat); \"\" = compute MCG-style "
                               "proposals")
    clip: bool = setting(True, "clip each chosen proposal to its box (a tight box holds the whole object)")
    max_side: int = setting(640, "proposals are computed with the longer image side at most this (px)", minimum=16)
    superpixel_scale: float = setting(50.0, "Felzenszwalb scale of the base superpixels (smaller: finer, slower)",
                                      exclusive_minimum=0)
    superpixel_sigma: float = setting(0.8, "Felzenszwalb smoothing of the base superpixels", minimum=0)
    superpixel_min_size: int = setting(10, "smallest base superpixel (px)", minimum=1)
    trees: tuple = setting(
        [{"scale": 1.0, "boundary": 1.0, "colour": 1.0, "size": 1.0, "fill": 1.0},
         {"scale": 0.5, "boundary": 1.0, "colour": 1.0, "size": 1.0, "fill": 1.0},
         {"scale": 0.25, "boundary": 1.0, "colour": 1.0, "size": 1.0, "fill": 1.0}],
        "one merge tree each: image scale of its boundary map, weights of its merge cost (boundary strength, "
        "colour histogram distance, size, fill)", schema=TREE_SCHEMA)
    pair_levels: tuple[int, ...] = setting([4, 8, 16, 32, 64, 128],
                                           "tree partitions whose adjacent pairs become candidates")
    triplet_levels: tuple[int, ...] = setting([4, 8, 16, 32], "... and whose adjacent triplets do")
    min_area: float = setting(9, "candidates smaller than this (px, full resolution) are dropped", minimum=0)
    max_area_fraction: float = setting(0.95, "... and those covering more of the image than this",
                                       exclusive_minimum=0, maximum=1)
    max_proposals: int = setting(1000, "proposals stored per image (plus every proposal chosen for a box)",
                                 minimum=1)
    nms: float = setting(0.9, "stored proposals: drop one whose IoU with a better one exceeds this (1 = keep all)",
                         exclusive_minimum=0, maximum=1)

    def proposal_params(self) -> dict[str, Any]:
        """The keyword arguments of `proposals_for_image` / `proposal_pool`."""
        return {k: v for k, v in self.to_dict().items() if k not in ("mat_dir", "clip")}


DEFAULTS: dict[str, Any] = McgSettings().proposal_params()


def proposal_params(**params: Any) -> dict[str, Any]:
    """DEFAULTS updated by `params`; unknown names are an error naming them (a typo must not pass silently)."""
    unknown_keys(params, DEFAULTS, "mcg")
    return McgSettings.from_mapping(params).proposal_params()


@dataclass
class ProposalPool:
    """Every deduplicated candidate of an image, best score first, as packed superpixel bits.

    `superpixels` is at the image's full resolution (a superpixel lost in upsampling has area 0).
    """

    superpixels: np.ndarray  # (H, W) int32, labels 0..n-1
    packed: np.ndarray  # (R, ceil(n/8)) uint8
    scores: np.ndarray  # (R,) float32, non-increasing

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def n(self) -> int:
        return int(self.superpixels.max(initial=-1)) + 1

    def areas(self) -> np.ndarray:
        return np.bincount(self.superpixels.ravel(), minlength=self.n).astype(np.float64)

    def sums(self, values: np.ndarray) -> np.ndarray:
        """(R, K) sums of per-superpixel values (n, K) over every candidate."""
        return weighted_sums(self.packed, self.n, values)

    def ranked(self, max_proposals: int, nms: float) -> np.ndarray:
        """Indices of the best `max_proposals` candidates after near-duplicate suppression at IoU `nms`."""
        order = np.arange(len(self))
        if nms >= 1.0:
            return order[:max_proposals]
        return suppress_near_duplicates(self.packed, self.n, self.areas(), order, nms, max_proposals)

    @classmethod
    def from_proposals(cls, props: Proposals) -> "ProposalPool":
        """A pool of given proposals (e.g. read from an MCG .mat file), best score first."""
        n = int(props.superpixels.max(initial=-1)) + 1
        order = np.argsort(-props.scores, kind="stable")
        owner = np.repeat(np.arange(len(props)), np.diff(props.region_ptr))
        bits = np.zeros((len(props), n), bool)
        bits[owner, props.region_idx] = True
        return cls(props.superpixels.astype(np.int32), np.packbits(bits[order], axis=1),
                   props.scores[order].astype(np.float32))

    def proposals(self, idx: np.ndarray) -> Proposals:
        """The candidates `idx` (in that order) as compact Proposals; superpixels absent from the map
        are dropped from the lists."""
        idx = np.asarray(idx, np.int64)
        n = self.n
        present, sp = np.unique(self.superpixels, return_inverse=True)
        new_id = np.full(n, -1, np.int64)
        new_id[present] = np.arange(len(present))
        bits = np.unpackbits(self.packed[idx], axis=1, count=n).astype(bool)
        bits &= new_id >= 0
        rows, cols = np.nonzero(bits)
        ptr = np.zeros(len(idx) + 1, np.int64)
        ptr[1:] = np.cumsum(np.bincount(rows, minlength=len(idx)))
        return Proposals(sp.reshape(self.superpixels.shape).astype(np.int32), ptr,
                         new_id[cols].astype(np.int32), self.scores[idx].astype(np.float32))


def proposal_pool(rgb: np.ndarray, **params: Any) -> ProposalPool:
    """All MCG-style candidates of an RGB uint8 image (H, W, 3), deduplicated and ranked by objectness.

    Deterministic: the same image and parameters give the same candidates in the same order.
    """
    p = proposal_params(**params)
    if rgb.ndim == 2:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    h, w = rgb.shape[:2]
    f = min(1.0, float(p["max_side"]) / max(h, w))
    work = rgb if f == 1.0 else cv2.resize(rgb, (max(int(round(w * f)), 1), max(int(round(h * f)), 1)),
                                           interpolation=cv2.INTER_AREA)
    sp = base_superpixels(work, p["superpixel_scale"], p["superpixel_sigma"], int(p["superpixel_min_size"]))
    n = int(sp.max()) + 1
    trees = p["trees"]
    scales = sorted({1.0} | {float(t.get("scale", 1.0)) for t in trees}, reverse=True)
    maps = [boundary_strength(work, s) for s in scales]
    adj = adjacency(sp, maps, n)
    feats = region_features(work, sp, n)
    tl, ts = leaf_totals(adj, n)
    parts: list[Candidates] = []
    nms = float(p["nms"])  # near-duplicates inside a tree are left out at once, exactly (see grouping)
    pair_levels = {int(k) for k in p["pair_levels"]}
    triplet_levels = {int(k) for k in p["triplet_levels"]}
    specs = [(scales.index(float(t.get("scale", 1.0))),
              tuple(float(t.get(k, 0.0)) for k in ("boundary", "colour", "size", "fill"))) for t in trees]
    for tree in merge_trees(adj, feats, specs, measure_index=0):
        nodes = tree_candidates(tree, tl, ts)
        parts.append(nodes.take(np.flatnonzero(nested_duplicates(tree, nms))))
        for k in sorted(pair_levels | triplet_levels):
            if k < n:
                parts.append(grouped_candidates(nodes, tree, adj, k, triplets=k in triplet_levels, threshold=nms))
    cand = deduplicate(Candidates.concat(parts))
    area_full = cand.area * (h * w) / float(sp.size)
    ok = (area_full >= float(p["min_area"])) & (cand.area <= float(p["max_area_fraction"]) * sp.size)
    cand = cand.take(np.flatnonzero(ok))
    score = objectness(cand, sp.size)
    order = np.argsort(-score, kind="stable")
    if sp.shape != (h, w):
        yi = np.minimum(((np.arange(h) + 0.5) * sp.shape[0] / h).astype(np.int64), sp.shape[0] - 1)
        xi = np.minimum(((np.arange(w) + 0.5) * sp.shape[1] / w).astype(np.int64), sp.shape[1] - 1)
        sp = sp[yi[:, None], xi[None, :]]
    return ProposalPool(sp.astype(np.int32), cand.packed[order], score[order].astype(np.float32))


def proposals_for_image(rgb: np.ndarray, **params: Any) -> Proposals:
    """Ranked MCG-style proposals of an RGB uint8 image (H, W, 3), on an (H, W) superpixel map:
    the best `max_proposals` candidates by objectness, near-duplicates (IoU > `nms`) suppressed."""
    p = proposal_params(**params)
    pool = proposal_pool(rgb, **params)
    return pool.proposals(pool.ranked(int(p["max_proposals"]), float(p["nms"])))
