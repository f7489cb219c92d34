"""CAM peaks (tags only) next to the box-supervised mask sources: AP^r at 0.25 / 0.5 / 0.75 against true masks.

On demo scenes (rendered here) a tag classifier is trained briefly on CPU from random initialisation (tiny
backbone), then every tagged class's peaks pick MCG-style proposals (sampled by objectness as WISE, and the
best one). Beside them, on the same images and the same proposals:
  - "oracle peaks": one peak per true instance (its innermost pixel), the same proposal selection; the gap to
    the CAM rows is what the classifier's localisation costs, the rest is the proposals' and selection's;
  - box-supervised sources from the true boxes: the mcg stage's best proposal per box, GrabCut (the
    grabcut module's), the inscribed ellipse, the filled box.
Pseudo masks are scored against the scenes' true masks (`detection_metrics.evaluate_detections`): the CAM
artifacts as `pseudomask evaluate` and the workflow's evaluate_masks score every tag-only artifact
(`metrics.evaluate_tag_only`: kept masks ranked by their peak's CAM score), the others (one per true box) with
score 1.

With /work/shared/data/coco-dev present (or PSEUDOMASK_COCO_DEV), the same is run there too (64 real images,
80 classes; random init, so expect little from the classifier); absent, that part says so and is skipped.

    .venv/bin/python benchmarks/bench_cam.py [--images 64] [--iters 800] [--input-size 128] [--no-coco-dev]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import coco_dev  # first: it turns the progress bars off

import cv2
import numpy as np
import torch

from pseudomask.cam.extract import extract_peaks
from pseudomask.cam.sampling import ProposalPicker
from pseudomask.cam.settings import CamSettings, CamTrainSettings
from pseudomask.cam.train import train_classifier
from pseudomask.dataset import load_dataset
from pseudomask.demo import make_demo_data
from pseudomask.detection_metrics import evaluate_detections
from pseudomask.grabcut import grabcut_image
from pseudomask.images import read_image
from pseudomask.masks import box_mask, ellipse_mask, rle_encode, segmentation_mask
from pseudomask.mcg import run_mcg
from pseudomask.mask_metrics import evaluate_tag_only
from pseudomask.proposals import read_proposals
from pseudomask.store import Artifact


def write_proposals(ds, out: Path) -> float:
    """The workflow's `mcg` stage on the dataset: per true box its best proposal (the "MCG best-for-box"
    source) and per image the ranked proposals (map "proposals") the CAM peaks choose from; s/image."""
    t = time.perf_counter()
    run_mcg(ds, out, workers=2)
    return (time.perf_counter() - t) / max(len(ds.images), 1)


def gt_masks(gt: dict) -> dict[int, list[tuple[dict, np.ndarray]]]:
    ims = {im["id"]: im for im in gt["images"]}
    out: dict[int, list] = {i: [] for i in ims}
    for a in gt["annotations"]:
        if a.get("iscrowd", 0):
            continue
        im = ims[a["image_id"]]
        out[a["image_id"]].append((a, segmentation_mask(a["segmentation"], im["height"], im["width"])))
    return out


def result(image_id: int, cat: int, mask: np.ndarray, score: float) -> dict:
    return {"image_id": image_id, "category_id": cat, "segmentation": rle_encode(mask), "score": float(score)}


def oracle_results(gts, props_path: Path, mode: str) -> list[dict]:
    """One peak per true instance (the maximum of its distance transform), then the proposal selection."""
    res = []
    with Artifact(props_path) as p:
        for image_id, anns in gts.items():
            props = read_proposals(p, image_id)
            if props is None or not anns:
                continue
            picker = ProposalPicker(props)
            rng = np.random.default_rng([0, image_id])
            for a, m in anns:
                if not m.any():
                    continue
                dist = cv2.distanceTransform(np.pad(m, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
                y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
                k = picker.pick(int(y), int(x), rng, mode)
                if k >= 0:
                    res.append(result(image_id, a["category_id"], picker.mask(k), 1.0))
    return res


def box_results(ds, gts, props_path: Path) -> dict[str, list[dict]]:
    """Masks from the true boxes: the mcg stage's best proposal per box, GrabCut, the ellipse, the box."""
    out: dict[str, list[dict]] = {"MCG best-for-box": [], "GrabCut": [], "ellipse in box": [], "box (filled)": []}
    with Artifact(props_path) as p:
        for im, rows, masks in p.iter_images():
            for r, m in zip(rows, masks):
                if r["status"] == "kept":
                    out["MCG best-for-box"].append(result(im["id"], r["category_id"], m, 1.0))
    for im in ds.images:
        anns = gts[im["id"]]
        if not anns:
            continue
        h, w = im["height"], im["width"]
        boxes = [a["bbox"] for a, _ in anns]
        cats = [a["category_id"] for a, _ in anns]
        for b, c in zip(boxes, cats):
            out["box (filled)"].append(result(im["id"], c, box_mask(b, h, w), 1.0))
            out["ellipse in box"].append(result(im["id"], c, ellipse_mask(b, h, w), 1.0))
        for r, c in zip(grabcut_image(read_image(ds.image_path(im)), boxes), cats):
            out["GrabCut"].append(result(im["id"], c, r["mask"], 1.0))
    return out


def _row(ev: dict, n: int) -> dict:
    return {k: ev[k] or 0.0 for k in ("apr_25", "apr_50", "apr_75", "abo")} | {"n": n}


def score(gt_path: Path, res: list[dict]) -> dict:
    if not res:
        return {"apr_25": 0.0, "apr_50": 0.0, "apr_75": 0.0, "abo": 0.0, "n": 0}
    return _row(evaluate_detections(gt_path, res), len(res))


def cam_score(gt_path: Path, cam: Path) -> tuple[dict, dict]:
    """The CAM artifact scored by the library's tag-only evaluation, and its status counts."""
    with Artifact(cam) as a:
        counts = a.status_counts()
    ev = evaluate_tag_only(cam, gt_path)
    return _row(ev, ev["predictions"]), counts


def run(name: str, gt_path: Path, images: Path, work: Path, a) -> None:
    work.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(gt_path, images)  # a COCO file with boxes: only its image-level tags are used
    gt = json.loads(gt_path.read_text())
    gts = gt_masks(gt)
    n_tags = sum(len(im["tags"]) for im in ds.images)
    print(f"\n== {name}: {len(ds.images)} images, {len(ds.categories)} classes, {n_tags} image tags, "
          f"{sum(len(v) for v in gts.values())} true instances")
    s = CamTrainSettings(backbone="tiny", iters=a.iters, batch_size=8, lr=0.05, optimizer="sgd",
                      input_size=a.input_size, levels=a.levels, save_every=10 ** 9)
    t = time.perf_counter()
    r = train_classifier(ds, work / "model.pt", s, resume=False)
    train_s = time.perf_counter() - t
    h = np.asarray(r["history"])
    k = max(1, len(h) // 10)
    print(f"training: tiny backbone, random init, {a.iters} iterations x {s.batch_size} images at "
          f"{s.input_size}px, levels {s.levels}, on CPU ({torch.get_num_threads()} threads): {train_s:.0f} s; "
          f"loss {h[:k].mean():.3f} (first 10%) -> {h[-k:].mean():.3f} (last 10%), ratio {h[-k:].mean() / h[:k].mean():.2f}")
    props = work / "mcg.h5"
    per = write_proposals(ds, props)
    print(f"mcg stage (proposals + best per box): {per:.2f} s/image")
    rows = []
    for mode in ("sample", "best"):
        t = time.perf_counter()
        out = extract_peaks(ds, work / "model.pt", work / f"cam_{mode}.h5", props,
                            CamSettings(select=mode, peak_threshold=a.peak_threshold, max_peaks=a.max_peaks))
        ext_s = (time.perf_counter() - t) / len(ds.images)
        m, counts = cam_score(gt_path, out)
        rows.append((f"CAM peaks, {mode} (WISE)" if mode == "sample" else f"CAM peaks, {mode}", "tags",
                     m, f"{ext_s:.2f} s/img; {counts}"))
    for mode in ("sample", "best"):
        rows.append((f"oracle peaks, {mode}", "points", score(gt_path, oracle_results(gts, props, mode)), ""))
    for src, res in box_results(ds, gts, props).items():
        rows.append((src, "boxes", score(gt_path, res), ""))
    print(f"{'source':<26} {'labels':<7} {'AP^r25':>7} {'AP^r50':>7} {'AP^r75':>7} {'ABO':>6} {'masks':>6}  notes")
    for src, sup, m, note in rows:
        print(f"{src:<26} {sup:<7} {m['apr_25']:7.3f} {m['apr_50']:7.3f} {m['apr_75']:7.3f} {m['abo']:6.3f} "
              f"{m['n']:6d}  {note}")
    cam = rows[0][2]
    for ref in ("oracle peaks, sample", "MCG best-for-box", "GrabCut"):
        m = next((x[2] for x in rows if x[0] == ref), None)
        if m:
            ratios = "  ".join(f"{t}: {cam[t] / m[t]:.2f}" if m[t] else f"{t}: n/a" for t in ("apr_25", "apr_50", "apr_75"))
            print(f"ratio CAM sample / {ref}: {ratios}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64, help="demo scenes (default 64)")
    ap.add_argument("--iters", type=int, default=800, help="training iterations (default 800)")
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--levels", type=int, nargs="+", default=[-2, -1], help="backbone levels (stride 16 maps)")
    ap.add_argument("--peak-threshold", type=float, default=0.5)
    ap.add_argument("--max-peaks", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-coco-dev", action="store_true", help="skip the coco-dev part")
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "out" / "cam")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    demo = a.work / "demo"
    make_demo_data(demo, n_images=a.images, seed=7, n_salient=0)
    run("demo scenes", demo / "annotations.json", demo / "images", a.work / "demo-run", a)
    if a.no_coco_dev:
        return 0
    dev = coco_dev()
    if not (dev / "annotations.json").exists():
        print(f"\ncoco-dev not found at {dev}: skipping that part")
        return 0
    run(f"coco-dev ({dev})", dev / "annotations.json", dev / "images", a.work / "coco-dev-run", a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
