"""The quality scorer's prediction as the stages call it: one image's masks at a time.

Every stage scores each image's masks once (`Scorer.score_image`), a handful of rows per call, so the cost
per call, not per row, is what a shard pays. Side by side in one run on the shipped default scorer: its
trees walked one at a time (`Tree.predict`, summed in order) against all trees walked together
(`Scorer.raw`, `Forest`), for calls of 1, 7 (COCO's mean instances per image), 40 and 500 rows; the two
answers are checked equal bit for bit. The rows are the features of coco-dev's true masks (as a stage
computes them) when ../shared/data/coco-dev is present, else random ones.

    .venv/bin/python benchmarks/bench_scorer.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import json
import time

from common import coco_dev

import numpy as np

from pseudomask.mask_metrics import GroundTruth
from pseudomask.images import read_image
from pseudomask.quality.features import FEATURES, image_features
from pseudomask.quality.scorer import get_scorer


def dev_features() -> np.ndarray | None:
    """Features of coco-dev's true masks, scored as GrabCut's (the stage columns missing)."""
    root = coco_dev()
    if not (root / "annotations.json").exists():
        return None
    gt = GroundTruth(root / "annotations.json")
    coco = json.loads((root / "annotations.json").read_text())
    rows = []
    for im in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        if anns:
            masks = np.stack([gt.mask(a["id"]) for a in anns]).astype(np.uint8)
            rows.append(image_features(read_image(root / "images" / im["file_name"]), anns, masks,
                                       ["grabcut"] * len(anns)))
    return np.concatenate(rows)


def tree_by_tree(scorer, x: np.ndarray) -> np.ndarray:
    out = np.full(len(x), scorer.init)
    for t in scorer.trees:
        out += scorer.learning_rate * t.predict(x)
    return out


def per_call_ms(fn, x: np.ndarray, repeat: int) -> float:
    fn(x)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn(x)
    return (time.perf_counter() - t0) / repeat * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    scorer = get_scorer("default")
    feats = dev_features()
    what = "coco-dev's true masks" if feats is not None else "random features (coco-dev absent)"
    if feats is None:
        feats = np.random.default_rng(0).normal(0, 1, (500, len(FEATURES)))
    print(f"default scorer: {len(scorer.trees)} trees; rows: {len(feats)} feature vectors of {what}")
    print(f"{'rows per call':>13} {'tree by tree ms':>16} {'together ms':>12} {'ratio':>6} {'equal':>6}")
    for n in (1, 7, 40, 500):
        x = np.resize(feats, (n, feats.shape[1]))
        equal = np.array_equal(tree_by_tree(scorer, x), scorer.raw(x))
        old = per_call_ms(lambda v: tree_by_tree(scorer, v), x, args.repeat)
        new = per_call_ms(scorer.raw, x, args.repeat)
        print(f"{n:>13} {old:>16.3f} {new:>12.3f} {new / old:>6.3f} {str(equal):>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
