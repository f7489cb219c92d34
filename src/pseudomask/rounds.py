"""Iterative ground-truth approximation (Li et al., sec. 3.4): the retrained model's masks on the training
images become the next round's pseudo labels.

Round 1 is the pipeline as it is (box priors, merge-drop, export, Mask R-CNN). For round k >= 2,
`refine_round` takes the detections of round k-1's model on the training images and the pseudo labels round
k-1 trained on (its merge_drop artifact of the shard) and, per given box:

- matches a detection of the same class: the one with the highest box IoU with the box, at least
  `match_iou`, score at least `min_score`, one detection per box (greedy by box IoU, ties broken by the higher
  score, then the earlier detection and the earlier box);
- uses the detection's mask, post-processed by DenseCRF (`pseudomask.crf`, DeepLab's parameters) when
  `crf` is on; an unmatched box keeps the previous round's mask and says so;
- sets every foreground pixel outside the instance's own box to ignore (255), or to background with
  `background_outside_box` (datasets without stuff classes, as the paper does for VOC);
- passes true masks (source `gt`) and failed / ignored instances through unchanged.

The artifact goes through merge_drop and export and trains round k's model. The workflow keeps round 1 where
it always was (results/merge_drop, results/export, results/retrain) and round k >= 2 under results/round<k>/;
`round_figures` reads the per-round figures back for the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .crops import MaskStack
from .errors import PseudomaskError, read_json
from .masks import box_ious, box_pixels, segmentation_mask
from .settings import Settings, SettingsError, setting
from .crf import _densecrf, refine_mask, settings_from
from .loops import PASS_THROUGH, Provenance, read_artifact_image, run_artifact_stage
from .registry import mask_stages
from .store import IGNORE, Artifact

MATCHED_SOURCE = "refine_round"


class RoundsError(PseudomaskError):
    """Unusable detections for a round (not a COCO results list, a record without its keys)."""


@dataclass(frozen=True)
class RefineRoundSettings(Settings):
    """How a round's detections become the next round's pseudo labels (config section `refine_round:`, used
    by rounds 2.. only)."""

    SECTION = "refine_round"
    match_iou: float = setting(0.5, "a detection matches a box of its class when their box IoU is at least this",
                               minimum=0, maximum=1)
    min_score: float = setting(0.3, "detections scored below this are not matched", minimum=0, maximum=1)
    crf: bool = setting(True, "post-process matched masks with DenseCRF (the paper: DeepLab's parameters)")
    crf_settings: dict = setting({}, "keys of the crf stage's settings replacing their defaults here "
                                     "({} = DeepLab's parameters)")
    background_outside_box: bool = setting(False, "foreground outside an instance's box becomes background "
                                                  "(no stuff classes, as for VOC) instead of ignore (255)")

    def check(self) -> None:
        try:
            settings_from(self.crf_settings)
        except SettingsError as e:
            self.fail(f"crf_settings: {e}")


def read_detections(path: str | os.PathLike) -> dict[int, list[dict]]:
    """A COCO results JSON (list of {image_id, category_id, bbox, score, segmentation}) grouped by image,
    each detection with its index in the file as `index`."""
    data = read_json(path, RoundsError, "detections")
    if not isinstance(data, list):
        raise RoundsError(f"{path}: not a COCO results list (a JSON list of detections)")
    out: dict[int, list[dict]] = {}
    for i, d in enumerate(data):
        missing = [k for k in ("image_id", "category_id", "bbox", "score", "segmentation")
                   if not isinstance(d, dict) or k not in d]
        if missing:
            raise RoundsError(f"{path}: detection [{i}] lacks {', '.join(missing)}")
        out.setdefault(int(d["image_id"]), []).append({**d, "index": i})
    return out


def match_detections(boxes: Sequence[Sequence[float]], categories: Sequence[int], detections: Sequence[Mapping],
                     match_iou: float = 0.5, min_score: float = 0.0) -> list[tuple[int | None, float]]:
    """Per box, (index into `detections` of its match or None, box IoU of the match or the best IoU seen).

    A detection is a candidate of a box when it has the box's category, a score >= `min_score` and box
    IoU >= `match_iou`; pairs are taken greedily by box IoU, then score, then earlier detection, then earlier
    box, each detection and each box at most once."""
    pairs = []
    best = [0.0] * len(boxes)
    ious = box_ious([d["bbox"] for d in detections], boxes).tolist()
    for i, (b, c) in enumerate(zip(boxes, categories)):
        for j, d in enumerate(detections):
            if int(d["category_id"]) != int(c) or float(d["score"]) < min_score:
                continue
            iou = ious[j][i]
            best[i] = max(best[i], iou)
            if iou >= match_iou and iou > 0:
                pairs.append((-iou, -float(d["score"]), j, i))
    pairs.sort()
    out: list[tuple[int | None, float]] = [(None, best[i]) for i in range(len(boxes))]
    used_box, used_det = set(), set()
    for neg_iou, _, j, i in pairs:
        if i in used_box or j in used_det:
            continue
        used_box.add(i)
        used_det.add(j)
        out[i] = (j, -neg_iou)
    return out


def outside_box(mask: np.ndarray, bbox: Sequence[float], background: bool = False) -> np.ndarray:
    """`mask` with every non-background pixel outside the box set to ignore (255), or to background (0)."""
    h, w = mask.shape
    x0, y0, x1, y1 = box_pixels(bbox, h, w)
    inside = np.zeros((h, w), bool)
    inside[y0:y1, x0:x1] = True
    out = np.array(mask, np.uint8, copy=True)
    out[~inside & (out != 0)] = 0 if background else IGNORE
    return out


def refine_round_rows(s: RefineRoundSettings, detections: Mapping[int, list[dict]], image_root: str, image: dict,
                      records: list[list[dict]], masks: list[MaskStack]) -> tuple[list[dict], MaskStack, None]:
    """One image of `refine_round`: rows with `matched` (1/0), `match_box_iou`, `match_score`,
    `crf_applied`, and the new masks (see the module doc)."""
    recs, prev = records[0], masks[0]
    h, w = int(image["height"]), int(image["width"])
    out = MaskStack.from_masks(prev)  # crops: one full frame at a time below
    dets = detections.get(int(image["id"]), [])
    todo = [k for k, r in enumerate(recs) if r["status"] not in PASS_THROUGH and r.get("source") != "gt"]
    match = match_detections([recs[k]["bbox"] for k in todo], [recs[k]["category_id"] for k in todo], dets,
                             s.match_iou, s.min_score)
    by_row = dict(zip(todo, match))
    crf_s = settings_from(s.crf_settings) if s.crf else None
    rgb = read_artifact_image(image_root, image) if s.crf and any(j is not None for j, _ in match) else None
    rows = []
    for k, r in enumerate(recs):
        row: dict[str, Any] = {key: r[key] for key in ("id", "category_id", "bbox", "status", "reason")}
        row.update(source=r.get("source") or "", matched=0.0, match_box_iou=np.nan, match_score=np.nan,
                   crf_applied=0.0)
        if k not in by_row:
            rows.append(row)
            continue
        j, iou = by_row[k]
        if j is None:
            why = (f"no detection of its class with box IoU >= {s.match_iou:g} and score >= {s.min_score:g} "
                   f"(best box IoU {iou:.3f}); the previous round's mask is kept")
            prior = f"was {r['status']}: {r['reason']}" if r["status"] != "kept" else str(r["reason"] or "")
            row.update(status="kept" if r["status"] == "dropped" else r["status"],
                       reason="; ".join(x for x in (why, prior) if x), match_box_iou=iou)
            out[k] = outside_box(prev[k], r["bbox"], s.background_outside_box)
        else:
            d = dets[j]
            try:
                m = segmentation_mask(d["segmentation"], h, w)
            except Exception as e:  # noqa: BLE001 - a corrupt record is named, not fatal to the shard
                raise RoundsError(f"detection [{d['index']}] of image {image['id']}: unreadable segmentation "
                                  f"({e})") from None
            reason = f"detection [{d['index']}] (score {float(d['score']):.3f}, box IoU {iou:.3f})"
            if crf_s is not None and rgb is not None and m.any():
                refined = refine_mask(rgb, m, r["bbox"], crf_s, clip=False)
                if np.any(refined == 1):
                    m = refined
                    row["crf_applied"] = 1.0
                else:
                    reason += "; DenseCRF left no foreground pixel, the detection's mask is used"
            elif crf_s is not None and m.any():
                reason += f"; image {image['file_name']} not readable under {image_root!r}: no DenseCRF"
            m = outside_box(m, r["bbox"], s.background_outside_box)
            if np.any(m == 1):
                row.update(status="kept", reason=reason, source=MATCHED_SOURCE, matched=1.0, match_box_iou=iou,
                           match_score=float(d["score"]))
                out[k] = m
            else:
                why = f"{reason} has no foreground inside the box; the previous round's mask is kept"
                row.update(reason=why, match_box_iou=iou)
                out[k] = outside_box(prev[k], r["bbox"], s.background_outside_box)
        rows.append(row)
    return rows, out, None


def run_refine_round(predictions: str | os.PathLike, masks: str | os.PathLike, out: str | os.PathLike,
                     s: RefineRoundSettings = RefineRoundSettings()) -> Path:
    """Write a `refine_round` artifact from a round's detections on the training images and the pseudo-label
    artifact (any mask stage, usually merge_drop) that round trained on."""
    dets = read_detections(predictions)
    if s.crf:
        _densecrf()
    with Artifact(masks, stage=mask_stages()) as a:
        params = {**s.to_dict(), "input_stage": a.stage}
        per_image = partial(refine_round_rows, s, dets, str(a.attrs.get("image_root") or ""))
        method = "match-detections" + ("+densecrf" if s.crf else "")
        return run_artifact_stage([a], out, Provenance("refine_round", method, params, attrs={"source_stage": a.stage}),
                                  per_image, quality_source="other")


def run_stage(s: RefineRoundSettings, *, predictions: str, masks: str, out: str, threads: int = 1) -> dict:
    """The `refine_round` stage (see pseudomask.registry)."""
    run_refine_round(predictions, masks, out, s)
    with Artifact(out) as a:
        matched = a.instances.get("matched", np.zeros(0))
        return {"out": out, "status": a.status_counts(), "matched": int(np.nansum(matched)),
                "instances": int(len(matched))}


def round_dir(results: str | os.PathLike, k: int) -> Path:
    """The folder of round k's artifacts: `results` itself for round 1, `results/round<k>` after."""
    if int(k) < 1:
        raise ValueError(f"rounds count from 1, got {k}")
    return Path(results) if int(k) == 1 else Path(results) / f"round{int(k)}"


MASK_FIGURES = ("miou", "miou_small", "miou_medium", "miou_large", "instances")
MODEL_FIGURES = ("segm_AP", "segm_AP50", "segm_AP75", "bbox_AP", "abo")


def round_figures(results: str | os.PathLike, rounds: int | None = None) -> list[dict[str, Any]]:
    """Per round: {round, folder, pseudo masks' mIoU against ground truth (evaluate/pseudo_masks.json),
    the model's AP (evaluate/model.json)}, None where a file is missing. `rounds`: how many (default:
    round 1 and every results/round<k> folder present)."""
    results = Path(results)
    if rounds is None:
        found = [int(p.name[5:]) for p in results.glob("round*") if p.name[5:].isdigit() and int(p.name[5:]) >= 2]
        rounds = max(found, default=1)
    out = []
    for k in range(1, int(rounds) + 1):
        d = round_dir(results, k)
        row: dict[str, Any] = {"round": k, "folder": str(d)}
        for name, keys, prefix in (("pseudo_masks", MASK_FIGURES, "masks_"), ("model", MODEL_FIGURES, "model_")):
            p = d / "evaluate" / f"{name}.json"
            data = read_json(p, RoundsError, "evaluation") if p.is_file() else {}
            for key in keys:
                row[prefix + key] = data.get(key)
        row["train_matched"] = _matched_fraction(d / "refine_round") if k >= 2 else None
        out.append(row)
    return out


def _matched_fraction(folder: Path) -> float | None:
    """Fraction of a round's judged instances whose mask is a matched detection (None: no artifacts)."""
    n = m = 0
    for p in sorted(folder.glob("*.h5")):
        with Artifact(p, stage="refine_round") as a:
            col = a.instances.get("matched")
            if col is not None:
                src = a.instances.get("source", np.array([""] * len(col), object))
                sel = src != "gt"
                n += int(sel.sum())
                m += int(np.nansum(col[sel]))
    return m / n if n else None
