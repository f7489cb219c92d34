"""Felzenszwalb-Huttenlocher graph segmentation of a colour image, compiled with numba.

The same segmentation as `skimage.segmentation.felzenszwalb` (8-connected grid, Euclidean colour
distance of the smoothed image, `scale` / 255 as k, the same edge order and the same small-region
pass), label for label, at about a third of its cost: skimage's version spends most of its time
building and sorting an explicit (E, 2) edge list, while here an edge's two pixels follow from its
index. Compiled on first use and cached next to this file (or in numba's user cache).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from skimage.filters import gaussian
from skimage.util import img_as_float64


@njit(cache=True)
def edge_costs(image: np.ndarray) -> np.ndarray:
    """(E,) float64 colour distance of every 8-connected pixel pair of a (H, W, C) float64 image, in the
    order `_pixels` decodes: right (H, W-1), down (H-1, W), down-right (H-1, W-1), up-right (H-1, W-1)
    neighbours, each block in raster order of its first pixel (the channels summed in order, as
    numpy's sum of the squared differences over the last axis)."""
    h, w, nc = image.shape
    out = np.empty(h * (w - 1) + (h - 1) * w + 2 * (h - 1) * (w - 1))
    i = 0
    for dy0, dx0, dy1, dx1, rows, cols in ((0, 1, 0, 0, h, w - 1), (1, 0, 0, 0, h - 1, w),
                                           (1, 1, 0, 0, h - 1, w - 1), (1, 0, 0, 1, h - 1, w - 1)):
        for r in range(rows):
            for c in range(cols):
                s = 0.0
                for ch in range(nc):
                    d = image[r + dy0, c + dx0, ch] - image[r + dy1, c + dx1, ch]
                    s = d * d if ch == 0 else s + d * d
                out[i] = np.sqrt(s)
                i += 1
    return out


@njit(cache=True)
def _root(parent: np.ndarray, p: int) -> int:
    while parent[p] != p:
        parent[p] = parent[parent[p]]  # path halving
        p = parent[p]
    return p


@njit(cache=True)
def _pixels(e: int, h: int, w: int) -> tuple[int, int]:
    """The two pixels (flat indices) of edge `e` of `edge_costs`' order."""
    n_right, n_down, n_diag = h * (w - 1), (h - 1) * w, (h - 1) * (w - 1)
    if e < n_right:
        r, c = e // (w - 1), e % (w - 1)
        return r * w + c + 1, r * w + c
    e -= n_right
    if e < n_down:
        return e + w, e
    e -= n_down
    r, c = e // (w - 1), e % (w - 1)
    if e < n_diag:
        return (r + 1) * w + c + 1, r * w + c
    e -= n_diag
    r, c = e // (w - 1), e % (w - 1)
    return r * w + c + 1, (r + 1) * w + c


@njit(cache=True)
def _segment(order: np.ndarray, costs: np.ndarray, h: int, w: int, k: float, min_size: int) -> np.ndarray:
    """(H*W,) int32 labels: greedy merging over the edges in `order` of sorted costs `costs` (two
    components merge when the edge is cheaper than both components' internal difference + k / size),
    then merging of components smaller than `min_size` along the same order; labels numbered by each
    component's first pixel."""
    n = h * w
    parent = np.arange(n, dtype=np.int32)  # 32-bit: the arrays are read at random, so bytes are time
    size = np.ones(n, np.int32)
    inner = np.zeros(n)
    for i in range(len(order)):
        a, b = _pixels(order[i], h, w)
        ra, rb = _root(parent, a), _root(parent, b)
        if ra == rb:
            continue
        # the thresholds are rounded to float32, as skimage's implementation does
        ta = np.float32(inner[ra] + k / size[ra])
        tb = np.float32(inner[rb] + k / size[rb])
        if costs[i] < min(ta, tb):
            lo, hi = min(ra, rb), max(ra, rb)  # the root is the component's first pixel
            parent[hi] = lo
            size[lo] += size[hi]
            inner[lo] = costs[i]
    # a merge of this pass joins a region smaller than min_size, whose pixels were all in regions that
    # small after the first pass: only edges touching those need their roots looked up
    small = np.zeros(n, np.bool_)
    for p in range(n):
        small[p] = size[_root(parent, p)] < min_size
    for i in range(len(order)):
        a, b = _pixels(order[i], h, w)
        if not (small[a] or small[b]):
            continue
        ra, rb = _root(parent, a), _root(parent, b)
        if ra != rb and (size[ra] < min_size or size[rb] < min_size):
            lo, hi = min(ra, rb), max(ra, rb)
            parent[hi] = lo
            size[lo] += size[hi]
    labels = np.full(n, -1, np.int32)
    out = np.empty(n, np.int32)
    count = 0
    for p in range(n):
        r = _root(parent, p)
        if labels[r] < 0:
            labels[r] = count
            count += 1
        out[p] = labels[r]
    return out


def felzenszwalb(rgb: np.ndarray, scale: float = 1.0, sigma: float = 0.8, min_size: int = 20) -> np.ndarray:
    """(H, W) int32 labels 0..S-1 of a (H, W, C) or (H, W) image, numbered in raster order of each
    region's first pixel (as `skimage.segmentation.felzenszwalb` gives them)."""
    image = img_as_float64(np.atleast_3d(rgb))
    image = gaussian(image, sigma=(sigma, sigma, 0), mode="reflect", channel_axis=-1)
    h, w = image.shape[:2]
    costs = edge_costs(image)
    order = np.argsort(costs)
    return _segment(order, costs[order], h, w, float(scale) / 255.0, int(min_size)).reshape(h, w)
