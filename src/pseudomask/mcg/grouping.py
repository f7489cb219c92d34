"""Combinatorial grouping, the second half of MCG: every region of every merge tree, plus pairs and
triplets of adjacent regions taken from the trees' partitions at several levels, deduplicated and ranked
by a hand-made objectness score (MCG's VOC-trained ranking is deliberately not used).

Candidates are sets of base superpixels kept as packed bit rows, so union is a bitwise OR and
deduplication is a byte comparison. Region statistics (area, internal and contour boundary) are
summed along the way, never re-measured on pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .hierarchy import Adjacency, Hierarchy


@dataclass
class Candidates:
    """Candidate regions as packed superpixel bits with the statistics the score needs."""

    packed: np.ndarray  # (R, ceil(S/8)) uint8
    area: np.ndarray  # (R,) pixels
    inner_len: np.ndarray  # (R,) internal boundary length
    inner_sum: np.ndarray  # (R,) internal boundary strength sum
    total_len: np.ndarray  # (R,) summed boundary length of the member superpixels
    total_sum: np.ndarray  # (R,) summed boundary strength of the member superpixels

    def __len__(self) -> int:
        return len(self.area)

    def take(self, idx: np.ndarray) -> "Candidates":
        return Candidates(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @classmethod
    def concat(cls, parts: list["Candidates"]) -> "Candidates":
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))

    @property
    def contour_len(self) -> np.ndarray:
        return self.total_len - 2.0 * self.inner_len

    @property
    def contour_sum(self) -> np.ndarray:
        return self.total_sum - 2.0 * self.inner_sum


def leaf_totals(adj: Adjacency, n: int, measure_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per superpixel, the length and strength sum of all of its boundaries with other superpixels."""
    s = adj.strength[:, measure_index]
    tl = np.bincount(adj.u, adj.length, n) + np.bincount(adj.v, adj.length, n)
    ts = np.bincount(adj.u, s, n) + np.bincount(adj.v, s, n)
    return tl, ts


def tree_candidates(h: Hierarchy, tl: np.ndarray, ts: np.ndarray) -> Candidates:
    """Every node of a merge tree (leaves included) as a candidate."""
    n = h.n_leaves
    tot = np.zeros((h.n_nodes, 2))
    tot[:n, 0], tot[:n, 1] = tl, ts
    for ks in h.levels:  # a node's totals are its children's, summed a tree level at a time
        tot[n + ks] = tot.take(h.children[ks, 0], 0) + tot.take(h.children[ks, 1], 0)
    return Candidates(h.membership(), h.area, h.inner_len, h.inner_sum, tot[:, 0].copy(), tot[:, 1].copy())


def nested_duplicates(h: Hierarchy, threshold: float) -> np.ndarray:
    """(n_nodes,) bool, True for the nodes worth keeping: a node is a near-duplicate (dropped) when its
    area is at least `threshold` of its nearest kept ancestor's, which contains it, so that their IoU is
    exactly that ratio. Walks the tree from the root down; the roots are always kept."""
    n_nodes = h.n_nodes
    parent = np.full(n_nodes, -1, np.int64)
    parent[h.children.ravel()] = np.repeat(h.n_leaves + np.arange(len(h.children)), 2)
    keep = np.ones(n_nodes, bool)
    if threshold >= 1.0:
        return keep
    area = h.area.tolist()
    ref = list(area)  # area of the nearest kept ancestor-or-self
    par = parent.tolist()
    for k in range(n_nodes - 1, -1, -1):  # a parent's id is larger than its children's
        p = par[k]
        if p >= 0 and area[k] >= threshold * ref[p]:
            keep[k] = False
            ref[k] = ref[p]
    return keep


def grouped_candidates(nodes: Candidates, h: Hierarchy, adj: Adjacency, n_regions: int, triplets: bool,
                       measure_index: int = 0, threshold: float = 1.0) -> Candidates:
    """Pairs (and triplets) of adjacent regions of the tree's partition into `n_regions` regions.

    A group whose largest member covers at least `threshold` of it is a near-duplicate of that member
    (their IoU is that share) and is left out.
    """
    lab = h.partition(n_regions)
    ru, rv = lab[adj.u], lab[adj.v]
    keep = ru != rv
    a, b = np.minimum(ru[keep], rv[keep]), np.maximum(ru[keep], rv[keep])
    if a.size == 0:
        return nodes.take(np.zeros(0, np.int64))
    m = h.n_nodes
    keys, inv = np.unique(a * m + b, return_inverse=True)
    sl = np.bincount(inv, adj.length[keep], len(keys))
    ss = np.bincount(inv, adj.strength[keep, measure_index], len(keys))
    pa, pb = keys // m, keys % m
    groups = [np.stack([pa, pb], 1)]
    extra_l, extra_s = [sl], [ss]
    if triplets:
        shared = {(int(x), int(y)): (l, s) for x, y, l, s in zip(pa, pb, sl, ss)}
        nb: dict[int, list[int]] = {}
        for x, y in zip(pa.tolist(), pb.tolist()):
            nb.setdefault(x, []).append(y)
            nb.setdefault(y, []).append(x)
        trip = set()
        for r, ns in nb.items():
            ns = sorted(ns)
            for i in range(len(ns)):
                for j in range(i + 1, len(ns)):
                    trip.add(tuple(sorted((r, ns[i], ns[j]))))
        if trip:
            t = np.array(sorted(trip), np.int64)
            tl_, ts_ = np.zeros(len(t)), np.zeros(len(t))
            for k, (x, y, z) in enumerate(t.tolist()):
                for p in ((x, y), (x, z), (y, z)):
                    e = shared.get(p)
                    if e is not None:
                        tl_[k] += e[0]
                        ts_[k] += e[1]
            groups.append(t)
            extra_l.append(tl_)
            extra_s.append(ts_)
    parts = []
    for g, el, es in zip(groups, extra_l, extra_s):
        member_area = nodes.area[g]
        fresh = member_area.max(1) < threshold * member_area.sum(1)
        g, el, es = g[fresh], el[fresh], es[fresh]
        packed = nodes.packed[g[:, 0]].copy()
        for j in range(1, g.shape[1]):
            packed |= nodes.packed[g[:, j]]
        parts.append(Candidates(packed, nodes.area[g].sum(1), nodes.inner_len[g].sum(1) + el,
                                nodes.inner_sum[g].sum(1) + es, nodes.total_len[g].sum(1),
                                nodes.total_sum[g].sum(1)))
    return Candidates.concat(parts)


def deduplicate(c: Candidates) -> Candidates:
    """Keep the first of every set of identical candidates."""
    if len(c) == 0:
        return c
    rows = np.ascontiguousarray(c.packed).view(np.dtype((np.void, c.packed.shape[1]))).ravel()
    _, first = np.unique(rows, return_index=True)
    return c.take(np.sort(first))


def objectness(c: Candidates, image_area: float) -> np.ndarray:
    """Hand-made objectness in (0, 1]: a strong contour, a plausible size, a not too ragged shape.

    contrast = mean boundary strength along the contour (contours on the image border do not count);
    size = log-scaled share of the image, 0.05 below 1e-4 of it and 1 from 1 % up (squared: tiny
    fragments with one sharp edge are the commonest false objects); compactness = 4*pi*area /
    contour_length^2 capped at 1, to the power 1/4. Chosen on coco-dev by ABO of the top-100/1000.
    """
    cl = np.maximum(c.contour_len, 1.0)
    contrast = np.clip(c.contour_sum / cl, 0.0, 1.0)
    compact = np.minimum(4.0 * np.pi * c.area / cl ** 2, 1.0)
    frac = c.area / float(image_area)
    size = np.clip(np.log10(np.maximum(frac, 1e-6) * 1e4) / 2.0, 0.05, 1.0)
    return (0.05 + 0.95 * contrast * size ** 2 * compact ** 0.25).astype(np.float32)


def unpacked(packed: np.ndarray, n: int, dtype=np.float32) -> np.ndarray:
    """(R, n) membership matrix of packed rows."""
    return np.unpackbits(packed, axis=1, count=n).astype(dtype)


def weighted_sums(packed: np.ndarray, n: int, values: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """(R, K) sums of per-superpixel values (n, K) over each packed candidate, in row chunks."""
    values = np.asarray(values, np.float32).reshape(n, -1)
    out = np.zeros((len(packed), values.shape[1]), np.float64)
    for s in range(0, len(packed), chunk):
        out[s:s + chunk] = unpacked(packed[s:s + chunk], n) @ values
    return out


def suppress_near_duplicates(packed: np.ndarray, n: int, sp_area: np.ndarray, order: np.ndarray,
                             threshold: float = 0.9, keep: int = 1000, block: int = 256) -> np.ndarray:
    """Greedy non-maximum suppression of candidates in `order`: drop one whose mask IoU with an
    already kept candidate exceeds `threshold`; stop at `keep` survivors. Returns kept indices.

    Exact mask IoU on superpixel areas, in blocks of candidates. IoU > t needs an area ratio > t, so
    candidates are grouped by log-area in bins of width log(1/t), and a group is compared only with the
    kept and block candidates of its own and the neighbouring bins, on the superpixels its own members
    hold (an intersection needs them). The areas are integers, so the float32 sums are exact.
    """
    w = np.asarray(sp_area, np.float32)
    width = float(np.log(1.0 / threshold)) if 0 < threshold < 1 else np.inf
    kept: list[int] = []
    kept_rows: dict[int, list[np.ndarray]] = {}  # log-area bin -> kept membership rows, (k, n) blocks
    kept_mat: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # ... stacked (rows^T, areas), rebuilt lazily
    kept_area: dict[int, list[np.ndarray]] = {}
    for s in range(0, len(order), block):
        if len(kept) >= keep:
            break
        idx = order[s:s + block]
        rows = unpacked(packed[idx], n)
        weighted = rows * w
        area = weighted.sum(1, dtype=np.float64)
        bins = np.floor(np.log(np.maximum(area, 1.0)) / width).astype(np.int64) if np.isfinite(width) \
            else np.zeros(len(idx), np.int64)
        ok = np.ones(len(idx), bool)
        iou_b = np.zeros((len(idx), len(idx)))  # pairs of bins two or more apart cannot collide: 0
        for b in np.unique(bins):
            g = np.flatnonzero(bins == b)
            cols = np.flatnonzero(rows[g].any(0))
            wg = weighted[np.ix_(g, cols)]
            for nb in (b - 1, b, b + 1):
                if nb not in kept_rows:
                    continue
                if nb not in kept_mat:
                    kept_mat[nb] = (np.ascontiguousarray(np.concatenate(kept_rows[nb]).T),
                                    np.concatenate(kept_area[nb]))
                kr, ka = kept_mat[nb]
                inter = wg @ kr[cols]
                iou = inter / np.maximum(area[g, None] + ka[None, :] - inter, 1e-9)
                ok[g[(iou > threshold).any(1)]] = False
            near = np.flatnonzero(np.abs(bins - b) <= 1)
            inter = wg @ rows[np.ix_(near, cols)].T
            iou_b[np.ix_(g, near)] = inter / np.maximum(area[g, None] + area[None, near] - inter, 1e-9)
        chosen: list[int] = []
        for i in np.flatnonzero(ok):
            if chosen and iou_b[i, chosen].max() > threshold:
                continue
            chosen.append(i)
            if len(kept) + len(chosen) >= keep:
                break
        kept.extend(idx[chosen].tolist())
        chosen_arr = np.array(chosen, np.int64)
        for b in np.unique(bins[chosen_arr]):
            mine = chosen_arr[bins[chosen_arr] == b]
            kept_rows.setdefault(int(b), []).append(rows[mine])
            kept_area.setdefault(int(b), []).append(area[mine])
            kept_mat.pop(int(b), None)
    return np.array(kept, np.int64)
