"""Artifacts for the annotation tests: the demo's true masks written as a mask stage's artifact with chosen
qualities and statuses, and a hand-made image whose merge ate a mask (real HDF5 through ArtifactWriter)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from pseudomask.images import write_image
from pseudomask.masks import rle_decode
from pseudomask.merge_drop import MergeDropSettings, merge_drop_image, method
from pseudomask.store import ArtifactWriter


def pseudo_artifact(demo: Path, out: Path, quality: Callable[[dict], float] | None = None,
                    status: Mapping[int, str] | None = None, source: Mapping[int, str] | None = None,
                    stage: str = "merge_drop") -> Path:
    """A `stage` artifact of the demo (annotations.json + images/) whose masks are the true masks; `quality`
    gives each instance's quality (default 0.5), `status` and `source` override rows by instance id (a
    failed instance gets an empty mask)."""
    data = json.loads((demo / "annotations.json").read_text())
    status, source = dict(status or {}), dict(source or {})
    by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    with ArtifactWriter(out, stage=stage, method="test", categories=data["categories"],
                        attrs={"image_root": str((demo / "images").resolve()), "quality_predictor": "test"}) as w:
        for im in data["images"]:
            rows, masks = [], []
            for a in by_image.get(im["id"], []):
                st = status.get(a["id"], "kept")
                m = rle_decode(a["segmentation"]) if st != "failed" else np.zeros((im["height"], im["width"]), np.uint8)
                q = float("nan") if st in ("failed", "ignored") else (quality(a) if quality else 0.5)
                rows.append({"id": a["id"], "category_id": a["category_id"], "bbox": [float(v) for v in a["bbox"]],
                             "status": st, "reason": "", "quality": q, "source": source.get(a["id"], ""),
                             "proxy_box_iou": 1.0})
                masks.append(m)
            w.add_image(im, rows, np.asarray(masks, np.uint8).reshape(len(rows), im["height"], im["width"]))
    return out


EATEN_SIZE = (48, 64)  # height, width of eaten_artifact's image
EATEN_THRESHOLD = 0.9  # its merge_drop threshold, below merge_drop's default


def eaten_artifact(out: Path) -> tuple[Path, dict[int, list[float]], dict[int, np.ndarray]]:
    """A merge_drop artifact of one hand-made image (id 1, written under out's folder), merged and dropped by
    `merge_drop_image` with criterion quality and threshold EATEN_THRESHOLD; returns it, the given boxes and
    the merged masks by instance id:

    - 11 truck, box 24x7: cars 12 and 13 (smaller boxes) eat all of its mask but the pixel (33, 26); its
      1x1 remnant is dropped (low predicted quality);
    - 12, 13 cars: masks that fill their boxes (13 less one corner pixel), kept;
    - 14 person: kept (high predicted quality) though its mask fills only the left half of its box
      (proxy box IoU 0.5: the mask's box disagrees with the given box);
    - 15 sign: kept, its mask's box 23 of its box's 25 px wide (proxy box IoU 0.92: agrees at 0.9, would not at
      merge_drop's default)."""
    h, w = EATEN_SIZE
    boxes = {11: [10, 20, 24, 7], 12: [10, 20, 12, 7], 13: [22, 20, 12, 7], 14: [40, 2, 20, 16],
             15: [36, 30, 25, 10]}
    fills = {11: (20, 27, 10, 34), 12: (20, 27, 10, 22), 13: (20, 27, 22, 34), 14: (2, 18, 40, 50),
             15: (30, 40, 36, 59)}  # y0, y1, x0, x1 of each source mask
    masks = np.zeros((len(boxes), h, w), np.uint8)
    for k, (y0, y1, x0, x1) in enumerate(fills.values()):
        masks[k, y0:y1, x0:x1] = 1
    masks[2, 26, 33] = 0  # car 13 leaves the truck one pixel
    rows = [{"id": i, "category_id": 1 + (i in (12, 13)), "bbox": [float(v) for v in b], "status": "kept",
             "reason": ""} for i, b in boxes.items()]

    def quality(rows: list[dict], merged) -> np.ndarray:
        return np.array([0.1 if r["id"] == 11 else 0.9 for r in rows])

    s = MergeDropSettings(threshold=EATEN_THRESHOLD, criterion="quality", rule="smaller_box")
    merged, rows = merge_drop_image(masks, rows, s, source="grabcut", quality=quality)
    image = {"id": 1, "file_name": "eaten.png", "width": w, "height": h}
    write_image(out.parent / "images" / image["file_name"], np.full((h, w, 3), 128, np.uint8))
    params = {"threshold": EATEN_THRESHOLD, "criterion": "quality", "quality_threshold": 0.7, "model": "test",
              "rule": "smaller_box", "source_stage": "grabcut", "source_method": "hand"}
    with ArtifactWriter(out, stage="merge_drop", method=method("smaller_box", "quality"), params=params,
                        categories=[{"id": 1, "name": "thing"}, {"id": 2, "name": "car"}],
                        attrs={"image_root": str((out.parent / "images").resolve()), "source_stage": "grabcut"}) as wr:
        wr.add_image(image, rows, merged)
    return out, {r["id"]: r["bbox"] for r in rows}, {r["id"]: merged[k] for k, r in enumerate(rows)}
