"""Budget-aware annotation on real COCO images: does choosing the images to annotate by predicted quality
(mask-guided selection, Bellver et al.) beat choosing them at random?

True masks play the annotator. Runs GrabCut, MCG and the agreement on ../shared/data/coco-dev (cached in
.cache/bench_quality, shared with bench_quality.py) and builds every box's `select` candidates. Start with no
strong images: each candidate's quality is the out-of-fold prediction of a scorer trained on the other folds'
images (5 folds by image id: no image scores itself; the shipped default scorer was trained on coco-dev and
would leak), an instance's quality is that of its selected candidate, an image's score the mean of its
instances' (`choose.image_scores`' rule). The images are split by id: every 4th image (sorted ids) is a fixed
test set, never chosen; the other 48 are the pool. From the pool, N = 4, 8, 16 images are chosen by beta
(0.3 ... 0.7), by lowest score and at random (5 seeds) with `select_for_annotation`; "annotating" them makes
their candidates (with true IoUs) the training data of a new scorer, which then reruns `select` on the images
not chosen. Printed per strategy and N: select's mIoU on the pool's not-chosen images and on the fixed test
images, and the budget (79 s per instance mask of the chosen images).

    .venv/bin/python benchmarks/bench_annotation.py [--work DIR] [--folds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import REPO, coco_dev  # noqa: F401  (also turns off progress bars)

import numpy as np  # noqa: E402

from pseudomask.annotation.choose import select_for_annotation  # noqa: E402
from pseudomask.quality.training import collect, cross_validate, train  # noqa: E402

NS = (4, 8, 16)
BUDGETS = (2000.0, 4000.0, 8000.0)  # seconds: the same choice at equal cost
BETAS = (0.3, 0.5, 0.6, 0.65, 0.7, 0.8)
SEEDS = range(5)


def select_miou(data: dict, quality: np.ndarray, images: np.ndarray) -> float:
    """mIoU of select (per instance the candidate with the highest predicted quality) on these images."""
    inst, y = data["instance"], data["y"]
    rows = np.flatnonzero(np.isin(data["image"], images))
    best = []
    for i in np.unique(inst[rows]):
        r = rows[inst[rows] == i]
        best.append(float(y[r[np.argmax(quality[r])]]))
    return float(np.mean(best)) if best else float("nan")


def image_entries(data: dict, quality: np.ndarray, images: np.ndarray) -> list[dict]:
    """`image_scores`-like entries: an image's score is the mean over its instances of the predicted
    quality of the candidate select takes."""
    inst = data["instance"]
    out = []
    for image_id in images:
        rows = np.flatnonzero(data["image"] == image_id)
        q = [float(quality[rows[inst[rows] == i]].max()) for i in np.unique(inst[rows])]
        out.append({"image_id": int(image_id), "score": float(np.mean(q)) if q else float("nan"),
                    "instances": len(q), "strong": False})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(REPO / ".cache/bench_quality"))
    ap.add_argument("--folds", type=int, default=5)
    a = ap.parse_args(argv)
    root = coco_dev()
    if not (root / "annotations.json").exists():
        print(f"coco-dev not found at {root}; nothing measured")
        return 0
    t0 = time.perf_counter()
    data = collect(root / "annotations.json", root / "images", a.work)
    images = np.unique(data["image"])
    test = images[::4]
    pool = np.setdiff1d(images, test)
    oof = cross_validate(data, folds=a.folds)["cross"]
    entries = image_entries(data, oof, pool)
    print(f"coco-dev: {len(images)} images, {len(np.unique(data['instance']))} instances, {len(data['y'])} "
          f"candidates; pool {len(pool)} images, fixed test {len(test)} images (every 4th id: "
          f"{', '.join(map(str, test[:4]))}, ...)")
    print(f"out-of-fold select mIoU: pool {select_miou(data, oof, pool):.3f}, test {select_miou(data, oof, test):.3f}"
          f" (scorer trained on ~{(a.folds - 1) / a.folds * len(images):.0f} images; for reference)")
    scores = np.array([e["score"] for e in entries])
    print(f"image scores on the pool: mean {scores.mean():.3f}, min {scores.min():.3f}, max {scores.max():.3f}\n")

    def run(strategy: str, n: int, beta: float = 0.4, seed: int = 0, budget: float = 0.0
            ) -> tuple[float, float, float, float, float]:
        res = select_for_annotation(entries, count=n, budget_s=budget, strategy=strategy, beta=beta, seed=seed)
        chosen = np.array([c["image_id"] for c in res["chosen"]])
        scorer = train(data, np.isin(data["image"], chosen), seed=0)
        q = scorer.predict(data["x_cross"])
        rest = np.setdiff1d(pool, chosen)
        mean_score = float(np.mean([c["score"] for c in res["chosen"]]))
        return select_miou(data, q, rest), select_miou(data, q, test), res["spent_s"], len(chosen), mean_score

    print("| strategy | limit | images | mIoU not chosen (pool) | mIoU test | budget (s) | mean score chosen |")
    print("|---|---|---|---|---|---|---|")
    summary: dict[str, dict[str, tuple[float, float, float]]] = {}
    for limit in [("N", n) for n in NS] + [("budget", b) for b in BUDGETS]:
        kw = {"n": limit[1], "budget": 0.0} if limit[0] == "N" else {"n": 0, "budget": limit[1]}
        label = f"N = {limit[1]}" if limit[0] == "N" else f"{limit[1]:.0f} s"
        rows = {}
        for beta in BETAS:
            rows[f"beta {beta}"] = [run("beta", beta=beta, **kw)]
        rows["lowest"] = [run("lowest", **kw)]
        rows["random (5 seeds)"] = [run("random", seed=s, **kw) for s in SEEDS]
        summary[label] = {}
        for name, rs in rows.items():
            r = np.array(rs)
            sd = (lambda k, f=".3f": f" ± {r[:, k].std():{f}}") if len(r) > 1 else (lambda k, f=".3f": "")
            print(f"| {name} | {label} | {r[:, 3].mean():.1f} | {r[:, 0].mean():.3f}{sd(0)} | {r[:, 1].mean():.3f}{sd(1)}"
                  f" | {r[:, 2].mean():.0f}{sd(2, '.0f')} | {r[:, 4].mean():.3f} |")
            summary[label][name] = (float(r[:, 0].mean()), float(r[:, 1].mean()), float(r[:, 1].std()))
    print()
    for label, rows in summary.items():
        rnd = rows["random (5 seeds)"]
        guided = {k: v for k, v in rows.items() if not k.startswith("random")}
        best = max(guided, key=lambda k: guided[k][1])
        print(f"{label}: best quality-guided on test: {best} {guided[best][1]:.3f} vs random {rnd[1]:.3f} ± "
              f"{rnd[2]:.3f} ({guided[best][1] - rnd[1]:+.3f}); on the pool {guided[best][0]:.3f} vs {rnd[0]:.3f}; "
              f"guided choices above random's mean on test: {sum(v[1] > rnd[1] for v in guided.values())}/{len(guided)}")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
