"""Mask quality on real COCO images: how well the feature scorer ranks masks, what `select` gains, and
dropping by quality against dropping by proxy box IoU at equal keep rates.

Needs ../shared/data/coco-dev (or PSEUDOMASK_COCO_DEV); says so and exits 0 when it is absent. Runs GrabCut,
MCG and the agreement on it (cached in .cache/bench_quality), builds every box's `select` candidates (the
three sources, their union clipped to the box, the inscribed ellipse, the filled box), and scores each one by a
scorer trained on the other folds' images (5 folds split by image id: no image scores itself). Prints:

- Spearman rank correlation of predicted and true IoU per source and pooled (target >= 0.6), with the
  single-stage features (a stage's `quality` column) and with the cross-source features (`select`);
- mIoU of each single source, of `select`, of the highest proxy box IoU and of the oracle choice among the
  same candidates, and select's gain over the best single source (target >= 0.03);
- at keep rates 50/70/90 % the mIoU kept by quality and by proxy box IoU, and their difference;
- the features' time per candidate next to GrabCut's (20.7 ms/instance, benchmarks/RESULTS.md).

    .venv/bin/python benchmarks/bench_quality.py [--limit N] [--folds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("PSEUDOMASK_NO_PROGRESS", "1")

from pseudomask.quality.training import SOURCES, collect, cross_validate, evaluate, format_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRABCUT_MS = 20.7


def coco_dev() -> Path:
    env = os.environ.get("PSEUDOMASK_COCO_DEV")
    return Path(env) if env else ROOT.parent / "shared/data/coco-dev"


def ceiling(root: Path, work: Path) -> None:
    """The oracle mIoU (best true IoU per box) with more candidates than select builds: how much a better
    ranker could gain at most from cheap extra candidates."""
    import cv2
    import numpy as np
    from scipy import ndimage

    from pseudomask.crf import CrfSettings, refine_mask
    from pseudomask.images import read_annotated_image
    from pseudomask.masks import box_pixels, ellipse_mask, mask_iou
    from pseudomask.mask_metrics import GroundTruth
    from pseudomask.store import Artifact

    crf = CrfSettings(fg_confidence=0.95, bg_confidence=0.95, bilateral_weight=1, bilateral_xy=30)  # agree's

    gt = GroundTruth(root / "annotations.json")
    arts = {s: Artifact(work / f"{s}.h5") for s in SOURCES}
    rows = []
    k5 = np.ones((5, 5), np.uint8)
    for iid in arts["grabcut"].image_ids:
        recs = {s: a.records(iid) for s, a in arts.items()}
        ms = {s: a.masks(iid) for s, a in arts.items()}
        mp = arts["mcg"].map("proposals", iid)
        sp, ptr, idx = mp["superpixels"], mp["region_ptr"], mp["region_idx"]
        sp_area = np.bincount(sp.ravel(), minlength=int(sp.max()) + 1)
        h, w = sp.shape
        rgb = read_annotated_image(Path(arts["grabcut"].attrs["image_root"]) / arts["grabcut"].image(iid)["file_name"],
                                   arts["grabcut"].image(iid))
        for k, r in enumerate(recs["grabcut"]):
            if r["status"] == "ignored" or int(r["id"]) not in gt.anns:
                continue
            t = gt.mask(r["id"])
            x0, y0, x1, y1 = box_pixels(r["bbox"], h, w)
            box = np.zeros((h, w), np.uint8)
            box[y0:y1, x0:x1] = 1
            g, m = (ms["grabcut"][k] == 1).astype(np.uint8), (ms["mcg"][k] == 1).astype(np.uint8)
            base = [g, m, (ms["agree"][k] == 1).astype(np.uint8), (g | m) & box, ellipse_mask(r["bbox"], h, w), box]
            morph = [cv2.dilate(g, k5) & box, cv2.erode(g, k5), cv2.morphologyEx(g, cv2.MORPH_CLOSE, k5),
                     ndimage.binary_fill_holes(g).astype(np.uint8),
                     ((ms["agree"][k] == 1) | (ms["agree"][k] == 255)).astype(np.uint8) & box]
            a, e = ms["agree"][k], ellipse_mask(r["bbox"], h, w)
            filled = [((a == 1) | ((a == 255) & (e == 1))).astype(np.uint8),  # agreement, ignore from the ellipse
                      ((g.astype(int) + m + e) >= 2).astype(np.uint8),  # majority of GrabCut, MCG, ellipse
                      refine_mask(rgb, a, r["bbox"], crf)]  # agreement's ignore resolved by DenseCRF
            inbox = np.bincount(sp[y0:y1, x0:x1].ravel(), minlength=len(sp_area))
            inter = np.array([inbox[idx[ptr[p]:ptr[p + 1]]].sum() for p in range(len(ptr) - 1)], np.float64)
            area = np.array([sp_area[idx[ptr[p]:ptr[p + 1]]].sum() for p in range(len(ptr) - 1)], np.float64)
            top = np.argsort(-(inter / np.maximum(area + box.sum() - inter, 1)), kind="stable")[:5]
            props = [np.isin(sp, idx[ptr[p]:ptr[p + 1]]).astype(np.uint8) & box for p in top]
            rows.append([max(mask_iou(c, t) for c in cs) for cs in (base, base + morph, base + props,
                                                                    base + morph + props, base + filled)]
                        + [mask_iou(c, t) for c in filled])
    y = np.asarray(rows)
    print(f"\noracle over {len(y)} boxes: select's 6 candidates {y[:, 0].mean():.3f}; + 5 morphological GrabCut "
          f"variants {y[:, 1].mean():.3f}; + the 5 MCG proposals of highest box IoU {y[:, 2].mean():.3f}; "
          f"+ both {y[:, 3].mean():.3f}; + 3 that fill agreement's ignore pixels {y[:, 4].mean():.3f} (mIoU of "
          f"each: ellipse-filled {y[:, 5].mean():.3f}, majority of GrabCut/MCG/ellipse {y[:, 6].mean():.3f}, "
          f"DenseCRF at agreement's setting {y[:, 7].mean():.3f})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--work", default=str(ROOT / ".cache/bench_quality"))
    ap.add_argument("--ceiling", action="store_true", help="also the oracle with more cheap candidates: "
                    "agreement filled, morphological GrabCut variants and the 5 MCG proposals of highest box IoU")
    a = ap.parse_args(argv)
    root = coco_dev()
    if not (root / "annotations.json").exists():
        print(f"coco-dev not found at {root}; nothing measured")
        return 0
    data = collect(root / "annotations.json", root / "images", a.work, limit=a.limit)
    res = evaluate(data, cross_validate(data, folds=a.folds))
    print(format_results(res))
    m = res["miou"]
    best = max(SOURCES, key=lambda s: m[s])
    sel = m["select (choice model)"]
    print(f"\nselect - best single source ({best}): {sel - m[best]:+.3f} (target >= +0.03); "
          f"oracle - select: {m['oracle (highest true IoU)'] - sel:+.3f}")
    for r in res["keep"]:
        print(f"keep {r['keep_rate']:.0%} of {r['masks']}: by quality - by proxy box IoU "
              f"{r['miou_by_quality'] - r['miou_by_proxy']:+.3f} mIoU")
    par = evaluate(data, cross_validate(data, split="parity"))
    print(f"\nsplit by image-id parity (train on even ids, score odd, and back): select "
          f"{par['miou']['select (choice model)']:.3f}, grabcut {par['miou']['grabcut']:.3f}, oracle "
          f"{par['miou']['oracle (highest true IoU)']:.3f}; Spearman pooled (sources) single "
          f"{par['spearman']['single']['pooled (sources)']:.3f}, cross {par['spearman']['cross']['pooled (sources)']:.3f}")
    if a.ceiling:
        ceiling(root, Path(a.work))
    ms = res["feature_ms_per_candidate"]
    print(f"features {ms:.2f} ms/candidate; GrabCut {GRABCUT_MS} ms/instance: {GRABCUT_MS / ms:.0f}x; "
          f"select's 6 candidates {6 * ms:.1f} ms/instance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
