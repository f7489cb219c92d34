"""Retraining: CPU speed of MMDetection Mask R-CNN R50-FPN, and AP from pseudo masks vs true masks.

Speed (on ../shared/data/coco-dev, or PSEUDOMASK_COCO_DEV; skipped with a note when absent): seconds per
training iteration at 320 px (longest side), batch 2, random init, with --threads CPU threads, mean over
iterations 2..N from MMEngine's timer; and seconds per image of prediction (100 detections per image).
The machine's load average is printed next to them: the CPU is shared and timings move with it.

Quality (on generated demo scenes, so it always runs): one short schedule trained twice on the same
24 scenes, once on the true masks and once on pseudo masks made from the GT boxes (inscribed ellipses, the
hybrid-networks replacement; instances whose ellipse leaves less than half the box are mask-ignored),
then evaluated on 8 held-out scenes (another seed) with true masks: COCO segm AP/AP50, bbox AP, AP^r50
and ABO, side by side with the ratio pseudo / true.

    .venv/bin/python benchmarks/bench_retrain.py [--iters 150] [--quick] [--keep DIR]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads stall shared CPUs

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from common import coco_dev  # noqa: E402  (before pseudomask: it turns the progress bars off)

import numpy as np  # noqa: E402

from pseudomask.demo import make_demo_data  # noqa: E402
from pseudomask.detection_metrics import evaluate_detections  # noqa: E402
from pseudomask.masks import ellipse_mask, mask_iou, rle_encode, segmentation_mask  # noqa: E402
from pseudomask.retrain.mmdet_config import RetrainSettings  # noqa: E402
from pseudomask.retrain.predict import PredictSettings, predict, write_results  # noqa: E402
from pseudomask.retrain.train import train  # noqa: E402

SHOW = ("segm_AP", "segm_AP50", "bbox_AP", "bbox_AP50", "apr_50", "abo")
PREDICT = PredictSettings()  # the predict stage's defaults: its score threshold and batch size


def quietly(fn, *args, log: Path, **kwargs):
    """fn(*args, **kwargs) with its console output (MMEngine's) sent to a log file."""
    with open(log, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        return fn(*args, **kwargs)


def load() -> str:
    return "load average %.1f %.1f %.1f" % os.getloadavg()


def speed(work: Path, args) -> None:
    data = coco_dev()
    ann = data / "annotations.json"
    print(f"== speed: Mask R-CNN R50-FPN on CPU, {args.threads} threads, batch 2, random init")
    if not ann.exists():
        print(f"   {data} not found (set PSEUDOMASK_COCO_DEV): speed part skipped")
        return
    s = RetrainSettings(schedule="iters", max_iters=args.speed_iters, batch_size=2, lr=0.01, lr_batch=None, scale=320,
                        warmup_iters=1, log_interval=1)
    print(f"   coco-dev: {ann} ({load()} before)")
    cpu0 = time.process_time()
    t = quietly(train, ann, data / "images", work / "speed", s, threads=args.threads, log=work / "speed.log")
    cpu = time.process_time() - cpu0
    print(f"   training at 320 px: {t['seconds_per_iter']:.2f} s/iteration (mean of iterations 2..{t['iters']}; "
          f"{t['seconds']:.1f} s for {t['iters']} incl. the first); loss {t['first_loss']:.3f} -> {t['last_loss']:.3f}")
    sub = work / "speed_images.json"
    gt = json.loads(ann.read_text())
    gt = {**gt, "images": gt["images"][:4]}
    sub.write_text(json.dumps(gt))
    t0 = time.perf_counter()
    res, _ = quietly(predict, t["checkpoint"], data / "images", coco=sub, batch_size=1, score_thr=PREDICT.score_thr,
                     log=work / "speed.log")
    dt = (time.perf_counter() - t0) / len(gt["images"])
    print(f"   prediction at 320 px: {dt:.2f} s/image incl. model load ({len(res)} detections on "
          f"{len(gt['images'])} images)")
    print(f"   process CPU time: {cpu / t['iters']:.2f} CPU-s/iteration (whole run incl. model build and "
          f"checkpoint, over {t['iters']} iterations); on an idle machine at best {cpu / t['iters'] / args.threads:.2f}"
          f" s/iteration with {args.threads} threads")
    print(f"   target ~1.4 s/iteration (idle 2-core machine); measured {t['seconds_per_iter']:.2f} "
          f"= {t['seconds_per_iter'] / 1.4:.1f}x the target ({load()} after)")


def pseudo_from_boxes(gt: dict, min_fill: float = 0.5) -> dict:
    """Ellipse pseudo masks from the GT boxes; mask_ignore where the ellipse fills < min_fill of the box
    (never, for a true ellipse: pi/4 ~ 0.785; it catches boxes clipped to 1-2 px)."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    anns = []
    for a in gt["annotations"]:
        m = ellipse_mask(a["bbox"], *sizes[a["image_id"]])
        box_area = max(a["bbox"][2] * a["bbox"][3], 1.0)
        ignore = m.sum() < min_fill * box_area
        anns.append({**a, "segmentation": rle_encode(m), "area": float(m.sum()) or float(box_area),
                     "status": "dropped" if ignore else "kept", "mask_ignore": bool(ignore), "source": "ellipse"})
    return {**gt, "annotations": anns}


def mask_iou_to_truth(pseudo: dict, gt: dict) -> float:
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    ious = [mask_iou(segmentation_mask(p["segmentation"], *sizes[g["image_id"]]),
                     segmentation_mask(g["segmentation"], *sizes[g["image_id"]]))
            for p, g in zip(pseudo["annotations"], gt["annotations"])]
    return float(np.mean(ious))


def quality(work: Path, args) -> None:
    print(f"\n== quality: {args.iters} iterations at {args.scale} px, batch 2, lr {args.lr}, random init, "
          f"on 24 demo scenes; evaluated on 8 held-out scenes")
    train_dir, test_dir = work / "demo_train", work / "demo_test"
    make_demo_data(train_dir, n_images=24, seed=0, n_salient=0)
    make_demo_data(test_dir, n_images=8, seed=1, n_salient=0)
    gt = json.loads((train_dir / "annotations.json").read_text())
    pseudo = pseudo_from_boxes(gt)
    (work / "pseudo.json").write_text(json.dumps(pseudo))
    n_ign = sum(a["mask_ignore"] for a in pseudo["annotations"])
    print(f"   pseudo masks: ellipses in the GT boxes, mean IoU with the true masks "
          f"{mask_iou_to_truth(pseudo, gt):.3f}; {n_ign} of {len(pseudo['annotations'])} mask-ignored")
    s = RetrainSettings(schedule="iters", max_iters=args.iters, batch_size=2, scale=args.scale, lr=args.lr,
                        lr_batch=None, warmup_iters=min(50, args.iters // 5 or 1), log_interval=10)
    rows = {}
    for name, ann in (("true masks", train_dir / "annotations.json"), ("pseudo masks", work / "pseudo.json")):
        t0 = time.perf_counter()
        t = quietly(train, ann, train_dir / "images", work / name.replace(" ", "_"), s, threads=args.threads,
                    log=work / "quality.log")
        res, _ = quietly(predict, t["checkpoint"], test_dir / "images", coco=test_dir / "annotations.json",
                         batch_size=PREDICT.batch_size, score_thr=PREDICT.score_thr, log=work / "quality.log")
        write_results(res, work / f"{name.replace(' ', '_')}_predictions.json")
        with contextlib.redirect_stdout(io.StringIO()):
            m = evaluate_detections(test_dir / "annotations.json", res)
        rows[name] = m
        print(f"   {name:13s} trained {t['iters']} it in {time.perf_counter() - t0:7.1f} s "
              f"({t['seconds_per_iter']:.2f} s/it), loss {t['first_loss']:.3f} -> {t['last_loss']:.3f}, "
              f"loss_mask {t['first_loss_mask']:.3f} -> {t['last_loss_mask']:.3f}")
    print("\n   metric        true masks   pseudo masks   pseudo/true")
    for k in SHOW:
        a, b = rows["true masks"][k], rows["pseudo masks"][k]
        ratio = f"{b / a:11.2f}" if a else "        n/a"
        print(f"   {k:12s} {a:11.4f} {b:14.4f}   {ratio}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=150, help="training iterations of each quality run")
    p.add_argument("--speed-iters", type=int, default=6)
    p.add_argument("--scale", type=int, default=320)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="30 quality iterations, 4 speed iterations")
    p.add_argument("--only", choices=["speed", "quality"])
    p.add_argument("--keep", help="keep the work folder here")
    args = p.parse_args()
    if args.quick:
        args.iters, args.speed_iters = 30, 4
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_retrain_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.only != "quality":
            speed(work, args)
        if args.only != "speed":
            quality(work, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
