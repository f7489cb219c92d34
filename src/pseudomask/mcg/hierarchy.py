"""Multiscale hierarchical segmentation, the first half of MCG: fine base superpixels, boundary strength
measured at several image scales, and one agglomerative merge tree per scale (weak boundaries merge first,
as in an ultrametric contour map, helped by selective search's colour, size and fill similarities).
All trees share the base superpixels, so every region of every tree is a set of the same superpixels:
MCG's alignment of the scales, by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from skimage.segmentation import felzenszwalb


def base_superpixels(rgb: np.ndarray, scale: float = 50.0, sigma: float = 0.8, min_size: int = 10) -> np.ndarray:
    """Fine over-segmentation (Felzenszwalb-Huttenlocher graph segmentation): (H, W) int32 labels 0..S-1."""
    sp = felzenszwalb(rgb, scale=scale, sigma=sigma, min_size=min_size)
    _, inv = np.unique(sp, return_inverse=True)
    return inv.reshape(sp.shape).astype(np.int32)


def boundary_strength(rgb: np.ndarray, scale: float = 1.0, sigma: float = 1.0) -> np.ndarray:
    """(H, W) float32 boundary strength in [0, 1]: CIELAB gradient magnitude of the image seen at `scale`.

    Coarse scales see only the boundaries of large structures (texture averages out), fine scales see
    every edge; each scale drives its own merge tree.
    """
    h, w = rgb.shape[:2]
    img = rgb
    if scale != 1.0:
        size = (max(int(round(w * scale)), 8), max(int(round(h * scale)), 8))
        img = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab = cv2.GaussianBlur(lab, (0, 0), sigma)
    gx = cv2.Sobel(lab, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(lab, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.sqrt((gx * gx + gy * gy).sum(axis=2))
    if mag.shape != (h, w):
        mag = cv2.resize(mag, (w, h), interpolation=cv2.INTER_LINEAR)
    top = float(np.percentile(mag, 99.0)) + 1e-6
    return np.clip(mag / top, 0.0, 1.0).astype(np.float32)


@dataclass
class Adjacency:
    """Region adjacency graph of a label map: edges (u < v) with shared boundary length and strength sum."""

    u: np.ndarray  # (E,) int64
    v: np.ndarray  # (E,) int64
    length: np.ndarray  # (E,) float64: number of 4-neighbour pixel pairs across the boundary
    strength: np.ndarray  # (E,) float64: sum of boundary strength over those pairs (per map)


def adjacency(labels: np.ndarray, strengths: list[np.ndarray], n: int | None = None) -> Adjacency:
    """Adjacency of the regions of `labels`, with the boundary sum of each strength map: (E, len(maps))."""
    n = int(labels.max()) + 1 if n is None else n
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()]).astype(np.int64)
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()]).astype(np.int64)
    diff = a != b
    a, b = a[diff], b[diff]
    u, v = np.minimum(a, b), np.maximum(a, b)
    keys, inv = np.unique(u * n + v, return_inverse=True)
    length = np.bincount(inv, minlength=len(keys)).astype(np.float64)
    sums = []
    for s in strengths:
        e = np.concatenate([(s[:, :-1] + s[:, 1:]).ravel(), (s[:-1, :] + s[1:, :]).ravel()])[diff] * 0.5
        sums.append(np.bincount(inv, weights=e, minlength=len(keys)))
    strength = np.stack(sums, axis=1) if sums else np.zeros((len(keys), 0))
    return Adjacency(keys // n, keys % n, length, strength)


@dataclass
class Hierarchy:
    """A binary merge tree over n_leaves superpixels; node n_leaves + k is the merge of children[k].

    Per node: area (pixels) and the length / strength sum of its internal boundaries, from which the
    grouping stage derives each region's contour contrast without touching pixels again.
    """

    n_leaves: int
    children: np.ndarray  # (M, 2) int64
    heights: np.ndarray  # (M,) float64, non-decreasing: ultrametric height of each merge
    area: np.ndarray  # (n_leaves + M,) float64
    inner_len: np.ndarray  # (n_leaves + M,) float64
    inner_sum: np.ndarray  # (n_leaves + M,) float64

    @property
    def n_nodes(self) -> int:
        return self.n_leaves + len(self.children)

    def partition(self, n_regions: int) -> np.ndarray:
        """(n_leaves,) node id of each leaf in the partition with `n_regions` regions (or the coarsest one)."""
        n_merges = int(np.clip(self.n_leaves - n_regions, 0, len(self.children)))
        parent = np.arange(self.n_nodes, dtype=np.int64)
        parent[self.children[:n_merges].ravel()] = np.repeat(self.n_leaves + np.arange(n_merges), 2)
        while True:  # pointer jumping to the roots of the truncated forest
            up = parent[parent]
            if np.array_equal(up, parent):
                return parent[: self.n_leaves]
            parent = up

    def membership(self) -> np.ndarray:
        """(n_nodes, ceil(n_leaves/8)) uint8: each node's leaves as packed bits."""
        nb = (self.n_leaves + 7) // 8
        m = np.zeros((self.n_nodes, nb), np.uint8)
        leaves = np.arange(self.n_leaves)
        m[leaves, leaves // 8] = (128 >> (leaves % 8)).astype(np.uint8)
        for k, (a, b) in enumerate(self.children):
            m[self.n_leaves + k] = m[a] | m[b]
        return m


@dataclass
class RegionFeatures:
    """Per-superpixel features the merge costs use."""

    area: np.ndarray  # (S,) pixels
    hist: np.ndarray  # (S, B) L1-normalised colour histogram (per channel blocks)
    box: np.ndarray  # (S, 4) x0, y0, x1, y1 (end-exclusive)


def region_features(rgb: np.ndarray, sp: np.ndarray, n: int, bins: int = 16) -> RegionFeatures:
    """Area, CIELAB histogram (`bins` per channel) and bounding box of each superpixel."""
    flat = sp.ravel().astype(np.int64)
    area = np.bincount(flat, minlength=n).astype(np.float64)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(-1, 3)
    hist = np.zeros((n, 3 * bins))
    for c in range(3):
        q = (lab[:, c].astype(np.int64) * bins) >> 8
        hist[:, c * bins:(c + 1) * bins] = np.bincount(flat * bins + q, minlength=n * bins).reshape(n, bins)
    hist /= 3.0 * np.maximum(area, 1)[:, None]
    h, w = sp.shape
    ys, xs = np.divmod(np.arange(h * w), w)
    box = np.zeros((n, 4))
    box[:, 0] = np.full(n, w, float)
    box[:, 1] = np.full(n, h, float)
    np.minimum.at(box[:, 0], flat, xs)
    np.minimum.at(box[:, 1], flat, ys)
    np.maximum.at(box[:, 2], flat, xs + 1)
    np.maximum.at(box[:, 3], flat, ys + 1)
    return RegionFeatures(area, hist, box)


def merge_tree(adj: Adjacency, feats: RegionFeatures, map_index: int = 0, measure_index: int = 0,
               weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)) -> Hierarchy:
    """Agglomerative merge tree: adjacent regions merge in order of a cost, cheapest first.

    cost = w_b * mean boundary strength on the shared boundary (map `map_index`)
         + w_c * (1 - colour histogram intersection)
         + w_s * (area_a + area_b) / image area          (small regions merge first: a balanced tree)
         + w_f * (box_ab area - area_a - area_b) / image area   (regions that fill each other's gaps)
    The last three are selective search's similarities; the first is the contour cue of MCG's UCM.

    Merging runs in rounds (reciprocal nearest neighbours): each round merges, in cost order, every pair
    of regions that are each other's cheapest neighbour. The globally cheapest pair is always among them,
    so this follows greedy agglomeration closely, with numpy doing each round at once.
    Internal boundary sums are kept for map `measure_index`, so regions of all trees score on one map.
    """
    n = len(feats.area)
    wb, wc, ws, wf = (float(x) for x in weights)
    total = float(np.sum(feats.area))
    # per node (grows as nodes are created)
    area = list(feats.area.astype(np.float64))
    inner_len = [0.0] * n
    inner_sum = [0.0] * n
    # per current region (index r), its node id and features
    node = np.arange(n, dtype=np.int64)
    r_area = feats.area.astype(np.float64)
    r_hist = feats.hist.astype(np.float64)
    r_box = feats.box.astype(np.float64)
    r_ilen = np.zeros(n)
    r_isum = np.zeros(n)
    # region adjacency (pa < pb) with shared boundary length and strength sums; shrinks as regions merge
    pa, pb, sl = adj.u.astype(np.int64), adj.v.astype(np.int64), adj.length.astype(np.float64)
    ss, sm = adj.strength[:, map_index].astype(np.float64), adj.strength[:, measure_index].astype(np.float64)
    children: list[np.ndarray] = []
    heights: list[np.ndarray] = []
    top = 0.0
    while len(node) > 1:
        m = len(node)
        if len(pa) == 0:
            break  # disconnected remainder: the tree is a forest
        na, nb = r_area[pa], r_area[pb]
        ba, bb = r_box[pa], r_box[pb]
        bw = np.maximum(ba[:, 2], bb[:, 2]) - np.minimum(ba[:, 0], bb[:, 0])
        bh = np.maximum(ba[:, 3], bb[:, 3]) - np.minimum(ba[:, 1], bb[:, 1])
        cost = wb * ss / sl + ws * (na + nb) / total + wf * (bw * bh - na - nb) / total
        if wc:
            cost = cost + wc * (1.0 - np.minimum(r_hist[pa], r_hist[pb]).sum(1))
        order = np.lexsort((np.arange(len(cost)), cost))
        rank = np.empty(len(cost), np.int64)
        rank[order] = np.arange(len(cost))
        best = np.full(m, len(cost), np.int64)
        np.minimum.at(best, pa, rank)
        np.minimum.at(best, pb, rank)
        mutual = (best[pa] == rank) & (best[pb] == rank)
        sel = order[mutual[order]]  # mutual pairs in cost order
        a, b = pa[sel], pb[sel]
        k = len(sel)
        new_nodes = len(area) + np.arange(k)
        children.append(np.stack([node[a], node[b]], 1))
        hs = np.maximum.accumulate(np.maximum(cost[sel], top))
        top = float(hs[-1])
        heights.append(hs)
        a_n, b_n = r_area[a], r_area[b]
        m_area = a_n + b_n
        m_hist = (r_hist[a] * a_n[:, None] + r_hist[b] * b_n[:, None]) / m_area[:, None]
        m_box = np.concatenate([np.minimum(r_box[a, :2], r_box[b, :2]), np.maximum(r_box[a, 2:], r_box[b, 2:])], 1)
        m_ilen = r_ilen[a] + r_ilen[b] + sl[sel]
        m_isum = r_isum[a] + r_isum[b] + sm[sel]
        area.extend(m_area.tolist())
        inner_len.extend(m_ilen.tolist())
        inner_sum.extend(m_isum.tolist())
        rest = np.ones(m, bool)
        rest[a] = rest[b] = False
        kept = np.flatnonzero(rest)
        remap = np.empty(m, np.int64)
        remap[kept] = np.arange(len(kept))
        remap[a] = len(kept) + np.arange(k)
        remap[b] = len(kept) + np.arange(k)
        a0, b0 = remap[pa], remap[pb]
        cross = a0 != b0
        a0, b0 = np.minimum(a0[cross], b0[cross]), np.maximum(a0[cross], b0[cross])
        m2 = len(kept) + k
        keys, inv = np.unique(a0 * m2 + b0, return_inverse=True)
        pa, pb = keys // m2, keys % m2
        sl = np.bincount(inv, sl[cross], len(keys))
        ss = np.bincount(inv, ss[cross], len(keys))
        sm = np.bincount(inv, sm[cross], len(keys))
        node = np.concatenate([node[kept], new_nodes])
        r_area = np.concatenate([r_area[kept], m_area])
        r_hist = np.concatenate([r_hist[kept], m_hist])
        r_box = np.concatenate([r_box[kept], m_box])
        r_ilen = np.concatenate([r_ilen[kept], m_ilen])
        r_isum = np.concatenate([r_isum[kept], m_isum])
    ch = np.concatenate(children) if children else np.zeros((0, 2), np.int64)
    hts = np.concatenate(heights) if heights else np.zeros(0)
    return Hierarchy(n, ch.astype(np.int64), hts, np.array(area), np.array(inner_len), np.array(inner_sum))
