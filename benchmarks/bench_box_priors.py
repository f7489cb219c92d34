"""Box priors on real COCO images: fast GrabCut against plain GrabCut, validity, agreement, the floors.

Needs ../shared/data/coco-dev (or PSEUDOMASK_COCO_DEV); says so and exits 0 when it is absent. One run prints,
side by side:

- per-instance time of the reference (plain `cv2.grabCut`, rect init, 5 iterations, full image) and of the
  fast GrabCut (`pseudomask.grabcut`, one thread), interleaved instance by instance so that machine load hits
  both alike, with the speed ratio (target >= 10x);
- mask IoU against GT (mean over all instances, and by COCO size and the 64x64 split) of: the filled box and
  the inscribed ellipse (the floors), the reference, fast GrabCut raw (no fallback; target >= reference
  - 0.01), with its retry and fallback (the stage's default output) and with the fallback but no retry,
  validity with ellipse on the raw masks;
- hybrid networks' invalid rates (box agreement < 0.5) of the reference and of fast GrabCut, next to the
  paper's VOC figures;
- the real stages end to end (`run_grabcut` with 2 threads, `run_validity`, `run_mcg` with 2 workers and
  `run_agree`; --no-mcg skips the last two): wall time, mIoU from `pseudomask.mask_metrics`, and for agreement the
  precision of foreground pixels against GT on non-ignored pixels, the ignored fraction of box pixels and
  the mIoU where it decides (IoU over non-ignored pixels).

With --sweep it first prints the tuning behind the GrabCut defaults: CPU ms per instance (process time, one
thread) and mIoU of the stage's output for the previous defaults (5 + 2 iterations, min_side 80) and the
candidates, overall and by image-id parity (chosen on the even ids, checked on the odd ones).

    .venv/bin/python benchmarks/bench_box_priors.py [--limit N] [--no-mcg] [--sweep]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import by_size, coco_dev  # first: it turns the progress bars off

import cv2
import numpy as np

from pseudomask.agree import run_agree
from pseudomask.dataset import load_dataset
from pseudomask.grabcut import GrabCutSettings, grabcut_instance, run_grabcut
from pseudomask.images import read_image
from pseudomask.masks import box_agreement, box_mask, box_pixels, ellipse_mask, is_small, mask_iou, size_bucket
from pseudomask.mcg import run_mcg
from pseudomask.mask_metrics import GroundTruth, instance_scores, summarize
from pseudomask.store import IGNORE, Artifact
from pseudomask.validity import ValiditySettings, run_validity

PAPER = {"invalid": 0.30, "small64": 0.765, "large64": 0.232}  # hybrid networks, GrabCut on VOC


def reference_grabcut(bgr: np.ndarray, bbox) -> np.ndarray:
    """Plain GrabCut: rect init on the full image, 5 iterations (what the papers ran)."""
    h, w = bgr.shape[:2]
    x0, y0, x1, y1 = box_pixels(bbox, h, w)
    mask = np.zeros((h, w), np.uint8)
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(bgr, mask, (x0, y0, x1 - x0, y1 - y0), np.zeros((1, 65)), np.zeros((1, 65)), 5,
                    cv2.GC_INIT_WITH_RECT)
    except cv2.error:
        return np.zeros((h, w), np.uint8)
    return ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)


def invalid(biou: np.ndarray, small64: np.ndarray) -> str:
    inv = biou < 0.5
    return (f"{inv.mean():6.1%} {inv[small64].mean() if small64.any() else float('nan'):12.1%} "
            f"{inv[~small64].mean() if (~small64).any() else float('nan'):12.1%}")


def stage_line(name: str, seconds: float, label: str, ev: dict, note: str = "") -> str:
    """One stage's line: wall time, what the mIoU is of, mIoU overall and by size, then a note."""
    return (f"{name:9s} {seconds:7.1f} s  {label}mIoU {ev['miou']:.3f}  small {ev['miou_small']:.3f} "
            f"medium {ev['miou_medium']:.3f} large {ev['miou_large']:.3f}{'  ' + note if note else ''}")


SWEEP = {  # previous defaults, then the candidates: fewer iterations, smaller crops
    "previous defaults (5 + 2 iterations, min_side 80)": dict(iterations=5, retry_iterations=2, min_side=80),
    "3 + 1 iterations": dict(iterations=3, retry_iterations=1, min_side=80),
    "2 + 1 iterations": dict(iterations=2, retry_iterations=1, min_side=80),
    "1 + 1 iterations": dict(iterations=1, retry_iterations=1, min_side=80),
    "1 + 1, min_side 64 (default)": dict(iterations=1, retry_iterations=1, min_side=64),
    "1 + 1, max_side 144": dict(iterations=1, retry_iterations=1, min_side=80, max_side=144),
    "5 + 2, max_side 128": dict(iterations=5, retry_iterations=2, min_side=80, max_side=128),
    "core 0.75, 2 iterations, no retry": dict(iterations=2, core=0.75, retry_core=0.0, min_side=80),
}


def sweep(items: list, gt: GroundTruth) -> None:
    """The GrabCut tuning table (see the module docstring); `items` are (image id, BGR image, records)."""
    print("\n== GrabCut tuning: CPU per instance (one thread) and mIoU of the stage output; even / odd image ids")
    print(f"{'':52s}{'ms/inst':>8s}  {'mIoU':>6s}  {'even':>6s}  {'odd':>6s}  {'retried':>7s}")
    masks = {r["id"]: gt.mask(r["id"]) for _, _, recs in items for r in recs}
    for name, kw in SWEEP.items():
        p = GrabCutSettings(**kw)
        c = time.process_time()
        outs = [(iid, r["id"], grabcut_instance(bgr, r["bbox"], p)) for iid, bgr, recs in items for r in recs]
        cpu = (time.process_time() - c) / len(outs)
        iou = np.array([mask_iou(o["mask"], masks[rid]) for _, rid, o in outs])
        odd = np.array([iid % 2 for iid, _, _ in outs]) == 1
        print(f"{name:52s}{cpu * 1000:8.1f}  {iou.mean():6.4f}  {iou[~odd].mean():6.4f}  {iou[odd].mean():6.4f}  "
              f"{np.mean([o['retried'] for _, _, o in outs]):7.1%}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="only the first N images")
    ap.add_argument("--no-mcg", action="store_true", help="skip the MCG-style stage and agreement")
    ap.add_argument("--sweep", action="store_true", help="first print the GrabCut tuning table")
    args = ap.parse_args()
    root = coco_dev()
    if not (root / "annotations.json").is_file():
        print(f"coco-dev not found at {root} (set PSEUDOMASK_COCO_DEV); nothing to measure")
        return 0
    gt_json = root / "annotations.json"
    ds = load_dataset(gt_json, root / "images")
    if args.limit:
        ds.images = ds.images[:args.limit]
        keep = {im["id"] for im in ds.images}
        ds.instances = [r for r in ds.instances if r["image_id"] in keep]
    gt = GroundTruth(gt_json)
    ids = {r["id"] for r in ds.instances}

    def evaluate(path: Path) -> dict:
        """pseudomask.mask_metrics over the instances measured here (all of coco-dev unless --limit)."""
        return summarize([r for r in instance_scores(path, gt) if r["id"] in ids])

    print(f"coco-dev: {len(ds.images)} images, {len(ds.instances)} instances ({root}); "
          f"OpenCV {cv2.__version__}, threads for the per-instance timing: 1")
    cv2.setNumThreads(1)
    if args.sweep:
        by_im = ds.by_image()
        items = [(im["id"], cv2.cvtColor(read_image(ds.image_path(im)), cv2.COLOR_RGB2BGR), recs)
                 for im in ds.images
                 if (recs := [r for r in by_im.get(im["id"], []) if r["status"] not in ("failed", "ignored")])]
        sweep(items, gt)
    fast, raw_p = GrabCutSettings(), GrabCutSettings(fallback="none", min_fill=0.0, min_box_iou=0.0, retry_core=0.0)
    no_retry = GrabCutSettings(retry_core=0.0)
    rows = []
    by_image = ds.by_image()
    for im in ds.images:
        recs = [r for r in by_image.get(im["id"], []) if r["status"] not in ("failed", "ignored")]
        if not recs:
            continue
        bgr = cv2.cvtColor(read_image(ds.image_path(im)), cv2.COLOR_RGB2BGR)
        h, w = bgr.shape[:2]
        for r in recs:
            g = gt.mask(r["id"])
            t0 = time.perf_counter()
            ref = reference_grabcut(bgr, r["bbox"])
            t1 = time.perf_counter()
            ours = grabcut_instance(bgr, r["bbox"], fast)
            t2 = time.perf_counter()
            raw = grabcut_instance(bgr, r["bbox"], raw_p)["mask"]
            once = grabcut_instance(bgr, r["bbox"], no_retry)["mask"]
            ell = ellipse_mask(r["bbox"], h, w)
            raw_b = box_agreement(raw, r["bbox"])
            rows.append({
                "image": im["id"], "t_ref": t1 - t0, "t_fast": t2 - t1, "size": size_bucket(gt.area(r["id"])),
                "small64": is_small(r["bbox"]), "box": mask_iou(box_mask(r["bbox"], h, w), g),
                "ellipse": mask_iou(ell, g), "ref": mask_iou(ref, g), "raw": mask_iou(raw, g),
                "fast": mask_iou(ours["mask"], g), "fallback": ours["fallback"], "retried": ours["retried"],
                "no_retry": mask_iou(once, g),
                "ref_b": box_agreement(ref, r["bbox"]), "raw_b": raw_b,
                "raw_valid_ell": mask_iou(raw if raw_b >= 0.5 else ell, g),
                "ref_valid_ell": mask_iou(ref if box_agreement(ref, r["bbox"]) >= 0.5 else ell, g),
            })
    col = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    sizes, s64 = col["size"], col["small64"].astype(bool)
    t_ref, t_fast = col["t_ref"].mean(), col["t_fast"].mean()
    print(f"\n== GrabCut speed ({len(rows)} instances, one thread, interleaved)")
    print(f"reference (full image)  {t_ref * 1000:8.1f} ms/instance")
    print(f"fast (crop, default)    {t_fast * 1000:8.1f} ms/instance  (retry included)")
    print(f"speed-up                {t_ref / t_fast:8.1f}x   (target >= 10x)")
    print(f"\n== mask IoU vs GT (n: small {np.sum(sizes == 'small')}, medium {np.sum(sizes == 'medium')}, "
          f"large {np.sum(sizes == 'large')}; <64x64 {s64.sum()}, >=64x64 {(~s64).sum()})")
    print(f"{'':38s}{'mIoU':>6s}  {'small':>6s}  {'medium':>6s}  {'large':>6s}  {'<64²':>6s}  {'>=64²':>6s}")
    for key, name in [("box", "filled box (floor)"), ("ellipse", "inscribed ellipse (floor)"),
                      ("ref", "reference GrabCut (full image)"), ("raw", "fast GrabCut, raw (no fallback)"),
                      ("no_retry", "fast GrabCut + fallback, no retry"),
                      ("fast", "fast GrabCut + retry + fallback (stage)"),
                      ("ref_valid_ell", "reference + validity ellipse"),
                      ("raw_valid_ell", "fast raw + validity ellipse")]:
        print(f"{name:38s}{by_size(col[key], sizes, s64)}")
    print(f"fast GrabCut raw - reference: {col['raw'].mean() - col['ref'].mean():+.3f} (target >= -0.01); "
          f"stage: retry used for {col['retried'].mean():.1%}, fallback for {col['fallback'].mean():.1%} of instances")
    halves = [col["image"] % 2 == k for k in (0, 1)]
    print("retry gain by image-id parity (a check against tuning on this set): " + ", ".join(
        f"{['even', 'odd'][k]} {sel.sum()} instances {col['fast'][sel].mean() - col['no_retry'][sel].mean():+.3f}"
        for k, sel in enumerate(halves)))
    print("\n== invalid rate (box agreement < 0.5)  overall   small <64²   large >=64²")
    print(f"hybrid networks, GrabCut on VOC      {PAPER['invalid']:6.1%} {PAPER['small64']:12.1%} {PAPER['large64']:12.1%}")
    print(f"reference GrabCut on coco-dev        {invalid(col['ref_b'], s64)}")
    print(f"fast GrabCut raw on coco-dev         {invalid(col['raw_b'], s64)}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("\n== stages end to end (2 threads / workers)")
        t = time.perf_counter()
        gc_path = run_grabcut(ds, tmp / "grabcut.h5", workers=2)
        t_gc = time.perf_counter() - t
        ev = evaluate(gc_path)
        print(stage_line("grabcut", t_gc, f"({t_gc / len(ds.images):.2f} s/image)  ", ev,
                         f"invalid {ev['invalid_rate']:.1%}"))
        raw_path = run_grabcut(ds, tmp / "grabcut_raw.h5", raw_p, workers=2)
        v = ValiditySettings()  # the stage's defaults: min_iou 0.5, invalid masks replaced by the ellipse
        t = time.perf_counter()
        val_path = run_validity(raw_path, tmp / "validity.h5", v.min_iou, v.ellipse)
        t_val = time.perf_counter() - t
        ev = evaluate(val_path)
        with Artifact(val_path) as a:
            rates = json.loads(a.attrs["invalid_rates"])
        print(stage_line("validity", t_val, "(on raw GrabCut, ellipse)  ", ev,
                         f"invalid before replacement {rates['invalid_rate']:.1%} (small "
                         f"{rates['invalid_rate_small64']:.1%}, large {rates['invalid_rate_large64']:.1%})"))
        if args.no_mcg:
            print("MCG-style stage and agreement: skipped (--no-mcg)")
            return 0
        t = time.perf_counter()
        mcg_path = run_mcg(ds, tmp / "mcg.h5", workers=2)
        t_mcg = time.perf_counter() - t
        ev = evaluate(mcg_path)
        print(stage_line("mcg", t_mcg, f"({t_mcg / len(ds.images):.2f} s/image, 2 workers)  best-per-box ", ev))
        t = time.perf_counter()
        ag_path = run_agree(gc_path, mcg_path, tmp / "agree.h5")
        t_ag = time.perf_counter() - t
        tp = fp = ign = boxpx = 0
        decided = []
        with Artifact(ag_path, stage="agree") as a:
            for image_id in a.image_ids:
                masks = a.masks(image_id)
                im = a.image(image_id)
                for k, r in enumerate(a.records(image_id)):
                    if r["status"] in ("failed", "ignored"):
                        continue
                    g = gt.mask(r["id"]) == 1
                    x0, y0, x1, y1 = box_pixels(r["bbox"], im["height"], im["width"])
                    m = masks[k]
                    fg, ig = m == 1, m == IGNORE
                    tp += int(np.count_nonzero(fg & g))
                    fp += int(np.count_nonzero(fg & ~g))
                    ign += int(np.count_nonzero(ig[y0:y1, x0:x1]))
                    boxpx += (x1 - x0) * (y1 - y0)
                    union = np.count_nonzero((fg | g) & ~ig)
                    decided.append(np.count_nonzero(fg & g & ~ig) / union if union else 0.0)
        ev = evaluate(ag_path)
        print(f"agree     {t_ag:7.1f} s  foreground precision on non-ignored pixels {tp / max(tp + fp, 1):.3f}  "
              f"ignored {ign / max(boxpx, 1):.1%} of box pixels  mIoU where it decides {np.mean(decided):.3f}  "
              f"mIoU with ignore as background {ev['miou']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
