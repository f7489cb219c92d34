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
- the features' time per candidate next to GrabCut's (46.5 ms/instance, benchmarks/RESULTS.md).

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
GRABCUT_MS = 46.5


def coco_dev() -> Path:
    env = os.environ.get("PSEUDOMASK_COCO_DEV")
    return Path(env) if env else ROOT.parent / "shared/data/coco-dev"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--work", default=str(ROOT / ".cache/bench_quality"))
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
    sel = m["select (highest predicted quality)"]
    print(f"\nselect - best single source ({best}): {sel - m[best]:+.3f} (target >= +0.03); "
          f"oracle - select: {m['oracle (highest true IoU)'] - sel:+.3f}")
    for r in res["keep"]:
        print(f"keep {r['keep_rate']:.0%} of {r['masks']}: by quality - by proxy box IoU "
              f"{r['miou_by_quality'] - r['miou_by_proxy']:+.3f} mIoU")
    ms = res["feature_ms_per_candidate"]
    print(f"features {ms:.2f} ms/candidate; GrabCut {GRABCUT_MS} ms/instance: {GRABCUT_MS / ms:.0f}x; "
          f"select's 6 candidates {6 * ms:.1f} ms/instance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
