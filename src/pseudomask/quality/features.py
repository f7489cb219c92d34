"""Per-instance features of a pseudo mask, from the image, its box, the mask and the stage's row.

Every feature is a deterministic function of its inputs (no randomness, no state), computed on a crop around
the box downscaled to at most `SIDE` pixels, so the cost per instance is bounded whatever the image size.
Missing stage columns (e.g. `retried` on an MCG row) are `MISSING`; the source of the mask is one-hot.

Groups (names in `FEATURES`):
- shape vs box: fill of the box, IoU of the mask's tight box with the box (box agreement), foreground outside
  the box, ignore (255) pixels in the box, IoU with the box's inscribed ellipse, components, compactness,
  centroid offset;
- image evidence: Lab colour distance between the mask and a ring around it, and between the mask and the rest
  of the box; gradient strength along the mask contour relative to the crop; texture (gradient) contrast;
- box: log relative area, log aspect, log shorter side, sides on the image border;
- across sources (only where several masks of the same box are at hand, i.e. in `select`; else `MISSING`): mean,
  max and min IoU of the mask with the other sources' masks;
- stage columns (`ROW_COLUMNS`) and the source one-hot (`SOURCES`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from ..masks import ellipse_mask

SIDE = 64          # crops are downscaled so that their longer side is at most this
MARGIN = 0.25      # context around the box, fraction of its side
MISSING = -1.0

ROW_COLUMNS = ("retried", "fallback", "grabcut_box_iou", "grabcut_fill", "proposal_iou", "objectness",
               "agreed_fraction", "score", "proxy_box_iou", "merge_lost_frac")
SOURCES = ("grabcut", "mcg", "agree", "boxcaseg", "cam", "union", "ellipse", "box", "other")
SHAPE = ("fill", "box_agreement", "outside_frac", "ignore_frac", "ellipse_iou", "components", "largest_frac",
         "compactness", "centroid_offset")
IMAGE = ("ring_colour_dist", "box_colour_dist", "inside_colour_std", "contour_gradient", "texture_contrast")
BOX = ("log_rel_area", "log_aspect", "log_short_side", "border_sides")
CROSS = ("cross_mean_iou", "cross_max_iou", "cross_min_iou")
FEATURES = SHAPE + IMAGE + BOX + CROSS + tuple(f"row_{c}" for c in ROW_COLUMNS) + tuple(f"source_{s}" for s in SOURCES)

# stages whose masks pass through from their input: scored as that input's source
_ALIASES = {"validity": None, "merge_drop": None, "select": None, "gt": "other"}


def source_of(stage: str, row: Mapping[str, Any] | None = None) -> str:
    """The source one-hot's name of a mask: the row's `source`/`selected` when set, else the stage's."""
    row = row or {}
    for key in ("selected", "source"):
        v = row.get(key)
        if isinstance(v, str) and v:
            base = v.split(":")[0]
            if base in SOURCES:
                return base
            if base in _ALIASES and _ALIASES[base]:
                return _ALIASES[base]
    return stage if stage in SOURCES else "other"


def _num(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return MISSING
    return f if math.isfinite(f) else MISSING


def _crop_span(bbox: Sequence[float], h: int, w: int) -> tuple[int, int, int, int]:
    x, y, bw, bh = (float(v) for v in bbox)
    mx, my = max(2.0, MARGIN * bw), max(2.0, MARGIN * bh)
    x0, y0 = int(max(0, math.floor(x - mx))), int(max(0, math.floor(y - my)))
    x1, y1 = int(min(w, math.ceil(x + bw + mx))), int(min(h, math.ceil(y + bh + my)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def cross_features(mask: np.ndarray, others: Sequence[np.ndarray] | None) -> tuple[float, float, float]:
    """Mean, max and min IoU of a mask's foreground with other masks of the same box (MISSING without)."""
    if not others:
        return (MISSING,) * 3
    fg = mask == 1
    ious = []
    for o in others:
        og = o == 1
        union = np.count_nonzero(fg | og)
        ious.append(np.count_nonzero(fg & og) / union if union else 0.0)
    return float(np.mean(ious)), float(np.max(ious)), float(np.min(ious))


def instance_features(rgb: np.ndarray, bbox: Sequence[float], mask: np.ndarray, row: Mapping[str, Any] | None = None,
                      source: str = "other", others: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """The feature vector (float64, aligned with `FEATURES`) of one mask: rgb (H,W,3) uint8, bbox xywh,
    mask (H,W) uint8 with 1 foreground and 255 ignore, the stage's row, the mask's source, and the other
    sources' masks of the same box (`select`; none elsewhere)."""
    row = row or {}
    h, w = mask.shape[:2]
    x, y, bw, bh = (float(v) for v in bbox)
    bw, bh = max(bw, 1e-6), max(bh, 1e-6)
    cx0, cy0, cx1, cy1 = _crop_span(bbox, h, w)
    m_full = mask[cy0:cy1, cx0:cx1]
    fg_full = m_full == 1
    # the box within the crop, in crop pixels
    bx0, by0 = int(np.clip(math.floor(x), cx0, cx1)) - cx0, int(np.clip(math.floor(y), cy0, cy1)) - cy0
    bx1, by1 = int(np.clip(math.ceil(x + bw), cx0, cx1)) - cx0, int(np.clip(math.ceil(y + bh), cy0, cy1)) - cy0
    box_px = max((bx1 - bx0) * (by1 - by0), 1)
    in_box = np.zeros_like(fg_full)
    in_box[by0:by1, bx0:bx1] = True
    n_fg_total = int(np.count_nonzero(mask == 1))
    n_fg_box = int(np.count_nonzero(fg_full & in_box))
    fill = n_fg_box / box_px
    outside = (n_fg_total - n_fg_box) / max(n_fg_total, 1)
    ignore = int(np.count_nonzero((m_full == 255) & in_box)) / box_px
    # tight box of the foreground (over the whole mask: foreground may leave the crop only if it leaves the box)
    if n_fg_total:
        rows = np.flatnonzero(fg_full.any(1)) if n_fg_total == int(fg_full.sum()) else None
        if rows is not None:
            cols = np.flatnonzero(fg_full.any(0))
            tb = (cols[0] + cx0, rows[0] + cy0, cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)
        else:
            fr, fc = np.flatnonzero((mask == 1).any(1)), np.flatnonzero((mask == 1).any(0))
            tb = (fc[0], fr[0], fc[-1] - fc[0] + 1, fr[-1] - fr[0] + 1)
        ix = max(0.0, min(tb[0] + tb[2], x + bw) - max(tb[0], x))
        iy = max(0.0, min(tb[1] + tb[3], y + bh) - max(tb[1], y))
        inter = ix * iy
        agreement = inter / (tb[2] * tb[3] + bw * bh - inter)
    else:
        agreement = 0.0
    # inscribed ellipse, at full crop resolution
    ell = ellipse_mask((x - cx0, y - cy0, bw, bh), *fg_full.shape)
    ell = ell.astype(bool)
    union = np.count_nonzero(ell | fg_full)
    ellipse_iou = np.count_nonzero(ell & fg_full) / union if union else 0.0

    # downscaled crop for image evidence and topology
    ch, cw = fg_full.shape
    scale = min(1.0, SIDE / max(ch, cw))
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    img = rgb[cy0:cy1, cx0:cx1]
    if scale < 1.0:
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        fg = cv2.resize(fg_full.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        box_s = cv2.resize(in_box.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    else:
        fg, box_s = fg_full, in_box
    lab = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2LAB).astype(np.float32)
    grey = lab[..., 0]
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    grad = np.sqrt(gx * gx + gy * gy)
    mean_grad = float(grad.mean()) + 1.0
    fg8 = fg.astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    ring = cv2.dilate(fg8, kernel, iterations=2).astype(bool) & ~fg
    contour = fg & ~cv2.erode(fg8, kernel, iterations=1).astype(bool)
    rest = box_s & ~fg

    def mean_lab(sel: np.ndarray) -> np.ndarray | None:
        return lab[sel].mean(0) if np.any(sel) else None

    inside = mean_lab(fg)
    ring_c, rest_c = mean_lab(ring), mean_lab(rest)
    ring_dist = float(np.linalg.norm(inside - ring_c)) / 100.0 if inside is not None and ring_c is not None else MISSING
    box_dist = float(np.linalg.norm(inside - rest_c)) / 100.0 if inside is not None and rest_c is not None else MISSING
    inside_std = float(lab[fg].std(0).mean()) / 100.0 if np.any(fg) else MISSING
    contour_grad = float(grad[contour].mean()) / mean_grad if np.any(contour) else MISSING
    texture = (float(grad[fg].mean()) - float(grad[ring].mean())) / mean_grad if np.any(fg) and np.any(ring) else MISSING
    if np.any(fg):
        n, labels, stats, _ = cv2.connectedComponentsWithStats(fg8, connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        components, largest = float(n - 1), float(areas.max() / areas.sum())
        cnts, _ = cv2.findContours(fg8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        perim = sum(cv2.arcLength(c, True) for c in cnts)
        compact = float(min(1.0, 4 * math.pi * areas.sum() / max(perim * perim, 1.0)))
        ys, xs = np.nonzero(fg)
        bcx, bcy = (x + bw / 2 - cx0) * scale, (y + bh / 2 - cy0) * scale
        offset = math.hypot(xs.mean() - bcx, ys.mean() - bcy) / max(math.hypot(bw, bh) * scale, 1e-6)
    else:
        components, largest, compact, offset = 0.0, 0.0, 0.0, MISSING

    tol = 2.0
    border = float((x <= tol) + (y <= tol) + (x + bw >= w - tol) + (y + bh >= h - tol))
    box_feats = (math.log(bw * bh / float(h * w)), math.log(bw / bh), math.log(min(bw, bh)), border)
    lost = row.get("merge_lost_px")
    row_vals = [_num(row, c) for c in ROW_COLUMNS[:-1]]
    row_vals.append(float(lost) / max(n_fg_total + float(lost), 1.0) if isinstance(lost, (int, float)) and
                    math.isfinite(float(lost)) else MISSING)
    src = source if source in SOURCES else "other"
    onehot = [1.0 if s == src else 0.0 for s in SOURCES]
    vec = [fill, agreement, outside, ignore, ellipse_iou, components, largest, compact, offset,
           ring_dist, box_dist, inside_std, contour_grad, texture, *box_feats, *cross_features(
               m_full, None if others is None else [o[cy0:cy1, cx0:cx1] for o in others]),
           *row_vals, *onehot]
    return np.asarray(vec, np.float64)


def image_features(rgb: np.ndarray, rows: Sequence[Mapping[str, Any]], masks: np.ndarray, sources: Sequence[str]
                   ) -> np.ndarray:
    """(K, len(FEATURES)) features of one image's masks."""
    out = np.zeros((len(rows), len(FEATURES)), np.float64)
    for k, (r, src) in enumerate(zip(rows, sources)):
        out[k] = instance_features(rgb, r["bbox"], masks[k], r, src)
    return out
