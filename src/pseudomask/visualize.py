"""Pictures of what a stage did: masks, boxes and ignore regions drawn over the image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .crops import Crop, MaskStack
from .images import ImageError, read_annotated_image
from .store import IGNORE, Artifact

STATUS_COLOURS = {"kept": (40, 200, 60), "invalid": (230, 160, 20), "dropped": (220, 60, 200),
                  "ignored": (150, 150, 150), "failed": (230, 30, 30)}


def palette(n: int, seed: int = 3) -> np.ndarray:
    """n distinct bright RGB colours (deterministic)."""
    hues = (np.arange(n) * 0.618033988749895 + seed * 0.1) % 1.0
    hsv = np.stack([hues * 179, np.full(n, 200), np.full(n, 255)], 1).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0].astype(np.uint8)


def hatch(height: int, width: int, period: int = 6) -> np.ndarray:
    """Diagonal stripes, the mark of ignore (255) pixels."""
    yy, xx = np.mgrid[0:height, 0:width]
    return ((xx + yy) % period) < period // 2


def scaled_crops(masks: np.ndarray | MaskStack, scale: int = 1) -> list[Crop]:
    """Each mask's crop (of a (K, H, W) array or a MaskStack), enlarged `scale` times (nearest neighbour)."""
    crops = list(masks.crops) if isinstance(masks, MaskStack) else [Crop.of(np.asarray(m)) for m in masks]
    if scale == 1:
        return crops
    return [Crop(c.y * scale, c.x * scale, cv2.resize(c.data, None, fx=scale, fy=scale,
                                                      interpolation=cv2.INTER_NEAREST) if c.data.size else c.data)
            for c in crops]


def paint_mask(out: np.ndarray, c: Crop, colour: np.ndarray, stripes: np.ndarray, alpha: float) -> None:
    """Fill one mask (its crop) into the float image `out` in place: colour, hatched ignore, outline."""
    if not c.data.size:
        return
    h, w = c.data.shape
    win, fg = out[c.y:c.y + h, c.x:c.x + w], c.data == 1
    win[fg] = (1 - alpha) * win[fg] + alpha * colour
    ign = (c.data == IGNORE) & stripes[c.y:c.y + h, c.x:c.x + w]
    win[ign] = 0.4 * win[ign] + 0.6 * 160
    # a 1-pixel frame: the outline of a mask touching its crop's border is found as in the whole frame
    contours, _ = cv2.findContours(np.pad(fg.astype(np.uint8), 1), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE,
                                   offset=(c.x - 1, c.y - 1))
    cv2.drawContours(out, contours, -1, tuple(int(v) for v in colour), 1)


def overlay(rgb: np.ndarray, masks: np.ndarray | MaskStack | None = None,
            boxes: Sequence[Sequence[float]] | None = None, labels: Sequence[str] | None = None,
            colours: np.ndarray | None = None, alpha: float = 0.5, scale: int = 1) -> np.ndarray:
    """Image with each mask ((K, H, W) or a MaskStack of crops) filled in its colour, ignore pixels hatched grey,
    boxes and labels drawn.

    `scale` enlarges small images (nearest neighbour) so that labels stay legible.
    """
    if scale > 1:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        boxes = [[v * scale for v in b] for b in boxes] if boxes is not None else None
    out = rgb.astype(np.float32).copy()
    h, w = rgb.shape[:2]
    n = len(masks) if masks is not None else len(boxes or [])
    colours = palette(n) if colours is None else np.asarray(colours, np.uint8)
    stripes = hatch(h, w)
    for k, c in enumerate(scaled_crops(masks, scale) if masks is not None else []):
        paint_mask(out, c, colours[k], stripes, alpha)
    out = np.clip(out, 0, 255).astype(np.uint8)
    for k, b in enumerate(boxes or []):
        x, y, bw, bh = (int(round(v)) for v in b)
        c = tuple(int(v) for v in colours[k % len(colours)]) if len(colours) else (255, 255, 0)
        cv2.rectangle(out, (x, y), (x + max(bw - 1, 0), y + max(bh - 1, 0)), c, 1)
        if labels:
            cv2.putText(out, labels[k], (x + 1, max(y - 3, 9)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(out, labels[k], (x + 1, max(y - 3, 9)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, c, 1, cv2.LINE_AA)
    return out


def render_artifact_image(artifact: Artifact, image_id: int, image_root: str | os.PathLike | None = None) -> np.ndarray:
    """One image of an artifact with its instances' masks, boxes and `category:status` labels."""
    im = artifact.image(image_id)
    root = Path(image_root or artifact.attrs.get("image_root", "."))
    try:
        rgb = read_annotated_image(root / im["file_name"], im)
    except ImageError:
        rgb = np.full((im["height"], im["width"], 3), 40, np.uint8)  # still show the masks
    recs = artifact.records(image_id)
    names = {c["id"]: c["name"] for c in artifact.categories}
    labels = [f"{names.get(r['category_id'], r['category_id'])}:{r['status']}" for r in recs]
    masks = artifact.mask_stack(image_id) if artifact.has_masks() else None
    return overlay(rgb, masks, [r["bbox"] for r in recs], labels, scale=max(1, 640 // max(im["width"], 1)))
