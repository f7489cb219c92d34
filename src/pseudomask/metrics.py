"""Quality of pseudo masks against ground truth: per-instance mask IoU, mIoU by COCO size, and the
hybrid-networks invalid rate (box agreement < 0.5), split at 64x64 px.

A prediction is an artifact (.h5) or a COCO dataset JSON whose annotation ids are the ground truth's
(what `export` writes); instances are matched by id, so nothing is matched by guesswork.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import PseudomaskError
from .masks import box_agreement, is_small64, mask_iou, segmentation_mask, size_bucket
from .settings import Settings
from .store import Artifact

INVALID_BELOW = 0.5


@dataclass(frozen=True)
class EvaluateSettings(Settings):
    """No settings: the metrics are fixed (mIoU by size, AP^r, ABO; COCO AP for detections)."""

    SECTION = "evaluate"


class GroundTruth:
    """A COCO instances JSON with true masks, read once; masks decode per annotation on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise PseudomaskError(f"{self.path}: cannot read ground truth ({e})") from None
        self.images = {int(im["id"]): im for im in data.get("images", [])}
        self.anns = {int(a["id"]): a for a in data.get("annotations", []) if not a.get("iscrowd", 0)}
        self.categories = data.get("categories", [])
        missing = [i for i, a in self.anns.items() if "segmentation" not in a]
        if missing:
            raise PseudomaskError(f"{self.path}: annotation {missing[0]} (and {len(missing) - 1} more) has no "
                                  "segmentation; mask quality needs ground-truth masks")

    def size(self, image_id: int) -> tuple[int, int]:
        im = self.images[int(image_id)]
        return int(im["height"]), int(im["width"])

    def mask(self, ann_id: int) -> np.ndarray:
        a = self.anns[int(ann_id)]
        return segmentation_mask(a["segmentation"], *self.size(a["image_id"]))

    def area(self, ann_id: int) -> float:
        a = self.anns[int(ann_id)]
        return float(a["area"]) if "area" in a else float(self.mask(ann_id).sum())


def iter_predicted_masks(pred: str | os.PathLike | dict, gt: GroundTruth) -> Iterator[tuple[int, np.ndarray | None, str]]:
    """(annotation id, mask or None, status) for every predicted instance of an artifact or COCO dataset."""
    if isinstance(pred, (str, os.PathLike)) and str(pred).endswith(".h5"):
        with Artifact(pred) as a:
            for image_id in a.image_ids:
                masks = a.masks(image_id) if a.has_masks() else None
                for k, r in enumerate(a.records(image_id)):
                    yield int(r["id"]), (masks[k] if masks is not None else None), str(r["status"])
        return
    data = pred if isinstance(pred, dict) else json.loads(Path(pred).read_text())
    if not isinstance(data, dict) or "annotations" not in data:
        raise PseudomaskError(f"{pred}: expected an artifact (.h5) or a COCO dataset JSON of pseudo masks")
    for a in data["annotations"]:
        ann_id = int(a["id"])
        seg = a.get("segmentation")
        if ann_id not in gt.anns:
            yield ann_id, None, str(a.get("status", "kept"))
            continue
        mask = segmentation_mask(seg, *gt.size(gt.anns[ann_id]["image_id"])) if seg else None
        yield ann_id, mask, str(a.get("status", "kept"))


def instance_scores(pred: str | os.PathLike | dict, gt: GroundTruth) -> list[dict[str, Any]]:
    """One row per ground-truth instance: iou, box agreement, size bucket, small64, status, has_mask."""
    rows: dict[int, dict[str, Any]] = {}
    unknown = 0
    for ann_id, mask, status in iter_predicted_masks(pred, gt):
        if ann_id not in gt.anns:
            unknown += 1
            continue
        g = gt.anns[ann_id]
        has = mask is not None and bool(np.any(mask == 1))
        rows[ann_id] = {"id": ann_id, "image_id": int(g["image_id"]), "category_id": int(g["category_id"]),
                        "status": status, "has_mask": has,
                        "iou": mask_iou(mask, gt.mask(ann_id)) if has else 0.0,
                        "box_agreement": box_agreement(mask, g["bbox"]) if has else 0.0}
    if unknown and not rows:
        raise PseudomaskError(f"{pred}: none of its instance ids are annotation ids of {gt.path}")
    for ann_id, g in gt.anns.items():
        rows.setdefault(ann_id, {"id": ann_id, "image_id": int(g["image_id"]), "category_id": int(g["category_id"]),
                                 "status": "missing", "has_mask": False, "iou": 0.0, "box_agreement": 0.0})
        rows[ann_id]["size"] = size_bucket(gt.area(ann_id))
        rows[ann_id]["small64"] = is_small64(g["bbox"])
    return [rows[i] for i in sorted(rows)]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """mIoU overall and by COCO size, and invalid rates overall / small64 / large64."""
    iou = [r["iou"] for r in rows]
    invalid = [r["box_agreement"] < INVALID_BELOW for r in rows]
    small = [v for r, v in zip(rows, invalid) if r["small64"]]
    large = [v for r, v in zip(rows, invalid) if not r["small64"]]
    return {
        "instances": len(rows),
        "with_mask": int(sum(r["has_mask"] for r in rows)),
        "miou": _mean(iou),
        **{f"miou_{b}": _mean([r["iou"] for r in rows if r["size"] == b]) for b in ("small", "medium", "large")},
        "invalid_rate": _mean([float(v) for v in invalid]),
        "invalid_rate_small64": _mean([float(v) for v in small]),
        "invalid_rate_large64": _mean([float(v) for v in large]),
        "instances_small64": len(small),
        "instances_large64": len(large),
        "status": dict(Counter(r["status"] for r in rows)),
    }


def evaluate_pseudo(pred: str | os.PathLike | dict, gt_json: str | os.PathLike) -> dict[str, Any]:
    """Summary of pseudo-mask quality of `pred` against the masks of `gt_json`."""
    return summarize(instance_scores(pred, GroundTruth(gt_json)))


def is_detection_results(path: str | os.PathLike) -> bool:
    """True for a COCO results list (scored detections), false for a dataset JSON or an artifact."""
    p = Path(path)
    if p.suffix == ".h5":
        return False
    with open(p) as fh:
        head = fh.read(4096).lstrip()
    return head.startswith("[")


def run_stage(s: EvaluateSettings, *, pseudo: str, ground_truth: str, out: str, threads: int = 1) -> dict:
    """The `evaluate_masks` stage (see pseudomask.stages)."""
    from .files import write_json

    result = evaluate_pseudo(pseudo, ground_truth)
    write_json(result, out, indent=2)
    return result
