"""BoxCaseg: inference speed on CPU, and mask quality after a short CPU training, next to box-fill and GrabCut.

Speed: box crops per second through `predict_boxes` (crop, resize, forward, paste back) on CPU, per backbone,
at the CPU default's 71 px and at the paper's 320 px, batch 16, untrained weights (speed does not depend on
them). Crops come from the coco-dev images when present, else from the demo scenes.

Quality: BoxCaseg trained from random weights with the settings the workflow uses on CPU (section
`boxcaseg_train` with its `cpu` profile applied, BoxcasegTrainSettings.for_device) on the demo scenes the default run
renders (section `demo_data`: 96 scenes, 384 salient images), and once with
more iterations, then mIoU of its masks on the training boxes (instance mean; class mean = the paper's
mIoU*), for the fused heads (the method's output) and the weak and salient heads alone, next to the filled box,
the inscribed ellipse and GrabCut (pseudomask.grabcut, default parameters). With ../shared/data/coco-dev (or
PSEUDOMASK_COCO_DEV), split by image id: BoxCaseg trained on the boxes of the odd ids and evaluated there, once
with the demo's synthetic salient images and once with object crops cut from the true masks of the even ids
(boxcaseg.salient_set), with the CPU profile and --seeds seeds each.

    .venv/bin/python benchmarks/bench_boxcaseg.py [--iters N] [--long-iters N] [--seeds 3] [--threads T] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import coco_dev  # first: it turns the progress bars off

import numpy as np
import torch

from pseudomask.boxcaseg.infer import infer_size, predict_boxes
from pseudomask.boxcaseg.model import build_model, load_model
from pseudomask.boxcaseg.salient_set import write_object_crops
from pseudomask.boxcaseg.settings import BoxcasegTrainSettings
from pseudomask.boxcaseg.train import train
from pseudomask.config import default_config, stage_settings
from pseudomask.dataset import load_dataset
from pseudomask.demo import DemoDataSettings, make_demo_data
from pseudomask.grabcut import grabcut_image
from pseudomask.images import read_image
from pseudomask.masks import box_mask, ellipse_mask, mask_iou, segmentation_mask

NEVER = 10 ** 9  # log_every / checkpoint_every: no loss lines, no resume states in between


def cpu_settings() -> BoxcasegTrainSettings:
    """The default config's `boxcaseg_train` section with its CPU profile applied (as the stage runs on CPU)."""
    s = BoxcasegTrainSettings.from_mapping(stage_settings(default_config(), "boxcaseg_train")).replace(device="cpu")
    return s.for_device().replace(log_every=NEVER, checkpoint_every=NEVER)


def samples(ann: Path, images: Path):
    """(rgb, records, gt masks) per image with usable boxes."""
    ds = load_dataset(ann, images)
    coco = json.loads(ann.read_text())
    gt = {a["id"]: a for a in coco["annotations"]}
    out = []
    for im in ds.images:
        recs = [r for r in ds.instances if r["image_id"] == im["id"] and r["status"] == "kept"]
        if not recs:
            continue
        rgb = read_image(ds.image_path(im))
        h, w = rgb.shape[:2]
        out.append((rgb, recs, [segmentation_mask(gt[r["id"]]["segmentation"], h, w) for r in recs]))
    return ds, out


def speed(data, threads: int, quick: bool) -> None:
    crops = sum(len(r) for _, r, _ in data)
    print(f"\n== inference speed on CPU ({threads} thread(s), batch 16, {crops} box crops, untrained weights)")
    print(f"{'backbone':<20}{'size':>6}{'crops/s':>10}{'ms/crop':>10}")
    cases = [("resnet18_w16", 71), ("resnet18_w16", 320), ("hrnetv2_w18_small", 320), ("hrnetv2_w48", 320)]
    base = None
    for name, size in cases:
        model = build_model(name).eval()
        todo = data if not (name == "hrnetv2_w48" or quick) else data[:2]
        n = sum(len(r) for _, r, _ in todo)
        predict_boxes(model, todo[0][0], [r["bbox"] for r in todo[0][1]][:2], size)  # warm-up
        t = time.perf_counter()
        for rgb, recs, _ in todo:
            predict_boxes(model, rgb, [r["bbox"] for r in recs], size, batch_size=16)
        dt = time.perf_counter() - t
        rate = n / dt
        base = base or rate
        print(f"{name:<20}{size:>6}{rate:>10.1f}{1000 / rate:>10.1f}   ({n} crops; x{rate / base:.3f} of the first)")


def quality(data, model_path: Path, title: str) -> dict:
    """mIoU of fused / weak BoxCaseg, box fill and GrabCut on the data's boxes."""
    ious = {k: [] for k in ("box-fill", "ellipse", "GrabCut", "BoxCaseg fused", "BoxCaseg weak head",
                            "BoxCaseg salient head")}
    cats: list[int] = []
    model = load_model(model_path)
    size = infer_size(model)
    t_gc = t_bc = 0.0
    for rgb, recs, gts in data:
        h, w = rgb.shape[:2]
        boxes = [r["bbox"] for r in recs]
        t = time.perf_counter()
        gc = grabcut_image(rgb, boxes)
        t_gc += time.perf_counter() - t
        t = time.perf_counter()
        fused = predict_boxes(model, rgb, boxes, size)
        t_bc += time.perf_counter() - t
        weak = predict_boxes(model, rgb, boxes, size, head="weak")
        sal = predict_boxes(model, rgb, boxes, size, head="salient")
        for r, g, gcr, pf, pw, ps in zip(recs, gts, gc, fused, weak, sal):
            cats.append(r["category_id"])
            ious["box-fill"].append(mask_iou(box_mask(r["bbox"], h, w), g))
            ious["ellipse"].append(mask_iou(ellipse_mask(r["bbox"], h, w), g))
            ious["GrabCut"].append(mask_iou(gcr["mask"], g))
            ious["BoxCaseg fused"].append(mask_iou((pf >= 0.5).astype(np.uint8), g))
            ious["BoxCaseg weak head"].append(mask_iou((pw >= 0.5).astype(np.uint8), g))
            ious["BoxCaseg salient head"].append(mask_iou((ps >= 0.5).astype(np.uint8), g))
    cats_a = np.array(cats)
    print(f"\n== {title}: {len(cats)} instances (BoxCaseg at {size} px; GrabCut {t_gc:.1f} s, BoxCaseg fused "
          f"{t_bc:.1f} s in total)")
    print(f"{'method':<24}{'mIoU':>8}{'mIoU*':>8}{'IoU>=0.5':>10}{'vs box-fill':>13}")
    ref = float(np.mean(ious["box-fill"]))
    res = {}
    for k, v in ious.items():
        v = np.array(v)
        star = float(np.mean([v[cats_a == c].mean() for c in np.unique(cats_a)]))
        res[k] = float(v.mean())
        print(f"{k:<24}{v.mean():>8.3f}{star:>8.3f}{(v >= 0.5).mean():>10.2f}{v.mean() / ref:>12.2f}x")
    return res


def run_training(ds, salient: Path, out: Path, settings: BoxcasegTrainSettings) -> None:
    t = time.perf_counter()
    s = train([ds], salient, out, settings, resume=False)
    print(f"  trained {settings.backbone} {settings.iters} iterations in {time.perf_counter() - t:.1f} s: "
          f"loss (mean of 10) {s['loss_first10']:.3f} -> {s['loss_last10']:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, help="short training (default: the iters of boxcaseg_train.cpu)")
    ap.add_argument("--long-iters", type=int, default=1000, help="the longer CPU training (0: skip)")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds of each coco-dev comparison")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="fewer crops for the speed table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = cpu_settings()
    if args.iters:
        settings = settings.replace(iters=args.iters)

    with tempfile.TemporaryDirectory(prefix="bench_boxcaseg_") as tmp:
        tmp = Path(tmp)
        demo = tmp / "demo"
        d = DemoDataSettings()  # the default run's demo: its scenes and 4 salient images per scene
        make_demo_data(demo, d.scenes, d.seed, (d.width, d.height), d.salient_images)
        ds, demo_data = samples(demo / "annotations.json", demo / "images")
        dev = coco_dev()
        have_coco = (dev / "annotations.json").exists()
        if have_coco:
            print(f"coco-dev: {dev}")
            cds, coco_data = samples(dev / "annotations.json", dev / "images")
        else:
            print(f"coco-dev not found at {dev} (set PSEUDOMASK_COCO_DEV): speed on demo crops, no real-image quality")
        speed(coco_data if have_coco else demo_data, args.threads, args.quick)

        print(f"\n== short CPU training on the demo scenes (CPU profile: {settings.backbone}, "
              f"{settings.iters} it, batch {settings.batch_size}, {settings.crop_size} px, "
              f"{settings.optimizer} {settings.lr:g})")
        run_training(ds, demo / "salient", tmp / "short.pt", settings)
        quality(demo_data, tmp / "short.pt", f"demo, after {settings.iters} iterations")
        if args.long_iters:
            run_training(ds, demo / "salient", tmp / "long.pt", settings.replace(iters=args.long_iters))
            quality(demo_data, tmp / "long.pt", f"demo, after {args.long_iters} iterations")
        if have_coco:
            coco_split(dev, demo / "salient", tmp, settings, args.seeds)
    return 0


def coco_split(dev: Path, demo_salient: Path, tmp: Path, settings: BoxcasegTrainSettings, seeds: int) -> None:
    """coco-dev by image id: BoxCaseg trained and evaluated on the odd ids' boxes, with the demo's salient images
    and with object crops cut from the even ids' true masks; mean and spread over the seeds."""
    coco = json.loads((dev / "annotations.json").read_text())
    even = {im["id"] for im in coco["images"] if im["id"] % 2 == 0}
    crops = write_object_crops(coco, dev / "images", tmp / "coco_salient", image_ids=even)
    odd = tmp / "coco_odd.json"
    odd.write_text(json.dumps({**coco, "images": [im for im in coco["images"] if im["id"] not in even],
                               "annotations": [a for a in coco["annotations"] if a["image_id"] not in even]}))
    cds, coco_data = samples(odd, dev / "images")
    summary = {}
    for name, folder in (("demo salient images", demo_salient), (f"{crops} object crops of the even ids", tmp / "coco_salient")):
        print(f"\n== coco-dev, odd image ids: BoxCaseg trained on their boxes + {name} ({settings.iters} it)")
        runs = []
        for seed in range(seeds):
            run_training(cds, folder, tmp / f"coco_{seed}.pt", settings.replace(seed=seed))
            runs.append(quality(coco_data, tmp / f"coco_{seed}.pt", f"coco-dev odd ids, {name}, seed {seed}"))
        summary[name] = {k: [r[k] for r in runs] for k in runs[0]}
    print(f"\n== coco-dev odd ids, mIoU over {seeds} seeds (mean ± sd)")
    for name, res in summary.items():
        print(f"   {name}: " + ", ".join(f"{k} {np.mean(v):.3f} ± {np.std(v):.3f}" for k, v in res.items()
                                         if k in ("ellipse", "box-fill", "BoxCaseg fused", "BoxCaseg weak head")))


if __name__ == "__main__":
    sys.exit(main())
