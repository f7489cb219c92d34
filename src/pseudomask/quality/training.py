"""Training data and image-level cross-validation of the quality scorer.

`collect` runs the box-prior stages (GrabCut, MCG, agreement) on a COCO JSON with true masks, builds the
`select` candidates of every box exactly as the stage does, and returns one row per candidate: its features
without (`x_single`, what a single stage's `quality` sees) and with the cross-source features (`x_cross`,
what `select` sees), its true IoU, its proxy box IoU, its name, instance and image. `cross_validate` scores
every candidate by a scorer trained on the other folds' images only (split by image id), and `evaluate`
turns the out-of-fold predictions into the benchmark's figures. Used by scripts/train_scorer.py and
benchmarks/bench_quality.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..masks import box_agreement, mask_iou
from .features import FEATURES
from .scorer import Scorer, fit
from .select import EXTRAS, candidate_features, instance_candidates

SOURCES = ("grabcut", "mcg", "agree")
CANDIDATES = SOURCES + EXTRAS


def run_sources(annotations: str | os.PathLike, images: str | os.PathLike, work: str | os.PathLike,
                limit: int | None = None, workers: int = 2) -> dict[str, Path]:
    """grabcut, mcg and agree artifacts of a dataset in `work` (reused when present), without quality."""
    from ..agree import run_agree
    from ..dataset import load_dataset
    from ..grabcut import run_grabcut
    from ..mcg.stage import run_mcg

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(annotations, images)
    if limit:
        from dataclasses import replace

        keep = {im["id"] for im in ds.images[:limit]}
        ds = replace(ds, images=[im for im in ds.images if im["id"] in keep],
                     instances=[r for r in ds.instances if r["image_id"] in keep])
    paths = {s: work / f"{s}.h5" for s in SOURCES}
    if not paths["grabcut"].exists():
        run_grabcut(ds, paths["grabcut"], workers=workers)
    if not paths["mcg"].exists():
        run_mcg(ds, paths["mcg"], workers=workers)
    if not paths["agree"].exists():
        run_agree(paths["grabcut"], paths["mcg"], paths["agree"])
    return paths


def collect(annotations: str | os.PathLike, images: str | os.PathLike, work: str | os.PathLike,
            limit: int | None = None, workers: int = 2) -> dict[str, Any]:
    """One row per candidate of every box with a true mask (see the module doc)."""
    from ..images import read_image
    from ..metrics import GroundTruth
    from ..store import Artifact

    paths = run_sources(annotations, images, work, limit, workers)
    gt = GroundTruth(annotations)
    out: dict[str, list] = {k: [] for k in ("x_single", "x_cross", "y", "proxy", "name", "instance", "image")}
    feature_s, n_feat = 0.0, 0
    arts = {s: Artifact(p) for s, p in paths.items()}
    try:
        first = arts["grabcut"]
        for image_id in first.image_ids:
            image = first.image(image_id)
            h, w = int(image["height"]), int(image["width"])
            rgb = read_image(Path(first.attrs["image_root"]) / image["file_name"])
            recs = {s: a.records(image_id) for s, a in arts.items()}
            masks = {s: a.masks(image_id) for s, a in arts.items()}
            for k, r in enumerate(recs["grabcut"]):
                if r["status"] == "ignored" or int(r["id"]) not in gt.anns:
                    continue
                true = gt.mask(r["id"])
                cands = instance_candidates(r["bbox"], h, w, {s: recs[s][k] for s in SOURCES},
                                            {s: masks[s][k] for s in SOURCES})
                t0 = time.perf_counter()
                xs = candidate_features(rgb, r["bbox"], cands, cross=False)
                feature_s += time.perf_counter() - t0
                n_feat += len(cands)
                xc = candidate_features(rgb, r["bbox"], cands, cross=True)
                for c, (name, row, m) in enumerate(cands):
                    out["x_single"].append(xs[c])
                    out["x_cross"].append(xc[c])
                    out["y"].append(mask_iou(m, true))
                    out["proxy"].append(box_agreement(m, r["bbox"]))
                    out["name"].append(name)
                    out["instance"].append(int(r["id"]))
                    out["image"].append(int(image_id))
    finally:
        for a in arts.values():
            a.close()
    data = {k: np.asarray(v) for k, v in out.items()}
    data["x_single"] = data["x_single"].reshape(-1, len(FEATURES))
    data["x_cross"] = data["x_cross"].reshape(-1, len(FEATURES))
    data["feature_ms"] = 1000.0 * feature_s / max(n_feat, 1)
    return data


def train(data: dict[str, Any], rows: np.ndarray | None = None, **kw: Any) -> Scorer:
    """A scorer fitted on both feature views of the given rows (all by default)."""
    sel = np.ones(len(data["y"]), bool) if rows is None else rows
    x = np.vstack([data["x_single"][sel], data["x_cross"][sel]])
    y = np.concatenate([data["y"][sel], data["y"][sel]])
    return fit(x, y, **kw)


def cross_validate(data: dict[str, Any], folds: int = 5, seed: int = 0, **kw: Any) -> dict[str, np.ndarray]:
    """Out-of-fold predictions (single and cross view) of every row; folds split the images."""
    images = np.unique(data["image"])
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(rng.permutation(images).tolist(), np.arange(len(images)) % folds))
    fold = np.array([fold_of[int(i)] for i in data["image"]])
    single, cross = np.zeros(len(fold)), np.zeros(len(fold))
    for f in range(folds):
        test = fold == f
        s = train(data, ~test, **kw)
        single[test] = s.predict(data["x_single"][test])
        cross[test] = s.predict(data["x_cross"][test])
    return {"single": single, "cross": cross, "fold": fold}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def evaluate(data: dict[str, Any], pred: dict[str, np.ndarray], keep_rates: Sequence[float] = (0.5, 0.7, 0.9)
             ) -> dict[str, Any]:
    """The benchmark's figures from out-of-fold predictions."""
    y, name, inst = data["y"], data["name"], data["instance"]
    instances = np.unique(inst)
    res: dict[str, Any] = {"instances": int(len(instances)), "images": int(len(np.unique(data["image"]))),
                           "candidates": int(len(y)), "spearman": {}, "miou": {}}
    for view in ("single", "cross"):
        res["spearman"][view] = {n: spearman(pred[view][name == n], y[name == n])
                                 for n in CANDIDATES if np.sum(name == n) > 2}
        srcs = np.isin(name, SOURCES)
        res["spearman"][view]["pooled (sources)"] = spearman(pred[view][srcs], y[srcs])
        res["spearman"][view]["pooled (all candidates)"] = spearman(pred[view], y)
    # mIoU per single source over all instances (no candidate from a source: IoU 0), select, oracle
    best_sel, best_or, best_proxy = [], [], []
    per_source = {n: [] for n in CANDIDATES}
    for i in instances:
        rows = np.flatnonzero(inst == i)
        for n in CANDIDATES:
            r = rows[name[rows] == n]
            per_source[n].append(float(y[r[0]]) if len(r) else 0.0)
        best_sel.append(float(y[rows[np.argmax(pred["cross"][rows])]]))
        best_or.append(float(y[rows].max()))
        best_proxy.append(float(y[rows[np.argmax(data["proxy"][rows])]]))
    res["miou"] = {**{n: float(np.mean(v)) for n, v in per_source.items()},
                   "select (highest predicted quality)": float(np.mean(best_sel)),
                   "highest proxy box IoU": float(np.mean(best_proxy)),
                   "oracle (highest true IoU)": float(np.mean(best_or))}
    # equal keep rates on the GrabCut stage's masks and on select's: by predicted quality vs by proxy box IoU
    res["keep"] = []
    g = name == "grabcut"
    sel_rows = np.array([np.flatnonzero(inst == i)[np.argmax(pred["cross"][inst == i])] for i in instances])
    for label, rows, q in (("grabcut", np.flatnonzero(g), pred["single"]), ("select", sel_rows, pred["cross"])):
        for rate in keep_rates:
            n_keep = max(1, int(round(rate * len(rows))))
            by_q = rows[np.argsort(-q[rows], kind="stable")[:n_keep]]
            by_p = rows[np.argsort(-data["proxy"][rows], kind="stable")[:n_keep]]
            res["keep"].append({"masks": label, "keep_rate": rate, "kept": n_keep, "miou_all": float(y[rows].mean()),
                                "miou_by_quality": float(y[by_q].mean()), "miou_by_proxy": float(y[by_p].mean())})
    res["feature_ms_per_candidate"] = float(data["feature_ms"])
    return res


def format_results(res: dict[str, Any]) -> str:
    """Markdown tables of `evaluate`'s figures."""
    lines = [f"{res['images']} images, {res['instances']} instances, {res['candidates']} candidates; "
             "5-fold cross-validation split by image id (no image scores itself).", "",
             "| Spearman (predicted vs true IoU) | single-stage features | with cross-source features (select) |",
             "|---|---|---|"]
    for k in res["spearman"]["single"]:
        lines.append(f"| {k} | {res['spearman']['single'][k]:.3f} | {res['spearman']['cross'].get(k, float('nan')):.3f} |")
    lines += ["", "| masks | mIoU |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in res["miou"].items()]
    lines += ["", "| masks | keep rate | kept | mIoU all | mIoU kept by quality | mIoU kept by proxy box IoU |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['masks']} | {r['keep_rate']:.0%} | {r['kept']} | {r['miou_all']:.3f} | "
              f"{r['miou_by_quality']:.3f} | {r['miou_by_proxy']:.3f} |" for r in res["keep"]]
    lines += ["", f"Feature time: {res['feature_ms_per_candidate']:.2f} ms per candidate (one thread)."]
    return "\n".join(lines)
