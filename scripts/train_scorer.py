"""Train the quality scorer on images with true masks and record its training data and figures beside it.

    .venv/bin/python scripts/train_scorer.py [--annotations COCO.json --images DIR] [--out MODEL.json]
        [--work DIR] [--limit N] [--folds 5]

Defaults: ../shared/data/coco-dev (or PSEUDOMASK_COCO_DEV) and the package's default model
(src/pseudomask/quality/default_scorer.json, with default_scorer.md beside it). Runs GrabCut, MCG and the
agreement on the images (cached in --work), builds every box's `select` candidates, measures the scorer by
image-level cross-validation, then fits it on all images and writes the model (JSON) and a .md report.
To retrain on your own strong images, pass their COCO JSON (with masks) and folder, and point
`select.model` and `merge_drop.model` at the --out file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("PSEUDOMASK_NO_PROGRESS", "1")

import numpy as np  # noqa: E402

from pseudomask.quality.scorer import default_path  # noqa: E402
from pseudomask.quality.training import collect, cross_validate, evaluate, format_results, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def coco_dev() -> Path:
    env = os.environ.get("PSEUDOMASK_COCO_DEV")
    return Path(env) if env else ROOT.parent / "shared/data/coco-dev"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--annotations", default=None)
    ap.add_argument("--images", default=None)
    ap.add_argument("--out", default=str(default_path()))
    ap.add_argument("--work", default=str(ROOT / ".cache/train_scorer"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--folds", type=int, default=5)
    a = ap.parse_args(argv)
    ann = Path(a.annotations) if a.annotations else coco_dev() / "annotations.json"
    images = Path(a.images) if a.images else ann.parent / "images"
    if not ann.exists():
        print(f"no training data at {ann}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    data = collect(ann, images, a.work, limit=a.limit)
    t1 = time.perf_counter()
    res = evaluate(data, cross_validate(data, folds=a.folds))
    table = format_results(res)
    print(table)
    names, counts = np.unique(data["name"], return_counts=True)
    meta = {"trained_on": str(ann.name if a.annotations else "coco-dev (64 COCO train2017 images)"),
            "images": res["images"], "instances": res["instances"], "candidates": res["candidates"],
            "candidates_by_source": dict(zip(names.tolist(), counts.tolist())),
            "cv_spearman_pooled": res["spearman"]["single"]["pooled (sources)"],
            "cv_select_miou": res["miou"]["select (highest predicted quality)"]}
    model = train(data, meta=meta)
    out = model.save(a.out)
    cmd = "scripts/train_scorer.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:]))
    md = Path(out).with_suffix(".md")
    md.write_text(f"# Quality scorer `{Path(out).name}`\n\n"
                  f"Written by `.venv/bin/python {cmd}` (collecting {t1 - t0:.0f} s). Gradient-boosted trees "
                  "(scikit-learn GradientBoostingRegressor, 200 trees of depth 3, learning rate 0.05, subsample 0.8), "
                  "stored as JSON and evaluated with numpy.\n\n"
                  f"Training data: {json.dumps(meta['candidates_by_source'])} candidates of {res['instances']} "
                  f"instances in {res['images']} images ({meta['trained_on']}); target: IoU with the true mask. "
                  "Every candidate appears twice, with and without the cross-source features, so that one model "
                  "serves the single stages and `select`.\n\n"
                  "## Figures (image-level cross-validation)\n\n" + table + "\n")
    print(f"wrote {out} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
