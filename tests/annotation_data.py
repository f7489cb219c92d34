"""Artifacts for the annotation tests: the demo's true masks written as a mask stage's artifact with chosen
qualities and statuses (real HDF5 through ArtifactWriter, real demo images)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from pseudomask.masks import rle_decode
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
