"""Pictures of what a stage did: masks, boxes and ignore regions drawn over the image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

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


def overlay(rgb: np.ndarray, masks: np.ndarray | None = None, boxes: Sequence[Sequence[float]] | None = None,
            labels: Sequence[str] | None = None, colours: np.ndarray | None = None, alpha: float = 0.5,
            scale: int = 1) -> np.ndarray:
    """Image with each mask filled in its colour, ignore pixels hatched grey, boxes and labels drawn.

    `scale` enlarges small images (nearest neighbour) so that labels stay legible.
    """
    if scale > 1:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        if masks is not None and len(masks):
            masks = np.stack([cv2.resize(m, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) for m in masks])
        boxes = [[v * scale for v in b] for b in boxes] if boxes is not None else None
    out = rgb.astype(np.float32).copy()
    h, w = rgb.shape[:2]
    n = len(masks) if masks is not None else len(boxes or [])
    colours = palette(n) if colours is None else np.asarray(colours, np.uint8)
    stripes = hatch(h, w)
    if masks is not None:
        for k, m in enumerate(masks):
            fg = m == 1
            out[fg] = (1 - alpha) * out[fg] + alpha * colours[k]
            ign = (m == IGNORE) & stripes
            out[ign] = 0.4 * out[ign] + 0.6 * 160
            contours, _ = cv2.findContours(fg.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, tuple(int(c) for c in colours[k]), 1)
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
    masks = artifact.masks(image_id) if artifact.has_masks() else None
    return overlay(rgb, masks, [r["bbox"] for r in recs], labels, scale=max(1, 640 // max(im["width"], 1)))
