"""Multiscale hierarchical segmentation, the first half of MCG: fine base superpixels, boundary strength
measured at several image scales, and one agglomerative merge tree per scale (weak boundaries merge first,
as in an ultrametric contour map, helped by selective search's colour, size and fill similarities).
All trees share the base superpixels, so every region of every tree is a set of the same superpixels:
MCG's alignment of the scales, by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np
from numba import njit


def base_superpixels(rgb: np.ndarray, scale: float = 50.0, sigma: float = 0.8, min_size: int = 10) -> np.ndarray:
    """Fine over-segmentation (Felzenszwalb-Huttenlocher graph segmentation): (H, W) int32 labels 0..S-1.

    Computed by the compiled implementation in `felzenszwalb.py`, label for label the same as
    `skimage.segmentation.felzenszwalb`.
    """
    from .felzenszwalb import felzenszwalb  # lazy: it imports skimage (0.2 s), which every CLI start would pay

    return felzenszwalb(rgb, scale=scale, sigma=sigma, min_size=min_size)


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
    w = labels.shape[1]
    # the pixel pairs across a label change: horizontal ones, then vertical ones, in raster order
    ih = np.flatnonzero(labels[:, :-1] != labels[:, 1:])
    iv = np.flatnonzero(labels[:-1, :] != labels[1:, :])
    first = np.concatenate([ih + ih // max(w - 1, 1), iv])
    second = first + np.concatenate([np.ones_like(ih), np.full_like(iv, w)])
    flat = labels.ravel()
    a, b = flat[first].astype(np.int64), flat[second].astype(np.int64)
    u, v = np.minimum(a, b), np.maximum(a, b)
    keys, inv = np.unique(u * n + v, return_inverse=True)
    length = np.bincount(inv, minlength=len(keys)).astype(np.float64)
    sums = []
    for s in strengths:
        sf = s.ravel()
        e = (sf[first] + sf[second]) * 0.5
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

    @cached_property
    def levels(self) -> list[np.ndarray]:
        """Merge indices grouped by depth in the tree, shallowest first: the children of a group are
        leaves or nodes of earlier groups, so per-node sums over the tree can run a group at a time."""
        depth = [0] * self.n_nodes
        for k, (a, b) in enumerate(self.children.tolist(), self.n_leaves):
            depth[k] = 1 + max(depth[a], depth[b])
        d = np.array(depth[self.n_leaves:], np.int64)
        order = np.argsort(d, kind="stable")
        return np.split(order, np.flatnonzero(np.diff(d[order])) + 1) if len(d) else []

    def membership(self) -> np.ndarray:
        """(n_nodes, ceil(n_leaves/8)) uint8: each node's leaves as packed bits."""
        nb = (self.n_leaves + 7) // 8
        m = np.zeros((self.n_nodes, nb), np.uint8)
        leaves = np.arange(self.n_leaves)
        m[leaves, leaves // 8] = (128 >> (leaves % 8)).astype(np.uint8)
        for ks in self.levels:
            m[self.n_leaves + ks] = m.take(self.children[ks, 0], 0) | m.take(self.children[ks, 1], 0)
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
    xs, ys = np.tile(np.arange(w), h), np.repeat(np.arange(h), w)
    lo = np.stack([np.full(n, w), np.full(n, h)])  # int64 targets: ufunc.at's fast path
    hi = np.zeros((2, n), np.int64)
    for c, v in enumerate((xs, ys)):
        np.minimum.at(lo[c], flat, v)
        np.maximum.at(hi[c], flat, v + 1)
    return RegionFeatures(area, hist, np.concatenate([lo, hi]).T.astype(np.float64))


# columns of a node table: area, box x0 y0 x1 y1, inner boundary length and strength sum, histogram
AREA, X0, Y0, X1, Y1, INNER_LEN, INNER_SUM, HIST = range(8)


def node_table(feats: RegionFeatures, size: int) -> np.ndarray:
    """(size, 7 + B) features of a merge tree's nodes, one row per node id, leaves first (inner sums 0);
    the rows of nodes still to be made are zero."""
    table = np.zeros((size, HIST + feats.hist.shape[1]))
    n = len(feats.area)
    table[:n, AREA] = feats.area
    table[:n, X0:Y1 + 1] = feats.box
    table[:n, HIST:] = feats.hist
    return table


@njit(cache=True)
def _pairwise_sum(x: np.ndarray, n: int) -> float:
    """Sum of x[:n] (n <= 128) in numpy's pairwise order (eight accumulators), so that a compiled cost
    equals numpy's `.sum()` of the same row bit for bit."""
    if n < 8:
        s = 0.0
        for i in range(n):
            s += x[i]
        return s
    r = x[:8].copy()
    m = n - n % 8
    for i in range(8, m, 8):
        for j in range(8):
            r[j] += x[i + j]
    s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for i in range(m, n):
        s += x[i]
    return s


@njit(cache=True)
def merge_costs(pa: np.ndarray, pb: np.ndarray, sl: np.ndarray, ss: np.ndarray, nodes: np.ndarray, total: float,
                weights: np.ndarray) -> np.ndarray:
    """(E,) merge cost of the edges (pa, pb) between rows of the node table (see `merge_tree`), with
    weights (boundary, colour, size, fill) per edge: (E, 4).

    Edge by edge, so the cost of an edge does not depend on which other edges are costed with it; no
    colour term at all where its weight is 0.
    """
    nh = nodes.shape[1] - HIST
    if nh > 128:
        raise ValueError("colour histograms of more than 128 bins")
    common = np.empty(nh)
    out = np.empty(len(pa))
    for e in range(len(pa)):
        a, b = pa[e], pb[e]
        na, nb = nodes[a, AREA], nodes[b, AREA]
        bw = max(nodes[a, X1], nodes[b, X1]) - min(nodes[a, X0], nodes[b, X0])
        bh = max(nodes[a, Y1], nodes[b, Y1]) - min(nodes[a, Y0], nodes[b, Y0])
        cost = weights[e, 0] * ss[e] / sl[e] + weights[e, 2] * (na + nb) / total \
            + weights[e, 3] * (bw * bh - na - nb) / total
        if weights[e, 1] != 0.0:
            for j in range(nh):
                common[j] = min(nodes[a, HIST + j], nodes[b, HIST + j])
            cost = cost + weights[e, 1] * (1.0 - _pairwise_sum(common, nh))
        out[e] = cost
    return out


@njit(cache=True)
def merge_nodes(nodes: np.ndarray, new: np.ndarray, a: np.ndarray, b: np.ndarray, sl: np.ndarray,
                sm: np.ndarray) -> None:
    """Fill the node table rows `new` with the merges of rows a and b across boundaries of length sl
    and strength sum sm."""
    for e in range(len(new)):
        o, p, q = new[e], a[e], b[e]
        na, nb = nodes[p, AREA], nodes[q, AREA]
        n = na + nb
        nodes[o, AREA] = n
        for c in (X0, Y0):
            nodes[o, c] = min(nodes[p, c], nodes[q, c])
        for c in (X1, Y1):
            nodes[o, c] = max(nodes[p, c], nodes[q, c])
        nodes[o, INNER_LEN] = nodes[p, INNER_LEN] + nodes[q, INNER_LEN] + sl[e]
        nodes[o, INNER_SUM] = nodes[p, INNER_SUM] + nodes[q, INNER_SUM] + sm[e]
        for c in range(HIST, nodes.shape[1]):
            nodes[o, c] = (nodes[p, c] * na + nodes[q, c] * nb) / n


@njit(cache=True)
def merge_sorted(key: np.ndarray, val: np.ndarray, keep: np.ndarray, new_key: np.ndarray,
                 new_val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted union of the kept rows of (key, val) and the rows of (new_key, new_val), both sorted by
    key and sharing no key."""
    m = np.count_nonzero(keep) + len(new_key)
    out_key = np.empty(m, key.dtype)
    out_val = np.empty((m, val.shape[1]), val.dtype)
    i, j, n = 0, 0, len(key)
    for o in range(m):
        while i < n and not keep[i]:
            i += 1
        if j < len(new_key) and (i == n or new_key[j] < key[i]):
            out_key[o] = new_key[j]
            out_val[o] = new_val[j]
            j += 1
        else:
            out_key[o] = key[i]
            out_val[o] = val[i]
            i += 1
    return out_key, out_val


@njit(cache=True)
def _mutual(pa: np.ndarray, pb: np.ndarray, cost: np.ndarray, size: int) -> np.ndarray:
    """Mask of the edges that are the first of the cheapest edges at both their ends."""
    cmin = np.empty(size)
    best = np.full(size, -1)
    for e in range(len(cost)):
        for u in (pa[e], pb[e]):
            if best[u] < 0 or cost[e] < cmin[u]:
                cmin[u] = cost[e]
                best[u] = e
    out = np.empty(len(cost), np.bool_)
    for e in range(len(cost)):
        out[e] = best[pa[e]] == e and best[pb[e]] == e
    return out


def mutual_cheapest(pa: np.ndarray, pb: np.ndarray, cost: np.ndarray, size: int) -> np.ndarray:
    """Indices of the edges that are the cheapest edge of both their ends, ordered by (cost, index).

    An edge is ranked by (cost, index), as a stable sort of the costs would: of equal costs the lower
    edge index wins. Node ids are below `size`.
    """
    mutual = _mutual(pa, pb, cost, size).nonzero()[0]
    return mutual[cost[mutual].argsort(kind="stable")]


def unique_inverse(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(x, return_inverse=True) for 1-d int arrays, without its overhead on small arrays."""
    order = x.argsort()
    sx = x[order]
    first = np.empty(len(x), bool)
    first[:1] = True
    np.not_equal(sx[1:], sx[:-1], out=first[1:])
    inv = np.empty(len(x), np.int64)
    inv[order] = first.cumsum() - 1
    return sx[first], inv


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
    so this follows greedy agglomeration closely, with each round done at once over all its pairs.
    Internal boundary sums are kept for map `measure_index`, so regions of all trees score on one map.
    """
    return merge_trees(adj, feats, [(map_index, weights)], measure_index)[0]


def merge_trees(adj: Adjacency, feats: RegionFeatures, trees: list[tuple[int, tuple[float, float, float, float]]],
                measure_index: int = 0) -> list[Hierarchy]:
    """The merge trees (see `merge_tree`) of (map index, weights) pairs over the same superpixels.

    The trees are independent but grow side by side, one round of each per pass, so that the cost of each
    numpy or compiled call is spread over all of them. Tree t names its nodes t * size + (its node id); the edges
    between current regions are kept sorted by (u, v) with u < v, so each tree sees its own edges in
    its own order. An edge between two regions that did not merge keeps its cost: only the edges of
    new regions are costed, each round.
    """
    n, nt = len(feats.area), len(trees)
    total = float(np.sum(feats.area))
    size = max(2 * n - 1, 1)  # node ids per tree
    span = nt * size  # node ids of all trees
    nodes = np.tile(node_table(feats, size), (nt, 1))
    w = np.array([[float(x) for x in wt] for _, wt in trees]).reshape(nt, 4)
    region = np.arange(span, dtype=np.int64)  # node id -> the node that holds it after this round's merges
    # edges (u < v) between current regions as sorted keys u * span + v, with shared boundary length,
    # strength sums (the tree's map, map `measure_index`) and merge cost
    offset = np.arange(nt, dtype=np.int64)[:, None] * size
    key = ((offset + adj.u.astype(np.int64)) * span + offset + adj.v.astype(np.int64)).ravel()
    val = np.concatenate([np.stack([adj.length, adj.strength[:, mi], adj.strength[:, measure_index],
                                    np.zeros(len(adj.u))], 1) for mi, _ in trees]).astype(np.float64)
    pa, pb = key // span, key % span
    val[:, 3] = merge_costs(pa, pb, val[:, 0], val[:, 1], nodes, total, w.take(pa // size, 0))
    made = np.full(nt, n, np.int64)  # nodes so far, per tree
    merges: list[np.ndarray] = []  # per round: (tree, a, b) and cost of each merge, in merge order
    costs: list[np.ndarray] = []
    while len(key):  # no edges left: one root, or a disconnected remainder (the tree is a forest)
        pa, pb = key // span, key % span
        sel = mutual_cheapest(pa, pb, val[:, 3], span)
        a, b, v = pa[sel], pb[sel], val.take(sel, 0)
        tree = a // size
        by_tree = tree.argsort(kind="stable")  # merges of one tree keep their order: its node ids
        count = np.bincount(tree, minlength=nt)
        rank = np.empty(len(sel), np.int64)
        rank[by_tree] = np.arange(len(sel)) - np.repeat(np.cumsum(count) - count, count)
        new = tree * size + made[tree] + rank
        made += count
        merges.append(np.stack([tree, a, b]))
        costs.append(v[:, 3])
        merge_nodes(nodes, new, a, b, v[:, 0], v[:, 2])
        region[a] = region[b] = new
        ra, rb = region[pa], region[pb]
        moved = (ra != pa) | (rb != pb)
        # edges of the new regions (not the merged pairs themselves), duplicates summed in edge order
        ta, tb, tv = ra[moved], rb[moved], val.compress(moved, 0)
        cross = ta != tb
        ta, tb, tv = ta[cross], tb[cross], tv.compress(cross, 0)
        t_key, inv = unique_inverse(np.minimum(ta, tb) * span + np.maximum(ta, tb))
        t_val = np.empty((len(t_key), 4))
        for c in range(3):
            t_val[:, c] = np.bincount(inv, tv[:, c], len(t_key))
        t_pa = t_key // span
        t_val[:, 3] = merge_costs(t_pa, t_key % span, t_val[:, 0], t_val[:, 1], nodes, total,
                                  w.take(t_pa // size, 0))
        key, val = merge_sorted(key, val, ~moved, t_key, t_val)  # the other edges keep their values
    merged = np.concatenate(merges, 1) if merges else np.zeros((3, 0), np.int64)
    cost = np.concatenate(costs) if costs else np.zeros(0)
    out = []
    for t in range(nt):
        mine = merged[0] == t
        ch = merged[1:, mine].T - t * size
        hts = np.maximum.accumulate(np.maximum(cost[mine], 0.0))  # ultrametric: never below an earlier merge
        rows = nodes[t * size:t * size + made[t]]
        out.append(Hierarchy(n, ch.astype(np.int64), hts, rows[:, AREA].copy(), rows[:, INNER_LEN].copy(),
                             rows[:, INNER_SUM].copy()))
    return out
