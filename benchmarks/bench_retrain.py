"""Retraining: CPU speed of MMDetection Mask R-CNN R50-FPN (what a detector learns from pseudo masks:
bench_learning.py).

Speed (on ../shared/data/coco-dev, or PSEUDOMASK_COCO_DEV; skipped with a note when absent): seconds per
training iteration at 320 px (longest side), batch 2, random init, with --threads CPU threads, mean over
iterations 2..N from MMEngine's timer; and seconds per image of prediction (100 detections per image).
The machine's load average is printed next to them: the CPU is shared and timings move with it.

    .venv/bin/python benchmarks/bench_retrain.py [--speed-iters 6] [--quick] [--keep DIR]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads stall shared CPUs

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from common import coco_dev, quietly, work_folder  # noqa: E402  (before pseudomask: it turns the progress bars off)

from pseudomask.retrain.mmdet_config import RetrainSettings  # noqa: E402
from pseudomask.retrain.predict import PredictSettings, predict  # noqa: E402
from pseudomask.retrain.train import train  # noqa: E402

PREDICT = PredictSettings()  # the predict stage's defaults: its score threshold and batch size


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--speed-iters", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="4 speed iterations")
    p.add_argument("--keep", help="keep the work folder here")
    args = p.parse_args()
    if args.quick:
        args.speed_iters = 4
    with work_folder(args.keep, "bench_retrain_") as work:
        speed(work, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
