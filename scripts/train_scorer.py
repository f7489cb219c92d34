"""Train the quality scorer on images with true masks and record its training data and figures beside it.

    .venv/bin/python scripts/train_scorer.py [--annotations COCO.json --images DIR] [--out MODEL.json]
        [--work DIR] [--limit N] [--folds 5]

Defaults: ../shared/data/coco-dev (or PSEUDOMASK_COCO_DEV) and the package's default model
(src/pseudomask/quality/default_scorer.json, with default_scorer.md beside it). Runs GrabCut, MCG and the
agreement on the images (cached in --work), builds every box's `select` candidates, measures the scorer by
image-level cross-validation, then fits it on all images and writes the model (JSON) and a .md report.
The workflow trains a model of your own strong images (`dataset.strong`) with the `scorer_train` stage
(`pseudomask scorer-train`), which runs the same training.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("PSEUDOMASK_NO_PROGRESS", "1")

from pseudomask.quality.scorer import default_path  # noqa: E402
from pseudomask.quality.training import train_and_save  # noqa: E402

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
    cmd = "scripts/train_scorer.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:]))
    summary = train_and_save(ann, images, a.out, a.work, folds=a.folds, limit=a.limit, command=f".venv/bin/python {cmd}",
                             trained_on=str(ann.name if a.annotations else "coco-dev (64 COCO train2017 images)"))
    print(summary["table"])
    print(f"wrote {summary['model']} and {summary['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
