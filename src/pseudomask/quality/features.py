"""Per-instance features of a pseudo mask, from the image, its box, the mask and the stage's row.

Every feature is a deterministic function of its inputs (no randomness, no state), computed on a crop around
the box downscaled to at most `SIDE` pixels, so the cost per instance is bounded whatever the image size.
Missing stage columns (e.g. `retried` on an MCG row) are `MISSING`; the source of the mask is one-hot.
Each group's function returns its features by name (`named_features` all of them); `feature_vector` orders
them as `FEATURES`, the scorer's columns.

Groups (names in `FEATURES`):
- shape vs box: fill of the box, IoU of the mask's tight box with the box (box agreement), foreground outside
  the box, ignore (255) pixels in the box, IoU with the box's inscribed ellipse, components, compactness,
  centroid offset;
- image evidence: Lab colour distance between the mask and a ring around it, and between the mask and the rest
  of the box; gradient strength along the mask contour relative to the crop; texture (gradient) contrast;
- box: log relative area, log aspect, log shorter side, sides on the image border;
- across sources (only where several masks of the same box are at hand, i.e. in `select`; else `MISSING`): mean,
  max and min IoU of the mask with the other sources' masks;
- stage columns (`ROW_COLUMNS`) and the source one-hot (`SOURCES`: the registry's mask stages that make masks
  of their own, `select`'s cheap candidates `EXTRAS`, and `other`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from ..masks import box_iou, ellipse_mask
from ..registry import mask_stages

SIDE = 64          # crops are downscaled so that their longer side is at most this
MARGIN = 0.25      # context around the box, fraction of its side
MISSING = -1.0

# row sources without a one-hot of their own: the mask stages whose masks pass through from (or refine) their
# input's, scored as their input's source (`quality_source`, see `loops.run_artifact_stage`), and true masks
_ALIASES = {"validity": None, "crf": None, "select": None, "merge_drop": None, "refine_round": None, "gt": "other"}
EXTRAS = ("union", "ellipse", "box")  # `select`'s own candidates: the sources' union, the inscribed ellipse, the box

ROW_COLUMNS = ("retried", "fallback", "grabcut_box_iou", "grabcut_fill", "proposal_iou", "objectness",
               "agreed_fraction", "score", "proxy_box_iou", "merge_lost_frac")
SOURCES = tuple(m for m in mask_stages() if m not in _ALIASES) + EXTRAS + ("other",)
SHAPE = ("fill", "box_agreement", "outside_frac", "ignore_frac", "ellipse_iou", "components", "largest_frac",
         "compactness", "centroid_offset")
IMAGE = ("ring_colour_dist", "box_colour_dist", "inside_colour_std", "contour_gradient", "texture_contrast")
BOX = ("log_rel_area", "log_aspect", "log_short_side", "border_sides")
CROSS = ("cross_mean_iou", "cross_max_iou", "cross_min_iou")
FEATURES = SHAPE + IMAGE + BOX + CROSS + tuple(f"row_{c}" for c in ROW_COLUMNS) + tuple(f"source_{s}" for s in SOURCES)


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


def _box(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    """An xywh box as floats, its sides at least 1e-6 (the features divide by them)."""
    x, y, bw, bh = (float(v) for v in bbox)
    return x, y, max(bw, 1e-6), max(bh, 1e-6)


def _crop_span(bbox: Sequence[float], h: int, w: int) -> tuple[int, int, int, int]:
    x, y, bw, bh = (float(v) for v in bbox)
    mx, my = max(2.0, MARGIN * bw), max(2.0, MARGIN * bh)
    x0, y0 = int(max(0, math.floor(x - mx))), int(max(0, math.floor(y - my)))
    x1, y1 = int(min(w, math.ceil(x + bw + mx))), int(min(h, math.ceil(y + bh + my)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


@dataclass(frozen=True)
class _Crop:
    """The context crop around a box: its span (x0, y0, x1, y1) in the image; the mask, its foreground and the
    box's pixels in it; the box's pixel count in it (at least 1) and the whole mask's foreground count."""

    x0: int
    y0: int
    x1: int
    y1: int
    mask: np.ndarray
    fg: np.ndarray
    in_box: np.ndarray
    box_px: int
    n_fg: int


def _crop(mask: np.ndarray, bbox: Sequence[float]) -> _Crop:
    h, w = mask.shape[:2]
    x, y, bw, bh = _box(bbox)
    cx0, cy0, cx1, cy1 = _crop_span(bbox, h, w)
    m = mask[cy0:cy1, cx0:cx1]
    fg = m == 1
    bx0, by0 = int(np.clip(math.floor(x), cx0, cx1)) - cx0, int(np.clip(math.floor(y), cy0, cy1)) - cy0
    bx1, by1 = int(np.clip(math.ceil(x + bw), cx0, cx1)) - cx0, int(np.clip(math.ceil(y + bh), cy0, cy1)) - cy0
    in_box = np.zeros_like(fg)
    in_box[by0:by1, bx0:bx1] = True
    return _Crop(cx0, cy0, cx1, cy1, m, fg, in_box, max((bx1 - bx0) * (by1 - by0), 1),
                 int(np.count_nonzero(mask == 1)))


def _tight_box_agreement(mask: np.ndarray, box: tuple[float, float, float, float], c: _Crop) -> float:
    """IoU of the foreground's tight box with the box; the tight box from the crop unless the foreground leaves
    it (it may only where it leaves the box), else from the whole mask."""
    if not c.n_fg:
        return 0.0
    if c.n_fg == int(c.fg.sum()):
        rows, cols = np.flatnonzero(c.fg.any(1)), np.flatnonzero(c.fg.any(0))
        tight = (cols[0] + c.x0, rows[0] + c.y0, cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)
    else:
        rows, cols = np.flatnonzero((mask == 1).any(1)), np.flatnonzero((mask == 1).any(0))
        tight = (cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)
    return box_iou(tight, box)


def shape_features(mask: np.ndarray, box: tuple[float, float, float, float], c: _Crop) -> dict[str, float]:
    """Fill of the box, box agreement, foreground outside the box, ignore pixels in the box, and the IoU with
    the box's inscribed ellipse (at full crop resolution)."""
    x, y, bw, bh = box
    n_fg_box = int(np.count_nonzero(c.fg & c.in_box))
    ell = ellipse_mask((x - c.x0, y - c.y0, bw, bh), *c.fg.shape).astype(bool)
    union = np.count_nonzero(ell | c.fg)
    return {"fill": n_fg_box / c.box_px, "box_agreement": _tight_box_agreement(mask, box, c),
            "outside_frac": (c.n_fg - n_fg_box) / max(c.n_fg, 1),
            "ignore_frac": int(np.count_nonzero((c.mask == 255) & c.in_box)) / c.box_px,
            "ellipse_iou": np.count_nonzero(ell & c.fg) / union if union else 0.0}


def _downscaled(rgb: np.ndarray, c: _Crop) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The crop's image, foreground and box, downscaled to at most `SIDE` px a side, and the scale."""
    ch, cw = c.fg.shape
    scale = min(1.0, SIDE / max(ch, cw))
    img = rgb[c.y0:c.y1, c.x0:c.x1]
    if scale >= 1.0:
        return img, c.fg, c.in_box, scale
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))

    def nearest(a: np.ndarray) -> np.ndarray:
        return cv2.resize(a.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)

    return cv2.resize(img, size, interpolation=cv2.INTER_AREA), nearest(c.fg), nearest(c.in_box), scale


def image_evidence(img: np.ndarray, fg: np.ndarray, in_box: np.ndarray) -> dict[str, float]:
    """Colour and gradient evidence of a (downscaled) crop: Lab distances of the mask to a ring around it and
    to the rest of the box, the spread of its colour, the gradient along its contour and its texture contrast
    with the ring (gradients relative to the crop's mean)."""
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
    inside, ring_c, rest_c = (lab[sel].mean(0) if np.any(sel) else None for sel in (fg, ring, in_box & ~fg))

    def distance(a: np.ndarray | None, b: np.ndarray | None) -> float:
        return float(np.linalg.norm(a - b)) / 100.0 if a is not None and b is not None else MISSING

    return {"ring_colour_dist": distance(inside, ring_c), "box_colour_dist": distance(inside, rest_c),
            "inside_colour_std": float(lab[fg].std(0).mean()) / 100.0 if np.any(fg) else MISSING,
            "contour_gradient": float(grad[contour].mean()) / mean_grad if np.any(contour) else MISSING,
            "texture_contrast": (float(grad[fg].mean()) - float(grad[ring].mean())) / mean_grad
            if np.any(fg) and np.any(ring) else MISSING}


def topology_features(fg: np.ndarray, box: tuple[float, float, float, float], c: _Crop, scale: float
                      ) -> dict[str, float]:
    """Components of the (downscaled) foreground, the largest one's share, compactness, and the offset of its
    centroid from the box's centre relative to the box's diagonal."""
    if not np.any(fg):
        return {"components": 0.0, "largest_frac": 0.0, "compactness": 0.0, "centroid_offset": MISSING}
    fg8 = fg.astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(fg8, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    contours, _ = cv2.findContours(fg8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    perim = sum(cv2.arcLength(k, True) for k in contours)
    ys, xs = np.nonzero(fg)
    x, y, bw, bh = box
    bcx, bcy = (x + bw / 2 - c.x0) * scale, (y + bh / 2 - c.y0) * scale
    offset = math.hypot(xs.mean() - bcx, ys.mean() - bcy) / max(math.hypot(bw, bh) * scale, 1e-6)
    return {"components": float(n - 1), "largest_frac": float(areas.max() / areas.sum()),
            "compactness": float(min(1.0, 4 * math.pi * areas.sum() / max(perim * perim, 1.0))),
            "centroid_offset": offset}


def box_features(box: tuple[float, float, float, float], h: int, w: int) -> dict[str, float]:
    """The box's log relative area, log aspect, log shorter side, and how many of its sides lie on the image's
    border (within 2 px)."""
    x, y, bw, bh = box
    tol = 2.0
    return {"log_rel_area": math.log(bw * bh / float(h * w)), "log_aspect": math.log(bw / bh),
            "log_short_side": math.log(min(bw, bh)),
            "border_sides": float((x <= tol) + (y <= tol) + (x + bw >= w - tol) + (y + bh >= h - tol))}


def cross_features(mask: np.ndarray, others: Sequence[np.ndarray] | None) -> dict[str, float]:
    """Mean, max and min IoU of a mask's foreground with other masks of the same box (MISSING without)."""
    if not others:
        return dict.fromkeys(CROSS, MISSING)
    fg = mask == 1
    ious = []
    for o in others:
        og = o == 1
        union = np.count_nonzero(fg | og)
        ious.append(np.count_nonzero(fg & og) / union if union else 0.0)
    return dict(zip(CROSS, (float(np.mean(ious)), float(np.max(ious)), float(np.min(ious)))))


def row_features(row: Mapping[str, Any], n_fg: int) -> dict[str, float]:
    """The stage's columns (`ROW_COLUMNS`); `merge_lost_frac`: the pixels merge-and-drop took from the mask
    (`merge_lost_px`) as a share of its foreground (`n_fg` pixels) before."""
    out = {f"row_{c}": _num(row, c) for c in ROW_COLUMNS if c != "merge_lost_frac"}
    lost = row.get("merge_lost_px")
    out["row_merge_lost_frac"] = (float(lost) / max(n_fg + float(lost), 1.0) if isinstance(lost, (int, float))
                                  and math.isfinite(float(lost)) else MISSING)
    return out


def source_features(source: str) -> dict[str, float]:
    """The source one-hot (an unknown source is `other`)."""
    src = source if source in SOURCES else "other"
    return {f"source_{s}": 1.0 if s == src else 0.0 for s in SOURCES}


def named_features(rgb: np.ndarray, bbox: Sequence[float], mask: np.ndarray, row: Mapping[str, Any] | None = None,
                   source: str = "other", others: Sequence[np.ndarray] | None = None) -> dict[str, float]:
    """Every feature of one mask by name (see `instance_features` for the arguments)."""
    h, w = mask.shape[:2]
    box = _box(bbox)
    c = _crop(mask, bbox)
    img, fg, in_box, scale = _downscaled(rgb, c)
    cropped = None if others is None else [o[c.y0:c.y1, c.x0:c.x1] for o in others]
    return {**shape_features(mask, box, c), **topology_features(fg, box, c, scale),
            **image_evidence(img, fg, in_box), **box_features(box, h, w), **cross_features(c.mask, cropped),
            **row_features(row or {}, c.n_fg), **source_features(source)}


def feature_vector(named: Mapping[str, float]) -> np.ndarray:
    """The features of one mask as the scorer takes them: float64, in the order of `FEATURES`."""
    return np.array([named[n] for n in FEATURES], np.float64)


def instance_features(rgb: np.ndarray, bbox: Sequence[float], mask: np.ndarray, row: Mapping[str, Any] | None = None,
                      source: str = "other", others: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """The feature vector (float64, aligned with `FEATURES`) of one mask: rgb (H,W,3) uint8, bbox xywh,
    mask (H,W) uint8 with 1 foreground and 255 ignore, the stage's row, the mask's source, and the other
    sources' masks of the same box (`select`; none elsewhere)."""
    return feature_vector(named_features(rgb, bbox, mask, row, source, others))


def image_features(rgb: np.ndarray, rows: Sequence[Mapping[str, Any]], masks: np.ndarray, sources: Sequence[str]
                   ) -> np.ndarray:
    """(K, len(FEATURES)) features of one image's masks."""
    out = np.zeros((len(rows), len(FEATURES)), np.float64)
    for k, (r, src) in enumerate(zip(rows, sources)):
        out[k] = instance_features(rgb, r["bbox"], masks[k], r, src)
    return out
