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

import json
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..agree import run_agree
from ..dataset import load_dataset, strong_instances_coco
from ..errors import PseudomaskError
from ..files import write_json
from ..grabcut import run_grabcut
from ..images import read_annotated_image
from ..mask_metrics import GroundTruth
from ..masks import box_agreement, mask_iou
from ..mcg.boxes import run_mcg
from ..settings import Settings, setting
from ..store import Artifact
from .features import FEATURES
from .ranking import spearman
from .scorer import CHOICE_FEATURES, Scorer, choice_features, fit
from .select import EXTRAS, candidate_features, instance_candidates

SOURCES = ("grabcut", "mcg", "agree")
CANDIDATES = SOURCES + EXTRAS


def run_sources(annotations: str | os.PathLike, images: str | os.PathLike, work: str | os.PathLike,
                limit: int | None = None, workers: int = 2) -> dict[str, Path]:
    """grabcut, mcg and agree artifacts of a dataset in `work` (reused when present), without quality."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(annotations, images)
    if limit:
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
            rgb = read_annotated_image(Path(first.attrs["image_root"]) / image["file_name"], image)
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


def box_relative(data: dict[str, Any], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The choice model's inputs (`choice_features` per box, cross view) and targets (IoU minus the mean IoU
    of the box's candidates) of the given rows, in row order."""
    idx = np.flatnonzero(rows)
    x = np.zeros((len(idx), len(CHOICE_FEATURES)))
    y = np.zeros(len(idx))
    inst = data["instance"][idx]
    for i in np.unique(inst):
        at = np.flatnonzero(inst == i)
        x[at] = choice_features(data["x_cross"][idx[at]])
        y[at] = data["y"][idx[at]] - data["y"][idx[at]].mean()
    return x, y


def train(data: dict[str, Any], rows: np.ndarray | None = None, **kw: Any) -> Scorer:
    """A scorer fitted on both feature views of the given rows (all by default), with a choice model
    fitted on the boxes' relative IoUs (see `Scorer.choice`)."""
    sel = np.ones(len(data["y"]), bool) if rows is None else rows
    x = np.vstack([data["x_single"][sel], data["x_cross"][sel]])
    y = np.concatenate([data["y"][sel], data["y"][sel]])
    choice = fit(*box_relative(data, sel), features=CHOICE_FEATURES, name="choice")
    return fit(x, y, choice=choice, **kw)


def cross_validate(data: dict[str, Any], folds: int = 5, seed: int = 0, split: str = "random",
                   **kw: Any) -> dict[str, np.ndarray]:
    """Out-of-fold predictions (single, cross and choice view) of every row; folds split the images: at
    random (`folds` folds) or by the parity of the image id (`split="parity"`: two folds, even and odd)."""
    images = np.unique(data["image"])
    if split == "parity":
        folds, fold_of = 2, {int(i): int(i) % 2 for i in images}
    else:
        rng = np.random.default_rng(seed)
        fold_of = dict(zip(rng.permutation(images).tolist(), np.arange(len(images)) % folds))
    fold = np.array([fold_of[int(i)] for i in data["image"]])
    single, cross, choice = np.zeros(len(fold)), np.zeros(len(fold)), np.zeros(len(fold))
    for f in range(folds):
        test = fold == f
        s = train(data, ~test, **kw)
        single[test] = s.predict(data["x_single"][test])
        cross[test] = s.predict(data["x_cross"][test])
        choice[test] = s.choice.raw(box_relative(data, test)[0])
    return {"single": single, "cross": cross, "choice": choice, "fold": fold}


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
    best_sel, best_abs, best_or, best_proxy = [], [], [], []
    per_source = {n: [] for n in CANDIDATES}
    for i in instances:
        rows = np.flatnonzero(inst == i)
        for n in CANDIDATES:
            r = rows[name[rows] == n]
            per_source[n].append(float(y[r[0]]) if len(r) else 0.0)
        best_sel.append(float(y[rows[np.argmax(pred["choice"][rows])]]))
        best_abs.append(float(y[rows[np.argmax(pred["cross"][rows])]]))
        best_or.append(float(y[rows].max()))
        best_proxy.append(float(y[rows[np.argmax(data["proxy"][rows])]]))
    res["miou"] = {**{n: float(np.mean(v)) for n, v in per_source.items()},
                   "select (choice model)": float(np.mean(best_sel)),
                   "highest predicted quality": float(np.mean(best_abs)),
                   "highest proxy box IoU": float(np.mean(best_proxy)),
                   "oracle (highest true IoU)": float(np.mean(best_or))}
    # equal keep rates on the GrabCut stage's masks and on select's: by predicted quality vs by proxy box IoU
    res["keep"] = []
    g = name == "grabcut"
    sel_rows = np.array([np.flatnonzero(inst == i)[np.argmax(pred["choice"][inst == i])] for i in instances])
    for label, rows, q in (("grabcut", np.flatnonzero(g), pred["single"]), ("select", sel_rows, pred["cross"])):
        for rate in keep_rates:
            n_keep = max(1, int(round(rate * len(rows))))
            by_q = rows[np.argsort(-q[rows], kind="stable")[:n_keep]]
            by_p = rows[np.argsort(-data["proxy"][rows], kind="stable")[:n_keep]]
            res["keep"].append({"masks": label, "keep_rate": rate, "kept": n_keep, "miou_all": float(y[rows].mean()),
                                "miou_by_quality": float(y[by_q].mean()), "miou_by_proxy": float(y[by_p].mean())})
    res["feature_ms_per_candidate"] = float(data["feature_ms"])
    return res


def _f3(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def format_results(res: dict[str, Any]) -> str:
    """Markdown tables of `evaluate`'s figures."""
    lines = [f"{res['images']} images, {res['instances']} instances, {res['candidates']} candidates; "
             "5-fold cross-validation split by image id (no image scores itself).", "",
             "| Spearman (predicted vs true IoU) | single-stage features | with cross-source features (select) |",
             "|---|---|---|"]
    for k in res["spearman"]["single"]:
        lines.append(f"| {k} | {_f3(res['spearman']['single'][k])} | {_f3(res['spearman']['cross'].get(k))} |")
    lines += ["", "| masks | mIoU |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in res["miou"].items()]
    lines += ["", "| masks | keep rate | kept | mIoU all | mIoU kept by quality | mIoU kept by proxy box IoU |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['masks']} | {r['keep_rate']:.0%} | {r['kept']} | {r['miou_all']:.3f} | "
              f"{r['miou_by_quality']:.3f} | {r['miou_by_proxy']:.3f} |" for r in res["keep"]]
    lines += ["", f"Feature time: {res['feature_ms_per_candidate']:.2f} ms per candidate (one thread)."]
    return "\n".join(lines)


def train_and_save(annotations: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
                   work: str | os.PathLike, *, folds: int = 5, limit: int | None = None, trained_on: str = "",
                   command: str = "", workers: int = 2) -> dict[str, Any]:
    """Collect the candidates of every box of `annotations` (a COCO JSON with true masks), measure a scorer
    by image-level cross-validation (when there are at least `folds` images), fit it on all of them and
    write the model (JSON) at `out` with a .md report beside it; returns a summary."""
    t0 = time.perf_counter()
    data = collect(annotations, images, work, limit=limit, workers=workers)
    seconds = time.perf_counter() - t0
    if not len(data["y"]):
        raise PseudomaskError(f"{annotations}: no box with a true mask to train the quality scorer on")
    n_images = len(np.unique(data["image"]))
    res = evaluate(data, cross_validate(data, folds=folds)) if n_images >= max(folds, 2) else None
    table = format_results(res) if res else f"{n_images} images: too few for {folds}-fold cross-validation."
    names, counts = np.unique(data["name"], return_counts=True)
    meta = {"trained_on": trained_on or str(Path(annotations).name), "images": n_images,
            "instances": int(len(np.unique(data["instance"]))), "candidates": int(len(data["y"])),
            "candidates_by_source": dict(zip(names.tolist(), counts.tolist()))}
    if res:
        meta.update(cv_spearman_pooled=res["spearman"]["single"]["pooled (sources)"],
                    cv_select_miou=res["miou"]["select (choice model)"])
    path = train(data, meta=meta).save(out)
    md = Path(path).with_suffix(".md")
    md.write_text(f"# Quality scorer `{Path(path).name}`\n\n"
                  + (f"Written by `{command}` " if command else "Written ")
                  + "from the candidates of the boxes with true masks. Gradient-boosted trees (scikit-learn "
                  "GradientBoostingRegressor, 200 trees of depth 3, learning rate 0.05, subsample 0.8), stored as "
                  "JSON and evaluated with numpy.\n\n"
                  f"Training data: {json.dumps(meta['candidates_by_source'])} candidates of {meta['instances']} "
                  f"instances in {n_images} images ({meta['trained_on']}); target: IoU with the true mask. "
                  "Every candidate appears twice, with and without the cross-source features, so that one model "
                  "serves the single stages and `select`.\n\n"
                  "## Figures (image-level cross-validation)\n\n" + table + "\n")
    return {"model": str(path), "report": str(md), "collect_s": round(seconds, 1), **meta, "table": table}


@dataclass(frozen=True)
class ScorerTrainSettings(Settings):
    SECTION = "scorer_train"
    folds: int = setting(5, "image-level cross-validation folds of the figures written beside the model",
                         minimum=2)
    min_instances: int = setting(20, "fewest strong instances to train on; fewer is an error (keep the default "
                                     "model)", minimum=1)


def strong_coco(shards: Sequence[str | os.PathLike]) -> tuple[dict, Path]:
    """The strong instances (source gt) of ingested shards as one COCO dataset with their true masks, and
    the shards' image folder."""
    datasets = [load_dataset(p) for p in shards]
    return strong_instances_coco(datasets), Path(datasets[0].image_root if datasets else ".")


def run_stage(s: ScorerTrainSettings, *, shards: list[str], images: str | None, model: str,
              threads: int = 1) -> dict:
    """The `scorer_train` stage (see pseudomask.registry): a quality model from the strong instances of the
    shards (or from every instance of a COCO JSON with masks given with --images)."""
    with tempfile.TemporaryDirectory(prefix=".scorer_train-", dir=Path(model).parent) as tmp:
        work = Path(tmp)  # the sources' artifacts of these images: never reused by another run
        if len(shards) == 1 and str(shards[0]).endswith(".json"):
            if not images:
                raise PseudomaskError(f"{shards[0]}: a COCO JSON needs its image folder (--images)")
            coco, root, what = Path(shards[0]), Path(images), ""
        else:
            data, root = strong_coco(shards)
            if len(data["annotations"]) < s.min_instances:
                raise PseudomaskError(f"{len(data['annotations'])} strong instances (source gt) in {len(shards)} "
                                      f"shard(s), fewer than scorer_train.min_instances = {s.min_instances}: give "
                                      "more true masks (dataset.strong) or lower min_instances")
            coco = write_json(data, work / "strong.json")
            root, what = Path(images) if images else root, f"strong instances of {len(shards)} shard(s)"
        summary = train_and_save(coco, root, model, work, folds=s.folds, workers=threads, trained_on=what,
                                 command="pseudomask scorer-train")
    summary.pop("table")
    return summary
