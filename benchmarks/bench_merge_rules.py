"""Merge rules and drop by quality on real COCO images, with out-of-fold quality predictions.

Needs ../shared/data/coco-dev (or PSEUDOMASK_COCO_DEV). Builds GrabCut, MCG and agreement on coco-dev and the
quality scorer's training rows (`quality.training.collect`), then fits two scorers, one on the even image ids and
one on the odd ones (the shipped scorer was trained on coco-dev: its predictions there are optimistic), and runs
merge-drop on the workflow's default source (GrabCut -> validity) and on agreement once per merge rule
(`pseudomask.merge.RULES`), each image scored by the scorer that did not see it:

- merge: mIoU of every judged mask before and after the merge, on all instances and on the occlusion subset
  (instances whose box overlaps another box of the image by IoU >= 0.3), and how many masks got better / worse;
  beside the rules, the bound of a rule that gives each contested pixel to its true owner, and how many of
  COCO's own true masks overlap another;
- drop: at equal keep rates, the mIoU of the masks kept by highest proxy box IoU or by highest predicted quality
  (out of fold), and what each criterion's thresholds keep.

    .venv/bin/python benchmarks/bench_merge_rules.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import coco_dev, quietly, work_folder  # first: it turns the progress bars off

import numpy as np

from pseudomask.crops import MaskStack
from pseudomask.mask_metrics import GroundTruth, instance_scores
from pseudomask.masks import box_ious, mask_iou
from pseudomask.merge import RULES, merge
from pseudomask.merge_drop import THRESHOLDS, MergeDropSettings, is_dropped
from pseudomask.quality.training import collect, train
from pseudomask.registry import STAGES
from pseudomask.store import Artifact

OCCLUDED_IOU = 0.3
KEEP_RATES = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
QUALITY_THRESHOLDS = (0.5, 0.6, 0.7, 0.8)


def stage(name: str, log: Path, given: dict | None = None, **ports) -> dict:
    """A stage through its door with its defaults, `given` over them."""
    st = STAGES[name]
    return quietly(st, st.resolve(given=given, device="cpu"), threads=2, log=log,
                   **{k: str(v) for k, v in ports.items()})


def fold_scorers(data: dict, work: Path) -> dict[int, str]:
    """Scorer model files by image-id parity: the model for parity p was fitted on the other parity's images."""
    out = {}
    for parity in (0, 1):
        rows = data["image"] % 2 != parity
        out[parity] = str(train(data, rows=rows).save(work / f"scorer_not_{parity}.json"))
    return out


def occluded(gt: dict) -> set[int]:
    """Ids of the instances whose box overlaps another box of their image by IoU >= OCCLUDED_IOU."""
    by_image: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    out = set()
    for anns in by_image.values():
        iou = box_ious([a["bbox"] for a in anns], [a["bbox"] for a in anns])
        np.fill_diagonal(iou, 0)
        out |= {a["id"] for a, m in zip(anns, iou.max(1) if len(anns) > 1 else [0]) if m >= OCCLUDED_IOU}
    return out


def true_overlaps(gt: GroundTruth, coco: dict) -> tuple[int, float]:
    """How many true masks share pixels with another true mask of their image, and the median share."""
    by_image: dict[int, list[int]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["id"])
    shares = []
    for ids in by_image.values():
        masks = np.stack([gt.mask(i) == 1 for i in ids])
        count = masks.sum(0)
        shares += [float((m & (count > 1)).sum() / max(m.sum(), 1)) for m in masks]
    shares = np.asarray(shares)
    return int((shares > 0).sum()), float(np.median(shares[shares > 0])) if (shares > 0).any() else 0.0


def out_of_fold(src: Path, work: Path, rule: str, scorers: dict[int, str], gt: GroundTruth) -> dict[int, dict]:
    """Merge-drop (threshold 0: the merge alone) with each parity's scorer; per instance id its row from the run
    whose scorer did not see its image: iou against the truth, proxy box IoU, predicted quality, status."""
    rows: dict[int, dict] = {}
    for parity, model in scorers.items():
        out = work / f"{src.stem}_{rule}_{parity}.h5"
        stage("merge_drop", work / "stages.log", given={"threshold": 0.0, "rule": rule, "model": model},
              masks=src, out=out)
        ious = {r["id"]: r["iou"] for r in instance_scores(out, gt) if r["status"] != "missing"}
        with Artifact(out) as a:
            inst = a.instances
            for k, i in enumerate(inst["id"]):
                if int(inst["image_id"][k]) % 2 == parity and inst["status"][k] in ("kept", "dropped"):
                    rows[int(i)] = {"iou": ious.get(int(i), 0.0), "proxy": float(inst["proxy_box_iou"][k]),
                                    "quality": float(inst["quality"][k])}
    return rows


def true_owner(src: Path, gt: GroundTruth) -> dict[int, dict]:
    """The bound of a rule that gives each contested pixel to one claimant: the one whose true mask has it (the
    earlier one when none or both do: COCO's true masks overlap); per judged instance its IoU against the truth."""
    rows = {}
    with Artifact(src) as a:
        for image_id in a.image_ids:
            recs, masks = a.records(image_id), MaskStack.from_masks(a.masks(image_id))
            known = [int(r["id"]) in gt.anns for r in recs]
            truth = [gt.mask(r["id"]) if k else None for r, k in zip(recs, known)]
            active = np.array([r["status"] in ("kept", "invalid") and k for r, k in zip(recs, known)], bool)
            merged, *_ = merge(masks, lambda k, y0, x0, y1, x1: truth[k][y0:y1, x0:x1] if truth[k] is not None
                               else 0, active)
            for k in np.flatnonzero(active):
                rows[int(recs[k]["id"])] = {"iou": mask_iou(np.asarray(merged[k]), truth[k]),  # as instance_scores
                                            "before": mask_iou(np.asarray(masks[k]), truth[k])}
    return rows


def merge_table(src: Path, before: dict[int, float], runs: dict[str, dict[int, dict]], occ: set[int]) -> None:
    ids = sorted(runs["smaller_box"])
    print(f"\n  {src.stem}: merge rules over {len(ids)} judged instances ({sum(i in occ for i in ids)} occluded: box "
          f"IoU >= {OCCLUDED_IOU} with another)")
    print(f"  {'rule':14s} {'mIoU all':>9s} {'occluded':>9s} {'better':>6s} {'worse':>6s}")
    b = np.array([before.get(i, 0.0) for i in ids])
    o = np.array([i in occ for i in ids])
    print(f"  {'(no merge)':14s} {b.mean():9.4f} {b[o].mean() if o.any() else np.nan:9.4f}")
    for rule, rows in runs.items():
        b = np.array([before.get(i, 0.0) for i in ids])
        a = np.array([rows[i]["iou"] for i in ids])
        if "before" in rows[ids[0]]:  # measured here, not by instance_scores
            b = np.array([rows[i]["before"] for i in ids])
        print(f"  {rule:14s} {a.mean():9.4f} {a[o].mean() if o.any() else np.nan:9.4f} {int((a > b + 1e-9).sum()):6d} "
              f"{int((a < b - 1e-9).sum()):6d}")


def keep_table(name: str, rows: dict[int, dict]) -> None:
    """Drop by proxy box IoU or by out-of-fold quality: mIoU of the kept masks at equal keep rates, then what
    each criterion's thresholds keep."""
    iou = np.array([r["iou"] for r in rows.values()])
    score = {"proxy": np.array([r["proxy"] for r in rows.values()]),
             "quality": np.nan_to_num(np.array([r["quality"] for r in rows.values()]), nan=-1.0)}
    print(f"\n  {name}: keep the top fraction by each score, mIoU of those kept (all: {iou.mean():.4f})")
    print(f"  {'kept':>5s} {'by proxy IoU':>12s} {'by quality':>10s}")
    for f in KEEP_RATES:
        n = max(1, int(round(f * len(iou))))
        top = {k: iou[np.argsort(-v, kind="stable")[:n]].mean() for k, v in score.items()}
        print(f"  {f:5.1f} {top['proxy']:12.4f} {top['quality']:10.4f}")
    print(f"  {'criterion':>9s} {'threshold':>9s} {'kept':>6s} {'mIoU kept':>9s}")
    for t in THRESHOLDS:
        keep = ~is_dropped(score["proxy"], t)
        print(f"  {'proxy':>9s} {t:9.2f} {keep.mean():6.3f} {iou[keep].mean() if keep.any() else np.nan:9.4f}")
    for t in QUALITY_THRESHOLDS:
        keep = score["quality"] >= t
        print(f"  {'quality':>9s} {t:9.2f} {keep.mean():6.3f} {iou[keep].mean() if keep.any() else np.nan:9.4f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keep", help="keep the work folder here")
    args = p.parse_args()
    data_dir = coco_dev()
    ann = data_dir / "annotations.json"
    if not ann.exists():
        print(f"{data_dir} not found (set PSEUDOMASK_COCO_DEV); nothing to measure")
        return 0
    with work_folder(args.keep, "bench_merge_rules") as work:
        data = collect(ann, data_dir / "images", work / "sources")
        scorers = fold_scorers(data, work)
        log = work / "stages.log"
        stage("validity", log, masks=work / "sources" / "grabcut.h5", out=work / "validity.h5")
        coco = json.loads(ann.read_text())
        gt, occ = GroundTruth(ann), occluded(coco)
        shared, share = true_overlaps(gt, coco)
        print(f"coco-dev: {len(gt.anns)} instances, {len(occ)} occluded; {shared} true masks share pixels with "
              f"another true mask of their image (median {share:.1%} of their pixels); scorers fitted on one image-id "
              f"parity, each image scored by the other; default threshold {MergeDropSettings().threshold}")
        for src in (work / "validity.h5", work / "sources" / "agree.h5"):
            before = {r["id"]: r["iou"] for r in instance_scores(src, gt) if r["status"] != "missing"}
            runs = {rule: out_of_fold(src, work, rule, scorers, gt) for rule in RULES}
            runs["one true owner"] = true_owner(src, gt)
            merge_table(src, before, runs, occ)
            rule = MergeDropSettings().rule
            keep_table(f"{src.stem}, merged by {rule} (the default)", runs[rule])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
