"""Mask and box primitives shared by every stage: boxes are COCO xywh floats, masks uint8 (1 fg, 255 ignore)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .crops import Crop
from .store import IGNORE


def box_pixels(bbox: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel span (x0, y0, x1, y1), end-exclusive, covered by a box, clipped to the image."""
    x, y, w, h = (float(v) for v in bbox)
    x0 = int(np.clip(np.floor(x), 0, width))
    y0 = int(np.clip(np.floor(y), 0, height))
    x1 = int(np.clip(np.ceil(x + w), 0, width))
    y1 = int(np.clip(np.ceil(y + h), 0, height))
    return x0, y0, x1, y1


def box_mask(bbox: Sequence[float], height: int, width: int) -> np.ndarray:
    """The filled box as a mask."""
    m = np.zeros((height, width), np.uint8)
    x0, y0, x1, y1 = box_pixels(bbox, height, width)
    m[y0:y1, x0:x1] = 1
    return m


def ellipse_mask(bbox: Sequence[float], height: int, width: int) -> np.ndarray:
    """The ellipse inscribed in a box (hybrid networks' replacement for invalid masks)."""
    x0, y0, x1, y1 = box_pixels(bbox, height, width)
    m = np.zeros((height, width), np.uint8)
    if x1 <= x0 or y1 <= y0:
        return m
    cx, cy = (x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0
    rx, ry = max((x1 - x0) / 2.0, 0.5), max((y1 - y0) / 2.0, 0.5)
    dx2 = ((np.arange(x0, x1) - cx) / rx) ** 2  # separable: one row and one column, summed by broadcasting
    dy2 = ((np.arange(y0, y1) - cy) / ry) ** 2
    m[y0:y1, x0:x1] = dy2[:, None] + dx2[None, :] <= 1.0
    return m


def mask_box(mask: np.ndarray) -> list[float] | None:
    """Tight xywh box of a mask's foreground (value 1), or None when it is empty."""
    fg = mask == 1
    rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
    if rows.size == 0:
        return None
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def _corners(box: Any, fmt: str) -> tuple[Any, Any, Any, Any, Any]:
    """x0, y0, x1, y1 and area of a box given as its 4 values (numbers, or broadcastable arrays): `xywh` (the
    area w * h as given) or `xyxy` (the area of the sides clipped at 0)."""
    p, q, r, s = box
    if fmt == "xywh":
        return p, q, p + r, q + s, r * s
    if fmt == "xyxy":
        return p, q, r, s, np.clip(r - p, 0, None) * np.clip(s - q, 0, None)
    raise ValueError(f"box format is 'xywh' or 'xyxy', got {fmt!r}")


def _iou(a: Any, b: Any, fmt: str) -> Any:
    """IoU of boxes a and b (see `_corners`), broadcast; 0 where the union is empty."""
    ax0, ay0, ax1, ay1, a_area = _corners(a, fmt)
    bx0, by0, bx1, by1, b_area = _corners(b, fmt)
    iw = np.maximum(0.0, np.minimum(ax1, bx1) - np.maximum(ax0, bx0))
    ih = np.maximum(0.0, np.minimum(ay1, by1) - np.maximum(ay0, by0))
    inter = iw * ih
    union = a_area + b_area - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def box_iou(a: Sequence[float] | None, b: Sequence[float] | None) -> float:
    """IoU of two xywh boxes; 0 when either is missing or empty."""
    if a is None or b is None:
        return 0.0
    return float(_iou(a, b, "xywh"))


def box_ious(a: Any, b: Any, fmt: str = "xywh") -> np.ndarray:
    """(len(a), len(b)) IoU of two arrays of boxes (N, 4) in `fmt` (xywh or xyxy)."""
    a = np.asarray(a, np.float64).reshape(-1, 4).T[:, :, None]
    b = np.asarray(b, np.float64).reshape(-1, 4).T[:, None, :]
    return _iou(a, b, fmt)


def box_areas(boxes: Any, fmt: str = "xywh") -> Any:
    """Area of a box (4,) or of each box (N, 4) in `fmt`: w * h of xywh boxes as given, of xyxy boxes with
    the sides clipped at 0."""
    return _corners(np.moveaxis(np.asarray(boxes, np.float64), -1, 0), fmt)[4]


def box_agreement(mask: np.ndarray, bbox: Sequence[float]) -> float:
    """IoU between the tight box of a mask and a given box (hybrid networks' validity, BoxCaseg's proxy)."""
    return box_iou(mask_box(mask), bbox)


def crop_agreement(crop: Crop, bbox: Sequence[float]) -> float:
    """`box_agreement` of a mask given as its crop, computed on the crop alone."""
    b = mask_box(crop.data) if crop.data.size else None
    return box_iou(None if b is None else [b[0] + crop.x, b[1] + crop.y, b[2], b[3]], bbox)


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of the foregrounds (value 1) of two masks; ignore (255) counts as background."""
    p, g = pred == 1, gt == 1
    union = np.count_nonzero(p | g)
    return float(np.count_nonzero(p & g) / union) if union else 0.0


def rle_encode(mask: np.ndarray) -> dict:
    """COCO compressed RLE (counts as str) of a mask's foreground."""
    rle = mask_utils.encode(np.asfortranarray((mask == 1).astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
    """Binary uint8 mask from a COCO RLE, compressed or not."""
    h, w = rle["size"]
    if isinstance(rle["counts"], list):
        rle = mask_utils.frPyObjects(dict(rle), h, w)
    elif isinstance(rle["counts"], str):
        rle = {"size": [h, w], "counts": rle["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(np.uint8)


def segmentation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Binary mask of a COCO segmentation: polygons, RLE or uncompressed RLE."""
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), np.uint8)
        rles = mask_utils.frPyObjects([list(map(float, p)) for p in segmentation if len(p) >= 6], height, width)
        return mask_utils.decode(mask_utils.merge(rles)).astype(np.uint8) if rles else np.zeros((height, width), np.uint8)
    return rle_decode(segmentation)


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a mask's foreground as COCO polygons."""
    contours, _ = cv2.findContours((mask == 1).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def size_bucket(area: float) -> str:
    """COCO size bucket of an area in pixels."""
    return "small" if area < 32 ** 2 else ("medium" if area < 96 ** 2 else "large")


def is_small(boxes: Any, size: float = 64, fmt: str = "xywh") -> Any:
    """Whether a box (4,) (a bool) or each box (N, 4) (an array) is smaller than size x size px by area: the
    hybrid networks' small instances (size 64)."""
    small = box_areas(boxes, fmt) < float(size) * float(size)
    return bool(small) if np.ndim(small) == 0 else small


def paste(crop_mask: np.ndarray, span: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    """Place a crop's mask back into a full-size mask, resizing it to the span with nearest neighbour."""
    x0, y0, x1, y1 = span
    out = np.zeros((height, width), np.uint8)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = cv2.resize(crop_mask.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    return out


__all__ = [
    "IGNORE", "box_pixels", "box_mask", "ellipse_mask", "mask_box", "box_iou", "box_ious", "box_areas",
    "box_agreement", "crop_agreement", "mask_iou", "rle_encode", "rle_decode", "segmentation_mask", "mask_polygons", "size_bucket",
    "is_small", "paste",
]
