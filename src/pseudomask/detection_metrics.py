"""Detector evaluation: COCO segm/bbox AP (pycocotools), VOC-style AP^r and ABO, from a GT COCO JSON and a
COCO results list (what `pseudomask predict` writes and `COCO.loadRes` reads).

All values are fractions in [0, 1]. A metric that is undefined for the data (no ground truth of that size,
no masks in the results) is None, not pycocotools' -1.

- `segm_*`, `bbox_*`: COCO AP, AP50, AP75, APs, APm, APl (pycocotools COCOeval, 100 detections per image).
- `apr_25`, `apr_50`, `apr_70`, `apr_75`: VOC-style AP^r (Hariharan et al., used by the hybrid-networks and
  weakly/semi panoptic papers): per class, detections ranked by score are matched greedily to the unmatched
  ground-truth mask of that class with the highest mask IoU; a match at IoU >= t is a true positive; AP is
  the area under the monotone precision envelope (VOC 2010+), averaged over classes that have ground truth.
  Detections whose best overlap is a crowd region count neither way.
- `abo`: average best overlap (Pont-Tuset et al.): for each non-crowd ground-truth instance, the best mask
  IoU with any predicted mask of its class in its image (0 when there is none), averaged over instances.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .errors import PseudomaskError
from .files import write_json

APR_THRESHOLDS = {"apr_25": 0.25, "apr_50": 0.5, "apr_70": 0.7, "apr_75": 0.75}
COCO_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class MetricsError(PseudomaskError, ValueError):
    """Ground truth or results that cannot be evaluated; names the file and the record."""


def _load(obj: Any, what: str) -> tuple[Any, str]:
    """A JSON document from a path, or the object itself; with a name for messages."""
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        try:
            return json.loads(path.read_text()), str(path)
        except FileNotFoundError:
            raise MetricsError(f"{path}: {what} file not found") from None
        except json.JSONDecodeError as e:
            raise MetricsError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return obj, f"<{what}>"


def load_ground_truth(gt_json: Any) -> tuple[COCO, str]:
    """pycocotools COCO of a GT file or dict; checks the fields evaluation needs."""
    data, name = _load(gt_json, "ground truth")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise MetricsError(f"{name}: not a COCO dataset (no 'images' list)")
    data = dict(data)
    data.setdefault("categories", [])
    anns = []
    for i, a in enumerate(data.get("annotations", [])):
        if not all(k in a for k in ("id", "image_id", "category_id", "bbox")):
            raise MetricsError(f"{name}: annotations[{i}] lacks 'id', 'image_id', 'category_id' or 'bbox'")
        a = dict(a)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
        anns.append(a)
    data["annotations"] = anns
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, name


def check_results(results: Sequence[Mapping], gt: COCO, name: str) -> list[dict]:
    """Validate a COCO results list against its ground truth; returns plain dicts."""
    if not isinstance(results, list):
        raise MetricsError(f"{name}: a COCO results list is expected, got {type(results).__name__}")
    images, cats = set(gt.getImgIds()), set(gt.getCatIds())
    out = []
    for i, r in enumerate(results):
        if not isinstance(r, Mapping) or not all(k in r for k in ("image_id", "category_id", "score")):
            raise MetricsError(f"{name}: result {i} lacks 'image_id', 'category_id' or 'score'")
        if "bbox" not in r and "segmentation" not in r:
            raise MetricsError(f"{name}: result {i} has neither 'bbox' nor 'segmentation'")
        if r["image_id"] not in images:
            raise MetricsError(f"{name}: result {i} refers to image {r['image_id']}, not in the ground truth")
        if r["category_id"] not in cats:
            raise MetricsError(f"{name}: result {i} has category {r['category_id']}, not in the ground truth")
        if not isinstance(r["score"], (int, float)) or not math.isfinite(r["score"]):
            raise MetricsError(f"{name}: result {i} has a non-finite score {r['score']!r}")
        out.append(dict(r))
    return out


def _undefined(v: float) -> float | None:
    return None if v < 0 else float(v)


def coco_ap(gt: COCO, results: list[dict], iou_type: str, image_ids: Iterable[int] | None = None) -> dict:
    """COCO AP, AP50, AP75, APs, APm, APl of one iou type ('segm' or 'bbox')."""
    key = "segmentation" if iou_type == "segm" else "bbox"
    if iou_type == "segm" and any("segmentation" not in a for a in gt.dataset["annotations"]):
        return {f"{iou_type}_{n}": None for n in COCO_NAMES}
    other = "bbox" if iou_type == "segm" else "segmentation"
    # one geometry per run, so that loadRes takes areas from it (mask area for segm, box area for bbox)
    dets = [{k: v for k, v in r.items() if k != other} for r in results if key in r]
    if results and not dets:
        return {f"{iou_type}_{n}": None for n in COCO_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        if dets:
            dt = gt.loadRes(dets)
        else:  # loadRes cannot take an empty list; no detections: every defined AP is zero
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats[:6]
    return {f"{iou_type}_{n}": _undefined(s) for n, s in zip(COCO_NAMES, stats)}


def voc_ap(tp: np.ndarray, n_gt: int) -> float:
    """Area under the monotone precision envelope of a ranked list of true/false positives (VOC 2010+)."""
    if n_gt == 0:
        return float("nan")
    if tp.size == 0:
        return 0.0
    ctp = np.cumsum(tp)
    cfp = np.cumsum(1 - tp)
    rec = np.concatenate([[0.0], ctp / n_gt, [1.0]])
    prec = np.concatenate([[0.0], ctp / np.maximum(ctp + cfp, 1e-12), [0.0]])
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    idx = np.flatnonzero(rec[1:] != rec[:-1])
    return float(np.sum((rec[idx + 1] - rec[idx]) * prec[idx + 1]))


def _rle(seg: Any, h: int, w: int) -> dict:
    """pycocotools RLE of a polygon, RLE or uncompressed-RLE segmentation."""
    if isinstance(seg, list):
        polys = [p for p in seg if len(p) >= 6]
        if not polys:
            return mask_utils.encode(np.zeros((h, w), np.uint8, order="F"))
        return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    if isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(dict(seg), h, w)
    counts = seg["counts"]
    return {"size": list(seg["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def mask_overlaps(gt: COCO, results: list[dict], image_ids: Iterable[int]) -> dict:
    """Per (image, category): detection scores, IoU matrix (dets x GT) and GT crowd flags."""
    by_key: dict[tuple[int, int], list[dict]] = {}
    for r in results:
        by_key.setdefault((r["image_id"], r["category_id"]), []).append(r)
    out = {}
    for img_id in image_ids:
        im = gt.imgs[img_id]
        h, w = int(im["height"]), int(im["width"])
        anns_by_cat: dict[int, list[dict]] = {}
        for a in gt.imgToAnns.get(img_id, []):
            anns_by_cat.setdefault(a["category_id"], []).append(a)
        for cat in set(anns_by_cat) | {c for (i, c) in by_key if i == img_id}:
            anns = anns_by_cat.get(cat, [])
            dets = sorted(by_key.get((img_id, cat), []), key=lambda r: -r["score"])
            crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
            if dets and anns:
                g = [_rle(a["segmentation"], h, w) for a in anns]
                d = [_rle(r["segmentation"], h, w) for r in dets]
                ious = np.asarray(mask_utils.iou(d, g, crowd.astype(np.uint8).tolist()), float)
                ious = ious.reshape(len(dets), len(anns))
            else:
                ious = np.zeros((len(dets), len(anns)))
            out[(img_id, cat)] = (np.array([r["score"] for r in dets], float), ious, crowd)
    return out


def _match_voc(scores: np.ndarray, ious: np.ndarray, crowd: np.ndarray, t: float) -> tuple[list, list]:
    """VOC matching in one image and class: each detection (by score) takes the non-crowd GT it overlaps
    most; a true positive if that IoU >= t and the GT is still free, else a false positive, except that a
    detection on a crowd region (IoU >= t) is left out."""
    taken = np.zeros(len(crowd), bool)
    kept_scores, tp = [], []
    real = np.flatnonzero(~crowd)
    for k in np.argsort(-scores, kind="stable"):
        j = real[int(np.argmax(ious[k, real]))] if real.size else -1
        if j >= 0 and ious[k, j] >= t:
            hit = not taken[j]
            taken[j] = True
        elif crowd.any() and ious[k, crowd].max() >= t:
            continue
        else:
            hit = False
        kept_scores.append(scores[k])
        tp.append(1.0 if hit else 0.0)
    return kept_scores, tp


def apr(overlaps: Mapping, thresholds: Mapping[str, float]) -> dict:
    """VOC-style mean AP^r over classes with ground truth, one value per threshold."""
    cats = sorted({c for (_, c) in overlaps})
    result = {}
    for name, t in thresholds.items():
        aps = []
        for cat in cats:
            scores, tp, n_gt = [], [], 0
            for (_, c), (s, ious, crowd) in overlaps.items():
                if c != cat:
                    continue
                n_gt += int((~crowd).sum())
                ks, kt = _match_voc(s, ious, crowd, t)
                scores += ks
                tp += kt
            if n_gt == 0:
                continue
            order = np.argsort(-np.asarray(scores, float), kind="stable")
            aps.append(voc_ap(np.asarray(tp, float)[order], n_gt))
        result[name] = float(np.mean(aps)) if aps else None
    return result


def abo(overlaps: Mapping) -> float | None:
    """Average over non-crowd GT instances of the best IoU with a predicted mask of the same class."""
    best = []
    for (_, _), (_, ious, crowd) in overlaps.items():
        for j in np.flatnonzero(~crowd):
            best.append(float(ious[:, j].max()) if ious.shape[0] else 0.0)
    return float(np.mean(best)) if best else None


def evaluate_detections(gt_json: Any, results_json: Any, image_ids: Iterable[int] | None = None) -> dict:
    """All detector metrics of a COCO results list (path or list) against a GT COCO JSON (path or dict).

    Returns segm_AP..segm_APl, bbox_AP..bbox_APl, apr_25, apr_50, apr_70, apr_75, abo (fractions or None),
    plus counts: images, gt_instances, detections.
    """
    gt, _ = load_ground_truth(gt_json)
    data, name = _load(results_json, "results")
    results = check_results(data, gt, name)
    ids = sorted(gt.getImgIds() if image_ids is None else image_ids)
    out: dict[str, Any] = {}
    out.update(coco_ap(gt, results, "segm", ids))
    out.update(coco_ap(gt, results, "bbox", ids))
    has_masks = all("segmentation" in a for a in gt.dataset["annotations"]) and \
        all("segmentation" in r for r in results)
    if has_masks:
        idset = set(ids)
        ov = mask_overlaps(gt, [r for r in results if r["image_id"] in idset], ids)
        out.update(apr(ov, APR_THRESHOLDS))
        out["abo"] = abo(ov)
    else:
        out.update({k: None for k in APR_THRESHOLDS})
        out["abo"] = None
    idset = set(ids)
    out["images"] = len(ids)
    out["gt_instances"] = sum(1 for a in gt.dataset["annotations"] if a["image_id"] in idset and not a["iscrowd"])
    out["detections"] = sum(1 for r in results if r["image_id"] in idset)
    return out


def evaluate_to_file(gt_json: str | os.PathLike, results_json: str | os.PathLike, out: str | os.PathLike) -> dict:
    """evaluate_detections, written atomically as a JSON object with the inputs' paths."""
    metrics = {"kind": "detections", **evaluate_detections(gt_json, results_json),
               "ground_truth": str(gt_json), "predictions": str(results_json)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_json(metrics, out, indent=1)
    return metrics


def run_stage(s, *, predictions: str, ground_truth: str, out: str, threads: int = 1) -> dict:
    """The `evaluate_model` stage (see pseudomask.registry)."""
    return evaluate_to_file(ground_truth, predictions, out)
