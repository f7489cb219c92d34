"""What the report shows, read from the artifacts: files per stage, counts and reasons, proxy box IoUs,
scores against ground truth, predicted quality, keep-rate curves, and the sample images to draw."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import PseudomaskError
from ..export import export_coco
from ..mask_metrics import PseudoMasks, evaluate_tag_only, instance_scores, is_tag_only
from ..merge_drop import judged
from ..registry import mask_stages
from ..store import Artifact
from ..summary import reason_counts

STAGES = ("ingest",) + mask_stages()


def stage_files(results: str | os.PathLike, stages: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """Per stage (in pipeline order) the shard artifacts found under a results folder."""
    root = Path(results)
    out = {}
    for stage in stages or STAGES:
        folder = root / "ingest" / "shards" if stage == "ingest" else root / stage
        files = sorted(folder.glob("*.h5"))
        if files:
            out[stage] = files
    return out


def group_by_stage(paths: Iterable[str | os.PathLike]) -> dict[str, list[Path]]:
    """Artifacts (files, or folders of *.h5) grouped by the stage recorded in each, in pipeline order."""
    groups: dict[str, list[Path]] = {}
    for p in map(Path, paths):
        for f in sorted(p.glob("*.h5")) if p.is_dir() else [p]:
            with Artifact(f) as a:
                groups.setdefault(a.stage, []).append(f)
    rank = {s: i for i, s in enumerate(STAGES)}
    return {s: sorted(groups[s]) for s in sorted(groups, key=lambda s: (rank.get(s, len(STAGES)), s))}


def find_artifacts(results: str | os.PathLike | Sequence[str | os.PathLike],
                   stages: Sequence[str] | None = None) -> tuple[dict[str, list[Path]], Path]:
    """The artifacts per stage of a results folder or of a list of artifacts (files or folders), and the
    folder they are in (for a list, their common folder)."""
    if isinstance(results, (str, os.PathLike)):
        where = Path(results)
        files = stage_files(where, stages)
    else:
        files = group_by_stage(results)
        files = {s: fs for s, fs in files.items() if not stages or s in stages}
        where = Path(os.path.commonpath([str(Path(p).resolve()) for p in results])) if results else Path(".")
    if not files:
        raise PseudomaskError(f"{where}: no stage artifacts found (expected e.g. merge_drop/*.h5, "
                              "ingest/shards/*.h5)")
    return files, where


def stage_tallies(files: Sequence[Path]) -> tuple[Counter, Counter]:
    """Counts by status and by (status, reason pattern) over the shards of one stage, in one read of each."""
    status: Counter = Counter()
    reasons: Counter = Counter()
    for f in files:
        with Artifact(f) as a:
            inst = a.instances
            status.update(a.status_counts())
            reasons.update(reason_counts(inst.get("status", []), inst.get("reason", [])))
    return status, reasons


def category_status(files: Sequence[Path]) -> tuple[list[dict], dict[int, Counter], dict[int, list[float]]]:
    """Categories, per category the counts by status, and per category the proxy box IoUs (if any)."""
    cats: list[dict] = []
    counts: dict[int, Counter] = {}
    proxy: dict[int, list[float]] = {}
    for f in files:
        with Artifact(f) as a:
            cats = cats or a.categories
            inst = a.instances
            for c, s in zip(inst.get("category_id", []), inst.get("status", [])):
                counts.setdefault(int(c), Counter())[str(s)] += 1
            if "proxy_box_iou" in inst:
                for c, p in zip(inst["category_id"], inst["proxy_box_iou"]):
                    if np.isfinite(p):
                        proxy.setdefault(int(c), []).append(float(p))
    return cats, counts, proxy


def proxy_ious(files: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Ids and proxy box IoUs of the judged instances of merge_drop shards."""
    ids, ps = [np.zeros(0, np.int64)], [np.zeros(0)]
    for f in files:
        with Artifact(f, stage="merge_drop") as a:
            i, p = judged(a)
            ids.append(i)
            ps.append(p)
    return np.concatenate(ids), np.concatenate(ps)


def gt_scores(files: Sequence[Path], gt) -> dict[int, dict]:
    """Per annotation id, the metrics row (mask IoU vs ground truth...) over all shards of one stage."""
    rows: dict[int, dict] = {}
    for f in files:
        for r in instance_scores(f, gt):
            if r["status"] != "missing" or r["id"] not in rows:
                rows[r["id"]] = r
    return rows


class StageScores:
    """`gt_scores` per stage, computed once; a failure is remembered and raised again. Call it with a stage."""

    def __init__(self, files: dict[str, list[Path]], gt):
        self.files, self.gt = files, gt
        self.cache: dict[str, dict[int, dict] | PseudomaskError] = {}

    def __call__(self, stage: str) -> dict[int, dict]:
        if stage not in self.cache:
            try:
                self.cache[stage] = gt_scores(self.files[stage], self.gt)
            except PseudomaskError as e:
                self.cache[stage] = e
        if isinstance(self.cache[stage], PseudomaskError):
            raise self.cache[stage]
        return self.cache[stage]


def evaluation_kind(path: str | os.PathLike) -> tuple[int | str, str]:
    """(round or "hybrid", "pseudo masks" or "model") of an evaluation JSON from its place in the results:
    results/evaluate/<f>.json is round 1, results/round<k>/evaluate/<f>.json round k."""
    p = Path(path)
    parent = p.parent.parent.name
    rnd: int | str = int(parent[5:]) if parent.startswith("round") and parent[5:].isdigit() else 1
    if p.stem == "hybrid":
        rnd = "hybrid"
    return rnd, "pseudo masks" if p.stem == "pseudo_masks" else "model"


def tag_only(files: Sequence[Path], gt) -> bool:
    """Whether a stage's artifacts hold tag-only instances (no ground-truth ids; see metrics.is_tag_only)."""
    with PseudoMasks(files[0], gt) as pm:
        return is_tag_only(pm, gt)


def tag_only_metrics(files: Sequence[Path], gt) -> dict:
    """AP^r, ABO and COCO AP of a stage's tag-only masks over all its shards (metrics.evaluate_tag_only)."""
    return evaluate_tag_only(export_coco(files), gt.path)


def pick_samples(files: Sequence[Path], n: int) -> list[tuple[str, int]]:
    """(shard name, image id) of up to n images: first ones that show both a kept and a dropped mask, then
    evenly spread images with instances; deterministic."""
    cands: list[tuple[str, int, bool]] = []
    for f in files:
        with Artifact(f) as a:
            for image_id in a.image_ids:
                st = set(a.instances["status"][a.rows(image_id)]) if "status" in a.instances else set()
                if st:
                    cands.append((f.stem, image_id, {"kept", "dropped"} <= st))
    if n <= 0 or not cands:
        return []
    mixed = [c for c in cands if c[2]]
    pick = [mixed[int(i)] for i in np.linspace(0, len(mixed) - 1, min(len(mixed), (n + 1) // 2)).round()] if mixed else []
    rest = [c for c in cands if c not in pick]
    if rest and len(pick) < n:
        k = min(n - len(pick), len(rest))
        pick += [rest[int(i)] for i in np.linspace(0, len(rest) - 1, k).round()]
    return [(s, i) for s, i, _ in dict.fromkeys(pick)]


def stage_quality(files: Sequence[Path]) -> dict[str, np.ndarray]:
    """Over the shards of one stage, the instances with a finite predicted `quality`: columns id, quality,
    status, shard (stem) and, where the stage has one, proxy_box_iou (NaN otherwise). Empty when none."""
    cols: dict[str, list] = {"id": [], "quality": [], "status": [], "shard": [], "proxy_box_iou": []}
    for f in files:
        with Artifact(f) as a:
            inst = a.instances
            if "quality" not in inst or not len(inst["quality"]):
                continue
            q = np.asarray(inst["quality"], np.float64)
            sel = np.isfinite(q)
            n = int(sel.sum())
            cols["id"].append(np.asarray(inst["id"])[sel].astype(np.int64))
            cols["quality"].append(q[sel])
            cols["status"].append(np.asarray(inst["status"]).astype(str)[sel])
            cols["shard"].append(np.full(n, f.stem, dtype=object))
            proxy = (np.asarray(inst["proxy_box_iou"], np.float64) if "proxy_box_iou" in inst
                     else np.full(len(q), np.nan))
            cols["proxy_box_iou"].append(proxy[sel])
    if not cols["id"] or not sum(len(x) for x in cols["id"]):
        return {}
    return {k: np.concatenate(v) for k, v in cols.items()}


def lowest_quality(qual: dict[str, np.ndarray], n: int, status: str = "kept") -> list[tuple[str, int, float]]:
    """(shard, instance id, quality) of the n instances of `status` with the lowest predicted quality,
    ascending (ties by id)."""
    if not qual or n <= 0:
        return []
    sel = np.flatnonzero(qual["status"] == status)
    order = sel[np.lexsort((qual["id"][sel], qual["quality"][sel]))][:n]
    return [(str(qual["shard"][i]), int(qual["id"][i]), float(qual["quality"][i])) for i in order]


def keep_rate_curves(scores: dict[str, np.ndarray], true_iou: np.ndarray,
                     fractions: Sequence[float] = tuple(np.linspace(0.1, 1.0, 10))) -> list[dict]:
    """At each fraction kept, the mIoU of the masks kept by ranking on each score (highest kept first;
    ties by position), so that criteria compare at equal keep rates. Rows: fraction, kept, then one mIoU
    per score name."""
    true_iou = np.asarray(true_iou, np.float64)
    n = len(true_iou)
    orders = {k: np.lexsort((np.arange(n), -np.asarray(v, np.float64))) for k, v in scores.items()}
    rows = []
    for f in fractions:
        k = max(1, int(round(f * n))) if n else 0
        row = {"fraction": float(f), "kept": k}
        for name, order in orders.items():
            row[name] = float(true_iou[order[:k]].mean()) if k else None
        rows.append(row)
    return rows
