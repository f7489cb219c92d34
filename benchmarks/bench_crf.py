"""DenseCRF (the `crf` stage) on real COCO images: mIoU of each box-prior source with and without it.

Needs ../shared/data/coco-dev (or PSEUDOMASK_COCO_DEV); says so and exits 0 when it is absent. The sources
(GrabCut, MCG, agreement) come from `pseudomask.quality.training.run_sources`, cached in --work (shared with
benchmarks/bench_quality.py). For each source it runs `run_crf` at the stage's defaults (DeepLab's
parameters) and prints the mIoU against the true masks (instances with their true mask, `pseudomask.mask_metrics`)
before and after, over all images and over the even / odd image ids apart, by COCO size, the share of
instances the CRF improves, and the CRF's time per instance.

--tune also searches a small grid (the unary's confidence, the bilateral kernel's weight and spatial reach) on
the even image ids of one source (--tune-source, default grabcut) and prints every source with the best setting;
its odd-id figures are the ones no choice was made on.

    .venv/bin/python benchmarks/bench_crf.py [--work DIR] [--limit N] [--tune [--tune-source S]]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, coco_dev  # first: it turns the progress bars off

import numpy as np

from pseudomask.crf import CrfSettings, run_crf
from pseudomask.mask_metrics import GroundTruth, instance_scores
from pseudomask.quality.training import run_sources

SOURCES = ("grabcut", "mcg", "agree")
# the unary's confidence (both sides alike) and the bilateral kernel's weight and reach
GRID = {"confidence": (0.8, 0.95), "bilateral_weight": (4.0, 1.0), "bilateral_xy": (121.0, 30.0)}


def scores(artifact: Path, gt: GroundTruth) -> dict[int, dict]:
    """Per predicted instance (not true masks given as input): its IoU row, by annotation id."""
    return {r["id"]: r for r in instance_scores(artifact, gt) if not r.get("true_mask")}


def miou(rows: dict[int, dict], ids: set[int] | None = None) -> float:
    v = [r["iou"] for r in rows.values() if ids is None or r["image_id"] in ids]
    return float(np.mean(v)) if v else float("nan")


def line(name: str, before: dict[int, dict], after: dict[int, dict], even: set[int], odd: set[int],
         seconds: float | None = None) -> str:
    common = sorted(set(before) & set(after))
    gain = np.array([after[i]["iou"] - before[i]["iou"] for i in common])
    by = []
    for b in ("small", "medium", "large"):
        sel = [i for i in common if before[i]["size"] == b]
        by.append(f"{np.mean([after[i]['iou'] for i in sel]) - np.mean([before[i]['iou'] for i in sel]):+.3f}"
                  if sel else "  -  ")
    t = f"{seconds * 1000:7.1f}" if seconds is not None else "      -"
    return (f"{name:<16s} {miou(before):.3f} -> {miou(after):.3f} ({miou(after) - miou(before):+.3f})  "
            f"even {miou(before, even):.3f} -> {miou(after, even):.3f}  odd {miou(before, odd):.3f} -> "
            f"{miou(after, odd):.3f}  by size {' '.join(by)}  improved {np.mean(gain > 0):.2f} worse "
            f"{np.mean(gain < 0):.2f}  ms/inst {t}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(REPO / ".cache/bench_quality"), help="cache of the source artifacts")
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--tune", action="store_true", help="grid search on even image ids, report on odd ones")
    ap.add_argument("--tune-source", default="grabcut", choices=SOURCES, help="the source --tune searches on")
    a = ap.parse_args(argv)
    root = coco_dev()
    if not (root / "annotations.json").is_file():
        print(f"no COCO development set at {root}: nothing to measure")
        return 0
    work = Path(a.work) if a.limit is None else Path(a.work) / f"limit{a.limit}"
    paths = run_sources(root / "annotations.json", root / "images", work, limit=a.limit)
    gt = GroundTruth(root / "annotations.json")
    image_ids = sorted({int(g["image_id"]) for g in gt.anns.values()})
    even, odd = {i for i in image_ids if i % 2 == 0}, {i for i in image_ids if i % 2 == 1}
    print(f"coco-dev: {len(image_ids)} images ({len(even)} even ids, {len(odd)} odd ids), {len(gt.anns)} instances; "
          f"DenseCRF defaults {CrfSettings().to_dict()}")
    print(f"{'source':<16s} mIoU without -> with DenseCRF (gain), by image-id half, gain by COCO size "
          "(small medium large), share of instances improved / worse, CRF time per instance")
    base = {s: scores(paths[s], gt) for s in SOURCES}
    with tempfile.TemporaryDirectory() as tmp:
        for s in SOURCES:
            out = Path(tmp) / f"{s}-crf.h5"
            t0 = time.perf_counter()
            run_crf(paths[s], out, CrfSettings(), workers=1)
            dt = (time.perf_counter() - t0) / max(len(base[s]), 1)
            print(line(s, base[s], scores(out, gt), even, odd, dt))
        if a.tune:
            src = a.tune_source
            print(f"\ngrid on {src}, even ids only, by mIoU gain there; then the best setting on the odd ids:")
            best = None
            for values in itertools.product(*GRID.values()):
                g = dict(zip(GRID, values))
                conf = g.pop("confidence")
                s_ = CrfSettings(fg_confidence=conf, bg_confidence=conf, **g)
                out = Path(tmp) / "grid.h5"
                run_crf(paths[src], out, s_, workers=1)
                gain = miou(scores(out, gt), even) - miou(base[src], even)
                print(f"  confidence {conf} {g}: even-id gain {gain:+.3f}")
                sys.stdout.flush()
                if best is None or gain > best[0]:
                    best = (gain, s_)
            print(f"best on the even ids of {src}: {best[1].to_dict()} (gain {best[0]:+.3f}); every source with it:")
            for s in SOURCES:
                out = Path(tmp) / f"{s}-best.h5"
                run_crf(paths[s], out, best[1], workers=1)
                print(line(s + " (tuned)", base[s], scores(out, gt), even, odd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
