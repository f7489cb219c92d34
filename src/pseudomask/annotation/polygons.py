"""Mask outlines as polygons for annotation tools, and back, in COCO's continuous coordinates (pixel (x, y)
is the square [x, x+1) x [y, y+1)), which COCO, CVAT and Ultralytics' COCO-to-YOLO conversion share.

The polygons run along the mask pixels' edges (to 1/8 px: the contours of the mask upsampled 4 times), so
that pycocotools rasterises them back to the same pixels; a polygon through the boundary pixels' centres
(OpenCV's contours) would lose half a pixel all round. `outline` makes one polygon of a mask: it visits each
part and each hole and comes back along the same line (as Ultralytics joins COCO segments; a hole's contour
runs the other way round, so it stays empty), so that the formats holding one polygon per instance (YOLO-seg;
Label Studio's COCO import, which reads only an annotation's first polygon) keep every part and hole.

Formats whose box is the polygon's extent (YOLO-seg; an annotation tool's pre-annotation, which the
annotator edits) must not state a box other than the given one: `shows_box` says where an instance is written
as its box outline instead of its mask, one rule for every such export. `is_box_outline` says whether what
an annotator returned is still such a box outline, as the tool gave it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from ..masks import box_agreement, mask_iou, segmentation_mask
from ..merge_drop import MergeDropSettings, is_dropped

SCALE = 4  # contours of the mask upsampled 4x lie 1/8 px inside the pixels' edges
OUTLINE_TOL = 0.1  # px: polygon points this close to a box's corners are its outline (a tool's rounding)
OUTLINE_IOU = 0.99  # a mask with this IoU with the filled box is the box (a tool's rasterisation)


def _join(chain: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """`chain` with the closed loop `seg` inserted at their closest points (there and back on one line)."""
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(chain).query(seg)
    j = int(np.argmin(dist))
    i = int(idx[j])
    return np.vstack([chain[:i + 1], seg[j:], seg[:j + 1], chain[i:]])


def parts(mask: np.ndarray) -> list[np.ndarray]:
    """One (N,2) polygon per part of a mask's foreground (value 1), its holes joined in, largest first."""
    fg = mask == 1
    rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
    if not len(rows):
        return []
    y0, x0 = int(rows[0]), int(cols[0])
    crop = np.kron(fg[y0:int(rows[-1]) + 1, x0:int(cols[-1]) + 1].astype(np.uint8), np.ones((SCALE, SCALE), np.uint8))
    contours, hier = cv2.findContours(np.pad(crop, 1), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    hier = hier.reshape(-1, 4)  # next, previous, first child, parent

    def back(c: np.ndarray) -> np.ndarray:  # padded upsampled pixel index -> continuous coordinates
        return (c.reshape(-1, 2).astype(np.float64) - 0.5) / SCALE + [x0, y0]

    found = []
    for i, c in enumerate(contours):
        if hier[i, 3] >= 0:
            continue
        poly, child = back(c), hier[i, 2]
        while child >= 0:
            poly = _join(poly, back(contours[child]))
            child = hier[child, 0]
        found.append((cv2.contourArea(c), len(c), poly))
    found.sort(key=lambda t: (-t[0], -t[1]))
    return [p for _, _, p in found]


def outline(mask: np.ndarray) -> np.ndarray | None:
    """`parts` joined into one (N,2) polygon, largest part first; None when the mask is empty."""
    found = parts(mask)
    if not found:
        return None
    chain = found[0]
    for poly in found[1:]:
        chain = _join(chain, poly)
    return chain


def box_outline(bbox: Sequence[float]) -> np.ndarray:
    """(4,2) polygon of a COCO xywh box's corners."""
    x, y, w, h = (float(v) for v in bbox)
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)


def polygon_mask(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H,W) uint8 mask of a polygon, rasterised as pycocotools does."""
    return segmentation_mask([np.asarray(poly, np.float64).reshape(-1).tolist()], height, width)


def drop_threshold(stage: str, params: Mapping[str, Any]) -> float:
    """The proxy box IoU below which a mask's box disagrees with the given box: the threshold of a merge_drop
    artifact's params, else merge_drop's default."""
    if stage == "merge_drop" and params.get("threshold") is not None:
        return float(params["threshold"])
    return MergeDropSettings().threshold


def box_disagrees(mask: np.ndarray, bbox: Sequence[float], threshold: float, proxy_iou: float | None = None) -> bool:
    """Whether a mask's tight box disagrees with the given box by merge_drop's rule (proxy box IoU below
    `threshold`, or 0): `proxy_iou` where the artifact has it (not NaN), else computed from the mask."""
    if proxy_iou is None or not np.isfinite(float(proxy_iou)):
        proxy_iou = box_agreement(mask, bbox)
    return bool(is_dropped(proxy_iou, threshold))


def shows_box(row: Mapping[str, Any], mask: np.ndarray, threshold: float) -> bool:
    """Whether an instance is written as its box outline rather than its mask's outline: its mask is not kept
    (dropped, invalid, failed), or the mask's box disagrees with its given `bbox` (`box_disagrees`), so that
    the polygon's extent would state a wrong box (a mask the merge ate to a remnant, say)."""
    return row["status"] != "kept" or box_disagrees(mask, row["bbox"], threshold, row.get("proxy_box_iou"))


def is_box_outline(segmentation: Any, mask: np.ndarray, bbox: Sequence[float]) -> bool:
    """Whether a returned annotation is still the outline of `bbox`: polygons whose points each lie within
    OUTLINE_TOL px of one of the box's corners and reach every corner (any start, direction or repeated
    point), or a `mask` (the segmentation rasterised) with IoU >= OUTLINE_IOU with the filled box, rasterised
    as pycocotools does its outline. An outline edited into another shape, or into a box of another extent
    (beyond the IoU), is not."""
    corners = box_outline(bbox)
    if isinstance(segmentation, list) and segmentation:
        try:
            points = np.concatenate([np.asarray(p, np.float64).reshape(-1, 2) for p in segmentation])
        except (ValueError, TypeError):
            points = np.empty((0, 2))
        if len(points):
            dist = np.abs(points[:, None, :] - corners[None]).max(-1)  # (points, corners)
            if (dist.min(1) <= OUTLINE_TOL).all() and (dist.min(0) <= OUTLINE_TOL).all():
                return True
    return mask_iou(mask, polygon_mask(corners, *mask.shape[:2])) >= OUTLINE_IOU
