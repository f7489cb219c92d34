"""MCG-style proposals on real COCO images: speed on one core, proposal quality, per-box masks.

Needs ../shared/data/coco-dev (or PSEUDOMASK_COCO_DEV); says so and exits 0 when it is absent. Pinned to one
core (affinity, BLAS and OpenCV threads), it runs the stage's per-image work (`proposal_pool` +
`image_result`, exactly what `run_mcg` does per image) and prints, side by side:

- CPU seconds per image (mean, median, max) against the 3 s target, and the ratio;
- candidates per image before ranking and proposals stored per image (after near-duplicate suppression,
  plus those chosen for boxes), with the bytes of the proposal arrays;
- ABO (mean over GT instances of the best mask IoU of any proposal) and recall at IoU 0.5, of the stored
  proposals and of all candidates;
- mIoU against GT of the per-box masks (the proposal with the highest IoU with the box, Li et al.), clipped
  to the box (the stage's default) and not, next to the filled box, the inscribed ellipse and GrabCut
  (`pseudomask.grabcut` defaults), by COCO size and by the 64x64 split.

Then (unless --quick) the real stage `run_mcg` on the whole set, for its end-to-end time and file size.

    .venv/bin/python benchmarks/bench_mcg.py [--quick] [--limit N] [--step K] [--params JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads
    os.environ[_v] = "1"

from common import by_size, coco_dev, pin_one_core  # noqa: E402  (first: it turns the progress bars off)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pseudomask.dataset import load_dataset  # noqa: E402
from pseudomask.grabcut import GrabCutSettings, grabcut_image  # noqa: E402
from pseudomask.images import read_image  # noqa: E402
from pseudomask.masks import (box_agreement, box_mask, ellipse_mask, is_small, mask_iou,  # noqa: E402
                              segmentation_mask, size_bucket)
from pseudomask.mcg import image_result, proposal_params, proposal_pool, run_mcg, select_for_boxes  # noqa: E402
from pseudomask.proposals import Proposals  # noqa: E402

TARGET_S = 3.0


def pool_ious(pool, gts: list[np.ndarray]) -> np.ndarray:
    """(R, K) mask IoU of every candidate of a pool with K GT masks."""
    n = pool.n
    sp = pool.superpixels
    cols = [np.bincount(sp[g == 1], minlength=n) for g in gts]
    s = pool.sums(np.stack(cols + [pool.areas()], 1))
    inter, area = s[:, :-1], s[:, -1:]
    gt_area = np.array([g.sum() for g in gts], np.float64)[None, :]
    return inter / np.maximum(area + gt_area - inter, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the end-to-end run of the stage")
    ap.add_argument("--limit", type=int, default=0, help="first N images only")
    ap.add_argument("--step", type=int, default=1, help="every STEP-th image only")
    ap.add_argument("--params", default="{}", help="JSON of proposal parameters replacing the defaults")
    args = ap.parse_args()
    data = coco_dev()
    ann = data / "annotations.json"
    if not ann.exists():
        print(f"bench_mcg: {data} not found (set PSEUDOMASK_COCO_DEV); nothing to measure")
        return 0
    cv2.setNumThreads(1)
    print(f"bench_mcg on {data}; {pin_one_core()}")
    raw = json.loads(ann.read_text())
    gt_seg = {a["id"]: a["segmentation"] for a in raw["annotations"]}
    ds = load_dataset(ann, data / "images")
    if args.limit or args.step > 1:
        keep = {im["id"] for im in ds.images[:: args.step][: args.limit or None]}
        ds.images = [im for im in ds.images if im["id"] in keep]
        ds.instances = [r for r in ds.instances if r["image_id"] in keep]
    p = proposal_params(**json.loads(args.params))
    by_image = ds.by_image()
    cpu, wall, n_cand, n_stored, nbytes = [], [], [], [], []
    abo_stored, abo_pool = [], []
    rows: dict[str, list] = {k: [] for k in ("clip", "noclip", "box", "ellipse", "grabcut")}
    invalid: dict[str, list] = {"clip": [], "grabcut": []}
    sizes, small64 = [], []
    for im in ds.images:
        rgb = read_image(ds.image_path(im))
        recs = [r for r in by_image.get(im["id"], []) if r["status"] == "kept"]
        c0, w0 = time.process_time(), time.perf_counter()
        pool = proposal_pool(rgb, **p)
        results, maps = image_result(rgb, {**im, "path": str(ds.image_path(im))}, recs, p, pool=pool)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        props = maps["proposals"]
        n_cand.append(len(pool))
        n_stored.append(len(props["scores"]))
        nbytes.append(sum(a.nbytes for a in props.values()))
        if not recs:
            continue
        h, w = im["height"], im["width"]
        gts = [segmentation_mask(gt_seg[r["id"]], h, w) for r in recs]
        ious = pool_ious(pool, gts)
        abo_pool.extend(ious.max(0).tolist())
        best, _ = select_for_boxes(pool, [r["bbox"] for r in recs])
        stored_rows = np.union1d(pool.ranked(int(p["max_proposals"]), float(p["nms"])), best[best >= 0])
        abo_stored.extend(ious[stored_rows].max(0).tolist())
        stored = Proposals.from_map(props)
        gc = grabcut_image(rgb, [r["bbox"] for r in recs], GrabCutSettings())
        for k, (r, g, res) in enumerate(zip(recs, gts, results)):
            bm = box_mask(r["bbox"], h, w)
            rows["clip"].append(mask_iou(res["mask"], g))
            invalid["clip"].append(box_agreement(res["mask"], r["bbox"]) < 0.5)
            rows["noclip"].append(mask_iou(stored.mask(res["proposal_id"]), g) if res["proposal_id"] >= 0 else 0.0)
            rows["box"].append(mask_iou(bm, g))
            rows["ellipse"].append(mask_iou(ellipse_mask(r["bbox"], h, w), g))
            rows["grabcut"].append(mask_iou(gc[k]["mask"], g))
            invalid["grabcut"].append(gc[k]["grabcut_box_iou"] < 0.5)
            sizes.append(size_bucket(float(g.sum())))
            small64.append(is_small(r["bbox"]))
    n = len(ds.images)
    cpu_a = np.array(cpu)
    print(f"\n{n} images, {len(sizes)} instances (kept boxes); parameters: {args.params} over pseudomask.mcg.DEFAULTS")
    print("\nspeed (one core)          mean     median   max      target   target/mean")
    print(f"  CPU s per image        {cpu_a.mean():6.2f}   {np.median(cpu_a):6.2f}   {cpu_a.max():6.2f}   "
          f"{TARGET_S:6.2f}   {TARGET_S / cpu_a.mean():5.2f}x")
    print(f"  wall s per image       {np.mean(wall):6.2f}   {np.median(wall):6.2f}   {np.max(wall):6.2f}")
    print("\nproposals per image       mean     min      max")
    print(f"  candidates (pool)      {np.mean(n_cand):7.0f}  {np.min(n_cand):7d}  {np.max(n_cand):7d}")
    print(f"  stored                 {np.mean(n_stored):7.0f}  {np.min(n_stored):7d}  {np.max(n_stored):7d}"
          f"   ({np.mean(nbytes) / 1024:.0f} KiB of arrays per image, before the file's compression)")
    ab_s, ab_p = np.array(abo_stored), np.array(abo_pool)
    print("\nproposals vs GT masks     ABO      recall@0.5")
    print(f"  stored proposals       {ab_s.mean():.3f}    {np.mean(ab_s >= 0.5):.3f}")
    print(f"  all candidates         {ab_p.mean():.3f}    {np.mean(ab_p >= 0.5):.3f}")
    print("\nper-box masks, mIoU vs GT   all      small    medium   large    <64x64   >=64x64")
    names = {"clip": "MCG best-per-box, clipped", "noclip": "MCG best-per-box, unclipped",
             "box": "filled box", "ellipse": "inscribed ellipse", "grabcut": "GrabCut (pseudomask.grabcut)"}
    for k, label in names.items():
        print(f"  {label:28s} {by_size(rows[k], sizes, small64, width=7)}")
    counts = {b: sizes.count(b) for b in ("small", "medium", "large")}
    print(f"  instances: {counts}, <64x64 {sum(small64)}, >=64x64 {len(small64) - sum(small64)}")
    print("\ninvalid masks (own box IoU < 0.5 with the GT box)   all      <64x64   >=64x64")
    s64 = np.array(small64)
    for k, label in (("clip", "MCG best-per-box, clipped"), ("grabcut", "GrabCut, first attempt")):
        v = np.array(invalid[k], bool)
        print(f"  {label:48s} {v.mean():6.1%}   {v[s64].mean():6.1%}   {v[~s64].mean():6.1%}")
    print(f"  {'hybrid networks, GrabCut on VOC (paper)':48s} {'~30%':>6s}   {'76.5%':>6s}   {'23.2%':>6s}")
    clip = np.mean(rows["clip"])
    print(f"  MCG clipped vs filled box: {clip - np.mean(rows['box']):+.3f}; vs ellipse: "
          f"{clip - np.mean(rows['ellipse']):+.3f}")
    if not args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "mcg.h5"
            c0, w0 = time.process_time(), time.perf_counter()
            run_mcg(ds, out, inputs=[ann], **json.loads(args.params))
            c1, w1 = time.process_time() - c0, time.perf_counter() - w0
            print(f"\nstage run_mcg end to end: {w1:.1f} s wall, {c1:.1f} s CPU for {n} images "
                  f"({c1 / n:.2f} s CPU per image); artifact {out.stat().st_size / 2**20:.1f} MiB "
                  f"({out.stat().st_size / n / 1024:.0f} KiB per image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
