"""Merge-and-drop: quality on real COCO images and speed on a generated 5,000-instance shard.

Quality (needs ../shared/data/coco-dev, or PSEUDOMASK_COCO_DEV): for GrabCut masks, MCG-style masks and the
GrabCut∩MCG agreement, the drop rate and the mIoU of kept masks at each threshold of BoxCaseg Table 8, next to the
mIoU of all masks, and the merge step's effect on mIoU (source masks before vs after merging). GrabCut,
MCG and agreement come from the project's own `pseudomask grabcut / mcg / agree` commands (2 threads each, the
stages' default settings), or from artifacts given with --grabcut / --mcg / --agree; merge-drop runs with the
stage's default threshold with BoxCaseg's merge (smaller box wins) and drop (proxy box IoU), which this measures
(every threshold of the table comes from that one run; bench_merge_rules.py compares the other rules).

Speed: merge-drop and export of one generated shard of 5,000 instances, pinned to one core, against the
10 s target; at the demo's 320x240 and at COCO's typical 640x480.

    .venv/bin/python benchmarks/bench_merge_drop.py [--quick] [--keep DIR] [--grabcut H5] [--mcg H5] [--agree H5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import coco_dev, pin_one_core  # first: it turns the progress bars off

import numpy as np

from pseudomask.export import export_coco
from pseudomask.masks import ellipse_mask
from pseudomask.merge_drop import THRESHOLDS, MergeDropSettings, drop_curve, judged, merge_drop
from pseudomask.mask_metrics import GroundTruth, instance_scores
from pseudomask.store import Artifact, ArtifactWriter

PAPER_DROP = {0.0: 0.00, 0.75: 0.27, 0.85: 0.49, 0.90: 0.64, 0.95: 0.80}  # BoxCaseg Table 8, COCO
SOURCES = ("grabcut", "mcg", "agree")
BOXCASEG = {"criterion": "proxy_box_iou", "rule": "smaller_box"}  # the paper's merge and drop, which this measures


def cli(*args: str, log: Path) -> bool:
    """Run a pseudomask subcommand (2 threads); False, with the reason printed, when it fails."""
    with open(log, "a") as fh:
        p = subprocess.run([sys.executable, "-m", "pseudomask", *args, "--threads", "2"], stdout=fh,
                           stderr=subprocess.STDOUT)
    if p.returncode != 0:
        print(f"  `pseudomask {args[0]}` failed (exit {p.returncode}); see {log}")
    return p.returncode == 0


def ious_by_id(path: Path, gt: GroundTruth) -> dict[int, float]:
    return {r["id"]: r["iou"] for r in instance_scores(path, gt) if r["status"] != "missing"}


def quality(work: Path, prebuilt: dict[str, str]) -> None:
    data = coco_dev()
    ann = data / "annotations.json"
    if not ann.exists():
        print(f"quality: {data} not found (set PSEUDOMASK_COCO_DEV); skipped")
        return
    print(f"quality on {data} ({len(json.loads(ann.read_text())['annotations'])} instances)")
    log = work / "stages.log"
    images = str(data / "images")
    sources = {k: Path(v) for k, v in prebuilt.items() if v}
    if sources:
        print(f"  using prebuilt artifacts: {', '.join(f'{k}={v}' for k, v in sources.items())}")
    # each source is built unless given, but MCG (the slow one) not when an agree artifact is given
    for name in [n for n in ("grabcut", "mcg") if n not in sources and not (n == "mcg" and "agree" in sources)]:
        t0 = time.perf_counter()
        if cli(name, "--shard", str(ann), "--images", images, "--out", str(work / f"{name}.h5"), log=log):
            sources[name] = work / f"{name}.h5"
            print(f"  pseudomask {name}: {time.perf_counter() - t0:.1f} s")
    if "agree" not in sources and "grabcut" in sources and "mcg" in sources:
        if cli("agree", "--grabcut", str(sources["grabcut"]), "--mcg", str(sources["mcg"]),
               "--out", str(work / "agree.h5"), log=log):
            sources["agree"] = work / "agree.h5"
    sources = {k: sources[k] for k in SOURCES if k in sources}
    if not sources:
        print("quality: no mask source could be built; skipped")
        return
    gt = GroundTruth(ann)
    for name, src in sources.items():
        md = work / f"merge_drop_{name}.h5"
        merge_drop(src, md, MergeDropSettings(**BOXCASEG))
        before = ious_by_id(src, gt)
        after = ious_by_id(md, gt)
        with Artifact(md) as a:
            ids, proxy = judged(a)
            n_all = len(a.instances["id"])
        g_after = [after.get(int(i), 0.0) for i in ids]
        g_before = [before.get(int(i), 0.0) for i in ids]
        curve = drop_curve(proxy, THRESHOLDS, g_after)
        print(f"\n  source {name}: {len(ids)} of {n_all} instances judged (the rest failed/ignored upstream)")
        changed = [k for k, i in enumerate(ids) if after.get(int(i), 0.0) != before.get(int(i), 0.0)]
        print(f"  merge effect on mIoU of the judged masks: before {np.mean(g_before):.4f} -> after "
              f"{np.mean(g_after):.4f} (delta {np.mean(g_after) - np.mean(g_before):+.4f})")
        if changed:
            gb, ga = np.array(g_before)[changed], np.array(g_after)[changed]
            print(f"  {len(changed)} masks changed by the merge: mIoU {gb.mean():.4f} -> {ga.mean():.4f}; "
                  f"{int((ga > gb).sum())} better, {int((ga < gb).sum())} worse")
        print(f"  {'thresh':>6} {'drop rate':>9} {'paper':>6} {'kept':>5} {'mIoU kept':>9} {'mIoU all':>8} "
              f"{'kept/all':>8}")
        for r in curve:
            ratio = r["miou_kept"] / r["miou_all"] if r["miou_kept"] and r["miou_all"] else float("nan")
            mk = f"{r['miou_kept']:.4f}" if r["miou_kept"] is not None else "   -  "
            print(f"  {r['threshold']:6.2f} {r['drop_rate']:9.3f} {PAPER_DROP[r['threshold']]:6.2f} {r['kept']:5d} "
                  f"{mk:>9} {r['miou_all']:8.4f} {ratio:8.3f}")


def synthetic_shard(path: Path, n_instances: int, per_image: int, size: tuple[int, int], seed: int = 0) -> None:
    """A grabcut-stage shard of ellipse masks in random, often overlapping boxes, some of them shifted."""
    rng = np.random.default_rng(seed)
    w, h = size
    n_images = n_instances // per_image
    with ArtifactWriter(path, stage="grabcut", method="synthetic",
                        categories=[{"id": c, "name": f"c{c}"} for c in range(1, 11)]) as wr:
        aid = 1
        for i in range(n_images):
            rows, masks = [], []
            for _ in range(per_image):
                bw, bh = rng.uniform(0.05, 0.5) * w, rng.uniform(0.05, 0.5) * h
                x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                box = [float(x), float(y), float(bw), float(bh)]
                m = ellipse_mask(box, h, w)
                if rng.random() < 0.3:
                    m = np.roll(m, int(bw * rng.uniform(0.1, 0.5)), axis=1)
                rows.append({"id": aid, "category_id": int(rng.integers(1, 11)), "bbox": box, "status": "kept",
                             "reason": ""})
                masks.append(m)
                aid += 1
            wr.add_image({"id": i + 1, "file_name": f"{i + 1}.jpg", "width": w, "height": h}, rows, np.stack(masks))


def speed(work: Path, quick: bool) -> None:
    pinned = pin_one_core()
    n = 1000 if quick else 5000
    target = 10.0 * n / 5000
    print(f"\nspeed: merge-drop + export of a generated {n}-instance shard (10 per image), {pinned}; "
          f"target {target:g} s. CPU = process time on that core (what a quiet machine would take); wall = "
          f"elapsed (includes waiting for a shared CPU; load average now {os.getloadavg()[0]:.1f}).")
    print(f"  {'image size':>10} {'merge cpu':>9} {'export cpu':>10} {'total cpu':>9} {'target/cpu':>10} "
          f"{'total wall':>10} {'target/wall':>11} {'hdf5 floor cpu':>14}")
    for size in ((320, 240), (640, 480)):
        src = work / f"synthetic_{size[0]}.h5"
        md = work / f"synthetic_md_{size[0]}.h5"
        synthetic_shard(src, n, 10, size)
        c0, w0 = time.process_time(), time.perf_counter()
        merge_drop(src, md, MergeDropSettings(**BOXCASEG))
        c1 = time.process_time()
        data = export_coco([md], work / f"synthetic_{size[0]}.json")
        c2, w2 = time.process_time(), time.perf_counter()
        assert len(data["annotations"]) == n
        floor = hdf5_floor(src, work / "floor.h5")
        cpu = c2 - c0
        print(f"  {size[0]:>4}x{size[1]:<5} {c1 - c0:9.2f} {c2 - c1:10.2f} {cpu:9.2f} {target / cpu:10.2f} "
              f"{w2 - w0:10.2f} {target / (w2 - w0):11.2f} {floor:14.2f}")
    print("  hdf5 floor = CPU to read every image's masks twice with Artifact.masks and write them once with "
          "ArtifactWriter (merge reads and writes, export reads), no other work")


def hdf5_floor(src: Path, tmp: Path) -> float:
    """CPU seconds of the HDF5 mask I/O alone that merge-drop plus export cannot avoid: every image's masks
    read with `Artifact.masks` (twice: merge-drop and export) and written once with `ArtifactWriter` (the
    store's crop layout), no other work."""
    c = time.process_time()
    with Artifact(src) as a:
        images = [(a.image(i), a.records(i), a.masks(i)) for i in a.image_ids]
        categories = a.categories
    read = time.process_time() - c
    c = time.process_time()
    with ArtifactWriter(tmp, stage="grabcut", method="floor", categories=categories) as w:
        for im, rows, masks in images:
            w.add_image(im, rows, masks)
    write = time.process_time() - c
    tmp.unlink()
    return 2 * read + write


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1,000 instances for speed, no quality part")
    ap.add_argument("--keep", help="work folder to keep (default: a temporary one)")
    ap.add_argument("--grabcut", help="use this grabcut artifact of coco-dev instead of running `pseudomask grabcut`")
    ap.add_argument("--mcg", help="use this mcg artifact of coco-dev instead of running `pseudomask mcg`")
    ap.add_argument("--agree", help="use this agree artifact of coco-dev instead of running `pseudomask agree`")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.quick:
            quality(work, {name: getattr(args, name) for name in SOURCES})
        speed(work, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
