"""Quality of pseudo masks against ground truth.

A prediction is an artifact (.h5) or a COCO dataset JSON of pseudo masks (what `export` writes). How it is
scored depends on what its instances are:

- *id-matched* (box supervision: the instances carry the ground truth's annotation ids): per-instance mask
  IoU, mIoU by COCO size, and the hybrid-networks invalid rate (box agreement < 0.5) split at 64x64 px;
  nothing is matched by guesswork;
- *tag-only* (tag supervision: instances with a `cam_score`, or none whose id is an annotation id): the
  masks are unmatched, scored predictions, ranked by `cam_score`, evaluated as detections
  (`detection_metrics`: VOC AP^r at .25/.5/.7/.75, ABO, COCO segm and bbox AP); see `evaluate_tag_only`.

Both add panoptic quality (PQ, SQ, RQ, things and stuff; `pseudomask.panoptic`) of the pseudo masks turned
into one panoptic segmentation per image against the ground truth's instance masks (where two true masks
overlap, the smaller box takes the pixels). True masks given as input (source `gt`) are never scored as
predictions: they are counted apart, left out of the predictions, and their ground truth left out (VOID for PQ).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from .crops import MaskStack
from .detection_metrics import evaluate_detections
from .errors import PseudomaskError, read_json
from .export import rows_and_masks
from .files import write_json
from .masks import box_agreement, is_small, mask_box, mask_iou, rle_encode, segmentation_mask, size_bucket
from .panoptic import (NOTHING, VOID, PanopticFile, image_panoptic, is_panoptic, is_stuff_row, panoptic_quality,
                       segment_map)
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
        self.crowd = {int(a["id"]): a for a in data.get("annotations", []) if a.get("iscrowd", 0)}
        self.categories = data.get("categories", [])
        self.isthing = {int(c["id"]): int(c.get("isthing", 1)) for c in self.categories}
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


def iter_predicted_masks(pred: str | os.PathLike | dict, gt: GroundTruth
                         ) -> Iterator[tuple[int, np.ndarray | None, str, str]]:
    """(annotation id, mask or None, status, source) for every instance of an artifact or COCO dataset;
    source `gt` marks a true mask given as input (`dataset.strong`), not a prediction."""
    if isinstance(pred, (str, os.PathLike)) and str(pred).endswith(".h5"):
        with Artifact(pred) as a:
            for image_id in a.image_ids:
                masks = a.masks(image_id) if a.has_masks() else None
                for k, r in enumerate(a.records(image_id)):
                    yield (int(r["id"]), (masks[k] if masks is not None else None), str(r["status"]),
                           str(r.get("source") or ""))
        return
    data = pred if isinstance(pred, dict) else json.loads(Path(pred).read_text())
    if not isinstance(data, dict) or "annotations" not in data:
        raise PseudomaskError(f"{pred}: expected an artifact (.h5) or a COCO dataset JSON of pseudo masks")
    for a in data["annotations"]:
        ann_id = int(a["id"])
        seg = a.get("segmentation")
        if ann_id not in gt.anns:
            yield ann_id, None, str(a.get("status", "kept")), str(a.get("source") or "")
            continue
        mask = segmentation_mask(seg, *gt.size(gt.anns[ann_id]["image_id"])) if seg else None
        yield ann_id, mask, str(a.get("status", "kept")), str(a.get("source") or "")


def instance_scores(pred: str | os.PathLike | dict, gt: GroundTruth) -> list[dict[str, Any]]:
    """One row per ground-truth instance: iou, box agreement, size bucket, small64, status, has_mask and
    true_mask (the input gave its true mask: not a prediction)."""
    rows: dict[int, dict[str, Any]] = {}
    unknown = 0
    for ann_id, mask, status, source in iter_predicted_masks(pred, gt):
        if ann_id not in gt.anns:
            unknown += 1
            continue
        g = gt.anns[ann_id]
        has = mask is not None and bool(np.any(mask == 1))
        rows[ann_id] = {"id": ann_id, "image_id": int(g["image_id"]), "category_id": int(g["category_id"]),
                        "status": status, "has_mask": has, "true_mask": source == "gt",
                        "iou": mask_iou(mask, gt.mask(ann_id)) if has else 0.0,
                        "box_agreement": box_agreement(mask, g["bbox"]) if has else 0.0}
    if unknown and not rows:
        raise PseudomaskError(f"{pred}: none of its instance ids are annotation ids of {gt.path}")
    for ann_id, g in gt.anns.items():
        rows.setdefault(ann_id, {"id": ann_id, "image_id": int(g["image_id"]), "category_id": int(g["category_id"]),
                                 "status": "missing", "has_mask": False, "true_mask": False, "iou": 0.0,
                                 "box_agreement": 0.0})
        rows[ann_id]["size"] = size_bucket(gt.area(ann_id))
        rows[ann_id]["small64"] = is_small(g["bbox"])
    return [rows[i] for i in sorted(rows)]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """mIoU overall and by COCO size, and invalid rates overall / small64 / large64, of the predicted masks
    (true masks given as input are counted apart, as `true_masks`)."""
    true = sum(bool(r.get("true_mask")) for r in rows)
    rows = [r for r in rows if not r.get("true_mask")]
    iou = [r["iou"] for r in rows]
    invalid = [r["box_agreement"] < INVALID_BELOW for r in rows]
    small = [v for r, v in zip(rows, invalid) if r["small64"]]
    large = [v for r, v in zip(rows, invalid) if not r["small64"]]
    return {
        "instances": len(rows),
        "true_masks": true,
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


class PseudoMasks:
    """The instances of an artifact or a pseudo-mask COCO JSON, image by image: rows (id, category_id, bbox,
    status, source, and cam_score / stuff where present) and masks as crops (1 foreground, 255 ignore)."""

    def __init__(self, pred: str | os.PathLike | dict, gt: GroundTruth | None = None):
        self.name = "<pseudo masks>" if isinstance(pred, dict) else str(pred)
        self._artifact: Artifact | None = None
        if isinstance(pred, (str, os.PathLike)) and str(pred).endswith(".h5"):
            self._artifact = Artifact(pred)
            self.categories = self._artifact.categories
            self.images = {i: self._artifact.image(i) for i in self._artifact.image_ids}
            return
        data = pred if isinstance(pred, dict) else read_json(pred, PseudomaskError, "pseudo-mask file")
        if not isinstance(data, dict) or "annotations" not in data:
            raise PseudomaskError(f"{self.name}: expected an artifact (.h5) or a COCO dataset JSON of pseudo masks")
        self.categories = data.get("categories", [])
        self.images = {int(im["id"]): im for im in data.get("images", [])}
        self._anns: dict[int, list[dict]] = {}
        for a in data["annotations"]:
            i = int(a["image_id"])
            if i not in self.images:
                if gt is None or i not in gt.images:
                    raise PseudomaskError(f"{self.name}: annotation {a.get('id')} refers to image {i}, which "
                                          "neither it nor the ground truth lists")
                self.images[i] = gt.images[i]
            self._anns.setdefault(i, []).append(a)

    @property
    def image_ids(self) -> list[int]:
        return sorted(self.images)

    def image(self, image_id: int) -> tuple[list[dict], MaskStack]:
        """One image's rows and masks, as crops (each decoded mask is cropped before the next one)."""
        im = self.images[int(image_id)]
        h, w = int(im["height"]), int(im["width"])
        if self._artifact is not None:
            return rows_and_masks(self._artifact, image_id)
        anns = self._anns.get(int(image_id), [])
        masks = MaskStack.zeros(len(anns), h, w)
        rows = []
        for k, a in enumerate(anns):
            m = np.zeros((h, w), np.uint8)
            if a.get("ignore_segmentation"):
                m[segmentation_mask(a["ignore_segmentation"], h, w) == 1] = 255
            if a.get("segmentation"):
                m[segmentation_mask(a["segmentation"], h, w) == 1] = 1
            masks[k] = m
            rows.append({"id": int(a["id"]), "category_id": int(a["category_id"]), "bbox": a.get("bbox", [0, 0, 0, 0]),
                         "status": str(a.get("status", "ignored" if a.get("iscrowd", 0) else "kept")),
                         "source": str(a.get("source") or ""), "cam_score": a.get("cam_score"),
                         "stuff": a.get("stuff")})
        return rows, masks

    def rows(self) -> Iterator[dict]:
        """Every row (with image_id), without decoding masks."""
        if self._artifact is not None:
            for image_id in self.image_ids:
                for r in self._artifact.records(image_id):
                    yield {**r, "image_id": image_id}
            return
        for image_id, anns in self._anns.items():
            for a in anns:
                yield {**a, "image_id": image_id, "source": str(a.get("source") or "")}

    def close(self) -> None:
        if self._artifact is not None:
            self._artifact.close()

    def __enter__(self) -> "PseudoMasks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _has(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def is_tag_only(pm: PseudoMasks, gt: GroundTruth) -> bool:
    """True when the predicted (not given) instances are tag-only: some carry a `cam_score`, or none has the id
    of a ground-truth annotation."""
    rows = [r for r in pm.rows() if r.get("source") != "gt"]
    return any(_has(r.get("cam_score")) for r in rows) or not any(int(r["id"]) in gt.anns for r in rows)


def scored_results(pm: PseudoMasks, stuff_categories: Iterable[int] = ()) -> tuple[list[dict], dict[str, int]]:
    """COCO results list of the predicted masks of `pm`: kept, non-empty, not given (source gt), not stuff; score
    = `cam_score` (1 where a row has none); and counts of what was left out."""
    stuff = set(stuff_categories)
    res: list[dict] = []
    counts = Counter()
    for image_id in pm.image_ids:
        rows, masks = pm.image(image_id)
        for r, m in zip(rows, masks):
            if r.get("source") == "gt":
                counts["true_masks"] += 1
            elif is_stuff_row(r, stuff):
                counts["stuff_regions"] += 1
            elif str(r["status"]) != "kept" or not (m == 1).any():
                counts["not_kept"] += 1
            else:
                score = float(r["cam_score"]) if _has(r.get("cam_score")) else 1.0
                res.append({"image_id": int(image_id), "category_id": int(r["category_id"]),
                            "segmentation": rle_encode(m), "bbox": mask_box(m), "score": score})
    return res, {k: int(counts[k]) for k in ("true_masks", "stuff_regions", "not_kept")}


def evaluate_tag_only(pred: str | os.PathLike | dict | PseudoMasks, gt_json: str | os.PathLike | dict,
                      image_ids: Iterable[int] | None = None) -> dict[str, Any]:
    """Tag-only pseudo masks as unmatched scored predictions (ranked by `cam_score`) against the true masks:
    apr_25, apr_50, apr_70, apr_75, abo, segm_AP..segm_APl, bbox_AP..bbox_APl (`detection_metrics`), over the
    ground truth's images (or `image_ids`), plus the counts `predictions`, `gt_instances`, `true_masks`,
    `stuff_regions` and `not_kept`. Ground truth of stuff categories (`isthing` 0) and of the instances whose true
    mask was given (source gt, same id) is left out, and so are the given and stuff rows of the prediction."""
    data = read_json(gt_json, PseudomaskError, "ground truth") if not isinstance(gt_json, dict) else gt_json
    pm = pred if isinstance(pred, PseudoMasks) else PseudoMasks(pred)
    try:
        stuff = {int(c["id"]) for c in data.get("categories", []) if not int(c.get("isthing", 1))}
        stuff |= {int(c["id"]) for c in pm.categories if not int(c.get("isthing", 1))}
        given = {int(r["id"]) for r in pm.rows() if r.get("source") == "gt"}
        results, counts = scored_results(pm, stuff)
    finally:
        if pm is not pred:
            pm.close()
    truth = {**data, "annotations": [a for a in data.get("annotations", [])
                                     if int(a["category_id"]) not in stuff and int(a["id"]) not in given]}
    if image_ids is not None:  # else a result on an image the ground truth lacks is an error naming it
        known = set(image_ids)
        results = [r for r in results if r["image_id"] in known]
    ev = evaluate_detections(truth, results, image_ids)
    ev["predictions"] = ev.pop("detections")
    return {"mode": "tag_only", **ev, **counts}


class _TruthPanoptic:
    """Panoptic source (see panoptic.PanopticFile) of a ground truth's instance masks: non-crowd masks are
    segments (where two overlap the smaller box wins: `panoptic.segment_map`), crowd masks crowd segments where
    no other segment is, the instances in `given` (true masks given as input) VOID, and the rest one
    background segment (category
    `panoptic.NOTHING`: a prediction there is a false positive). `annotated`: the categories it has masks of."""

    def __init__(self, gt: GroundTruth, given: Iterable[int] = ()):
        self.gt = gt
        self.isthing = gt.isthing
        self.image_ids = sorted(gt.images)
        self.given = set(given)
        self._by_image: dict[int, list[dict]] = {}
        for a in list(gt.anns.values()) + list(gt.crowd.values()):
            self._by_image.setdefault(int(a["image_id"]), []).append(a)
        self.annotated = {int(a["category_id"]) for a in gt.anns.values()}

    def image(self, image_id: int) -> tuple[np.ndarray, list[dict]]:
        h, w = self.gt.size(image_id)
        anns = self._by_image.get(int(image_id), [])
        real = [a for a in anns if not a.get("iscrowd", 0)]
        crowd = [a for a in anns if a.get("iscrowd", 0) and a.get("segmentation")]
        masks = MaskStack.zeros(len(real), h, w)  # as crops: K true masks, not K frames
        for k, a in enumerate(real):
            masks[k] = segmentation_mask(a["segmentation"], h, w)
        ids = segment_map(masks, [a["bbox"] for a in real], (h, w))
        void = np.zeros((h, w), bool)
        for k, a in enumerate(real):
            if int(a["id"]) in self.given:
                void |= masks[k] == 1
        ids[void] = VOID
        segs = [{"id": k + 1, "category_id": int(a["category_id"]), "iscrowd": 0} for k, a in enumerate(real)]
        for j, a in enumerate(crowd):
            sid = len(real) + j + 1
            ids[(segmentation_mask(a["segmentation"], h, w) == 1) & (ids == VOID) & ~void] = sid
            segs.append({"id": sid, "category_id": int(a["category_id"]), "iscrowd": 1})
        background = (ids == VOID) & ~void
        if background.any():
            ids[background] = len(segs) + 1
            segs.append({"id": len(segs) + 1, "category_id": NOTHING, "iscrowd": 0})
        return ids, segs


class _PseudoPanoptic:
    """Panoptic source of pseudo masks (`panoptic.image_panoptic`, given true masks VOID); `isthing` is 0 for
    its stuff categories (isthing 0 in the ground truth or the pseudo masks, or rows flagged `stuff`)."""

    def __init__(self, pm: PseudoMasks, isthing: Mapping[int, int]):
        self.pm = pm
        self.image_ids = pm.image_ids
        self.stuff = {c for c, t in isthing.items() if not t} | {
            int(c["id"]) for c in pm.categories if not int(c.get("isthing", 1))}
        self.stuff |= {int(r["category_id"]) for r in pm.rows() if is_stuff_row(r, self.stuff)}
        self.isthing = {int(c["id"]): int(int(c["id"]) not in self.stuff) for c in pm.categories}

    def image(self, image_id: int) -> tuple[np.ndarray, list[dict]] | None:
        if int(image_id) not in self.pm.images:
            return None
        return image_panoptic(*self.pm.image(image_id), stuff_categories=self.stuff, given_void=True)


def pseudo_panoptic_quality(pm: PseudoMasks, gt: GroundTruth) -> dict[str, Any]:
    """PQ of pseudo masks (made one panoptic segmentation per image) against the ground truth's instance masks."""
    given = {int(r["id"]) for r in pm.rows() if r.get("source") == "gt"}
    return panoptic_quality(_PseudoPanoptic(pm, gt.isthing), _TruthPanoptic(gt, given))


def evaluate_pseudo(pred: str | os.PathLike | dict, gt_json: str | os.PathLike,
                    panoptic: bool = True) -> dict[str, Any]:
    """Pseudo-mask quality of `pred` against the masks of `gt_json`: id-matched (mIoU, invalid rates) or tag-only
    (AP^r, ABO, COCO AP; see the module docstring), as `mode` says; with `panoptic` also PQ, SQ, RQ."""
    gt = GroundTruth(gt_json)
    with PseudoMasks(pred, gt) as pm:
        if is_tag_only(pm, gt):
            out = evaluate_tag_only(pm, gt_json)
        else:
            out = {"mode": "id_matched", **summarize(instance_scores(pred, gt))}
        if panoptic:
            out.update(pseudo_panoptic_quality(pm, gt))
    return out


def _panoptic_file(path: str | os.PathLike):
    """A PanopticFile when `path` is a COCO panoptic JSON, else None."""
    if str(path).endswith(".h5"):
        return None
    data = read_json(path, PseudomaskError, "JSON file")
    return PanopticFile(path, data) if is_panoptic(data) else None


def evaluate_panoptic(pred: str | os.PathLike, gt_json: str | os.PathLike) -> dict[str, Any] | None:
    """PQ, SQ, RQ when either side is COCO panoptic (JSON + PNG folder): a panoptic prediction against panoptic
    or instance ground truth, or pseudo masks against panoptic ground truth; None when neither is panoptic."""
    gt_pan, pred_pan = _panoptic_file(gt_json), _panoptic_file(pred)
    if gt_pan is None and pred_pan is None:
        return None
    if is_detection_results(pred):
        raise PseudomaskError(f"{pred}: detections overlap, they have no panoptic quality; {gt_json} is panoptic")
    gt = gt_pan if gt_pan is not None else _TruthPanoptic(GroundTruth(gt_json))
    if pred_pan is not None:
        return {"mode": "panoptic", **panoptic_quality(pred_pan, gt)}
    with PseudoMasks(pred) as pm:
        return {"mode": "panoptic", **panoptic_quality(_PseudoPanoptic(pm, gt.isthing), gt)}


def is_detection_results(path: str | os.PathLike) -> bool:
    """True for a COCO results list (scored detections), false for a dataset JSON or an artifact."""
    p = Path(path)
    if p.suffix == ".h5":
        return False
    with open(p) as fh:
        head = fh.read(4096).lstrip()
    return head.startswith("[")


def run_stage(s: EvaluateSettings, *, pseudo: str, ground_truth: str, out: str, threads: int = 1) -> dict:
    """The `evaluate_masks` stage (see pseudomask.registry)."""
    result = evaluate_pseudo(pseudo, ground_truth)
    write_json(result, out, indent=2)
    return result
