"""A DUTS-style salient set (images/ and masks/ with matching stems) cut from true instance masks.

BoxCaseg's salient head learns what an object looks like inside a box from salient images; synthetic shapes do
not teach it real objects (on COCO images its fused output stays below the filled box). Object crops cut from
true masks (a strong subset, or another dataset's) look like the box crops it is applied to: one object filling
most of the crop, its box widened by a margin.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Collection, Mapping

import numpy as np

from ..images import read_image, write_image
from ..masks import segmentation_mask


def crop_window(bbox: tuple[float, float, float, float], margin: float, height: int,
                width: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of an xywh box widened by `margin` x its side on each side, clipped to the image."""
    x, y, w, h = bbox
    return (int(max(0, np.floor(x - margin * w))), int(max(0, np.floor(y - margin * h))),
            int(min(width, np.ceil(x + w + margin * w))), int(min(height, np.ceil(y + h + margin * h))))


def write_object_crops(coco: Mapping[str, Any], images: str | os.PathLike, out: str | os.PathLike,
                       image_ids: Collection[int] | None = None, margin: float = 0.1, min_side: int = 24) -> int:
    """Write one salient pair (out/images/cNNNNNN.png, out/masks/cNNNNNN.png, mask 0/255) per non-crowd instance
    with a mask and a box of at least `min_side` px a side, of the images `image_ids` (None: all); returns how
    many were written."""
    out, n = Path(out), 0
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for a in coco["annotations"]:
        if a.get("segmentation") and not a.get("iscrowd") and min(a["bbox"][2:]) >= min_side:
            by_image.setdefault(int(a["image_id"]), []).append(a)
    for im in coco["images"]:
        if im["id"] not in by_image or (image_ids is not None and im["id"] not in image_ids):
            continue
        rgb = read_image(Path(images) / im["file_name"])
        h, w = rgb.shape[:2]
        for a in by_image[im["id"]]:
            x0, y0, x1, y1 = crop_window(a["bbox"], margin, h, w)
            mask = segmentation_mask(a["segmentation"], h, w)[y0:y1, x0:x1]
            if not mask.any():
                continue
            n += 1
            write_image(out / "images" / f"c{n:06d}.png", rgb[y0:y1, x0:x1])
            write_image(out / "masks" / f"c{n:06d}.png", (mask > 0).astype(np.uint8) * 255)
    return n
