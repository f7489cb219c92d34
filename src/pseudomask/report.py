"""A self-contained HTML report of a results folder: what each stage did, and how good the pseudo masks are.

Sections: instance counts by status per stage; the drop curve over thresholds (BoxCaseg Table 8 shape:
drop rate, and with ground truth the mIoU of kept masks next to that of all masks), computed from the
merge_drop data; a histogram of proxy box IoU; mask quality per stage against ground truth when given;
predicted mask quality (histograms; with ground truth calibration, Spearman and drop curves by proxy box IoU
and by quality at equal keep rates; the lowest-quality kept masks to review first);
counts by category; sample images with every stage's overlay side by side; provenance. Every picture is a
base64 PNG inside the one HTML file, so the report can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import html
import io
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from . import __version__
from .errors import PseudomaskError
from .merge_drop import THRESHOLDS, drop_curve, is_dropped, judged
from .quality.ranking import spearman
from .settings import Settings, setting
from .registry import mask_stages
from .store import STATUSES, Artifact

STAGES = ("ingest",) + mask_stages()


@dataclass(frozen=True)
class ReportSettings(Settings):
    SECTION = "report"
    samples: int = setting(4, "sample images shown stage by stage", minimum=0)
    thresholds: tuple[float, ...] = setting(list(THRESHOLDS), "drop-curve thresholds (BoxCaseg Table 8)")


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


def png_uri(rgb: np.ndarray, max_width: int | None = None) -> str:
    """An RGB image as a data URI (PNG), downscaled to `max_width` if wider."""
    if max_width and rgb.shape[1] > max_width:
        h = max(1, round(rgb.shape[0] * max_width / rgb.shape[1]))
        rgb = cv2.resize(rgb, (max_width, h), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise PseudomaskError("report: PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def figure_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "<td>–</td>"
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            return f"<td class='n'>{v:.3f}</td>" if isinstance(v, (float, np.floating)) else f"<td class='n'>{v}</td>"
        return f"<td>{html.escape(str(v))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# ---------------------------------------------------------------- data

def stage_tallies(files: Sequence[Path]) -> tuple[Counter, Counter]:
    """Counts by status and by (status, reason pattern) over the shards of one stage, in one read of each."""
    from .summary import reason_counts

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
    from .mask_metrics import instance_scores

    rows: dict[int, dict] = {}
    for f in files:
        for r in instance_scores(f, gt):
            if r["status"] != "missing" or r["id"] not in rows:
                rows[r["id"]] = r
    return rows


def evaluation_kind(path: str | os.PathLike) -> tuple[int | str, str]:
    """(round or "hybrid", "pseudo masks" or "model") of an evaluation JSON from its place in the results:
    results/evaluate/<f>.json is round 1, results/round<k>/evaluate/<f>.json round k."""
    p = Path(path)
    parent = p.parent.parent.name
    rnd: int | str = int(parent[5:]) if parent.startswith("round") and parent[5:].isdigit() else 1
    if p.stem == "hybrid":
        rnd = "hybrid"
    return rnd, "pseudo masks" if p.stem == "pseudo_masks" else "model"


def evaluation_section(paths: Sequence[str | os.PathLike]) -> str:
    """The evaluate stages' figures side by side, per round: the pseudo masks (mIoU, or AP^r for tag-only
    masks; PQ) and the retrained model (COCO AP, AP^r, ABO)."""
    from .errors import read_json

    masks, models = [], []
    for path in sorted(paths, key=lambda p: (str(evaluation_kind(p)[0]), str(p))):
        m = read_json(path, PseudomaskError, "evaluation")
        rnd, kind = evaluation_kind(path)
        up = 2 if isinstance(rnd, int) and rnd >= 2 else 1  # from the results folder: [round<k>/]evaluate/<f>
        name = str(Path(path).relative_to(Path(path).parents[up]) if len(Path(path).parents) > up else Path(path))
        if kind == "pseudo masks":
            masks.append([rnd, name, m.get("mode", "id_matched"), m.get("miou"), m.get("apr_50"), m.get("abo"),
                          m.get("pq"), m.get("true_masks")])
        else:
            models.append([rnd, name, m.get("segm_AP"), m.get("segm_AP50"), m.get("bbox_AP"), m.get("apr_50"),
                           m.get("apr_75"), m.get("abo"), m.get("segm_APs")])
    parts = ["<h2>Evaluation by round</h2><p class='note'>the evaluate stages' JSON files: round 1 is "
             "results/evaluate, round k results/round&lt;k&gt;/evaluate (retrain.rounds), hybrid the hybrid "
             "recipe's fused predictions.</p>"]
    if masks:
        parts.append("<h3>Pseudo masks</h3>" + _table(["round", "file", "mode", "mIoU", "AP^r .5", "ABO", "PQ",
                                                       "true masks given"], masks))
    if models:
        parts.append("<h3>Retrained model</h3>" + _table(["round", "file", "segm AP", "segm AP50", "bbox AP",
                                                          "AP^r .5", "AP^r .75", "ABO", "segm AP small"], models))
    return "".join(parts)


def annotation_section(files: dict[str, list[Path]], cost: str | os.PathLike | None,
                       choice: str | os.PathLike | None, thumb_width: int = 320, show: int = 8) -> str:
    """What the labels cost (annotation-cost's JSON) and which images a person should annotate next
    (choose-images' JSON): budget, scores and the chosen images with their pseudo masks."""
    from .errors import read_json
    from .visualize import render_artifact_image

    parts = ["<h2>Annotation: cost and the images to annotate next</h2>"]
    if cost:
        c = read_json(cost, PseudomaskError, "annotation cost")
        sec, days = c.get("seconds", {}), c.get("days", {})
        labels = [("tags", "tags (every class verified per image)"), ("tags_counts", "tags + counts"),
                  ("boxes", "boxes"), ("masks_strong", "masks of the strong images"),
                  ("run", "this run's labels"), ("full_masks", "masks for the whole dataset")]
        rows = [[what, sec.get(k), days.get(k)] for k, what in labels if k in sec]
        share = c.get("run_vs_full_masks")
        parts.append("<p class='note'>Bearman et al.'s per-label times (1 s per class verified, 1.48 s per present "
                     "class counted, 7 s per box, 79 s per mask) on this dataset's counts"
                     + (f"; this run's labels cost {share:.1%} of full mask annotation" if share is not None else "")
                     + ".</p>" + _table(["labels", "seconds", "annotator-days"], rows))
    if choice:
        ch = read_json(choice, PseudomaskError, "annotation choice")
        chosen = ch.get("chosen", [])
        how = ch.get("strategy", "")
        if how == "beta":
            how += f" (closest to {ch.get('beta')})"
        parts.append(f"<p class='note'>{len(chosen)} of {ch.get('candidates', '?')} eligible images chosen by "
                     f"{html.escape(str(how))}; spent {ch.get('spent_s', 0):.0f} s ({ch.get('spent_days', 0):.2f} "
                     f"annotator-days) of a budget of {ch.get('budget_s') or 'no limit'} s; mean image score "
                     f"{ch.get('mean_score_chosen')} chosen vs {ch.get('mean_score_all')} all.</p>"
                     + _table(["rank", "image", "score (mean predicted quality)", "cost (s)"],
                              [[r.get("rank"), r.get("image_id"), r.get("score"), r.get("cost_s")] for r in chosen]))
        ref = files.get("merge_drop") or next(iter(files.values()))
        figs = []
        for r in chosen[:show]:
            for f in ref:
                with Artifact(f) as a:
                    if int(r["image_id"]) in a.image_ids:
                        rgb = render_artifact_image(a, int(r["image_id"]))
                        figs.append(f"<figure><img alt='image {r['image_id']}' src='{png_uri(rgb, thumb_width)}'>"
                                    f"<figcaption>image {r['image_id']}, score {r.get('score', 0):.3f}"
                                    "</figcaption></figure>")
                        break
        if figs:
            parts.append(f"<div class='strip' style='grid-template-columns:repeat({min(len(figs), 4)},"
                         f"minmax(150px,1fr))'>" + "".join(figs) + "</div>")
    return "".join(parts)


def tag_only(files: Sequence[Path], gt) -> bool:
    """Whether a stage's artifacts hold tag-only instances (no ground-truth ids; see metrics.is_tag_only)."""
    from .mask_metrics import PseudoMasks, is_tag_only

    with PseudoMasks(files[0], gt) as pm:
        return is_tag_only(pm, gt)


def tag_only_metrics(files: Sequence[Path], gt) -> dict:
    """AP^r, ABO and COCO AP of a stage's tag-only masks over all its shards (metrics.evaluate_tag_only)."""
    from .export import export_coco
    from .mask_metrics import evaluate_tag_only

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


def render_by_status(artifact: Artifact, image_id: int) -> np.ndarray:
    """An image of an artifact with each mask and box in the colour of its status (kept green, dropped magenta)."""
    from .images import ImageError, read_image
    from .visualize import STATUS_COLOURS, overlay

    im = artifact.image(image_id)
    try:
        rgb = read_image(Path(artifact.attrs.get("image_root", ".")) / im["file_name"])
    except ImageError:
        rgb = np.full((im["height"], im["width"], 3), 40, np.uint8)
    recs = artifact.records(image_id)
    names = {c["id"]: c["name"] for c in artifact.categories}
    colours = np.array([STATUS_COLOURS.get(r["status"], (255, 255, 0)) for r in recs], np.uint8).reshape(-1, 3)
    labels = [f"{names.get(r['category_id'], r['category_id'])}:{r['status']}" for r in recs]
    return overlay(rgb, artifact.masks(image_id), [r["bbox"] for r in recs], labels, colours=colours)


# ---------------------------------------------------------------- plots

def plot_histogram(proxy: np.ndarray, threshold: float | None) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    bins = np.linspace(0, 1, 41)
    if threshold is not None:
        keep = ~is_dropped(proxy, threshold)
        ax.hist([proxy[keep], proxy[~keep]], bins=bins, stacked=True, color=["#2ca02c", "#d62785"],
                label=[f"kept ({keep.sum()})", f"dropped ({(~keep).sum()})"])
        ax.axvline(threshold, color="k", ls="--", lw=1)
        ax.legend(loc="upper left", fontsize=8)
    else:
        ax.hist(proxy, bins=bins, color="#1f77b4")
    ax.set_xlabel("proxy box IoU = IoU(box of merged mask, GT box)")
    ax.set_ylabel("instances")
    ax.set_xlim(0, 1)
    return figure_uri(fig)


def plot_curve(curve: list[dict]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    t = np.arange(len(curve))  # evenly spaced like BoxCaseg Table 8; labelled with the thresholds
    ax.plot(t, [r["drop_rate"] for r in curve], "o-", color="#d62785", label="drop rate")
    if curve and "miou_kept" in curve[0]:
        ax.plot(t, [np.nan if r["miou_kept"] is None else r["miou_kept"] for r in curve], "s-", color="#2ca02c",
                label="mIoU of kept masks")
        ax.plot(t, [np.nan if r["miou_all"] is None else r["miou_all"] for r in curve], ":", color="#555555",
                label="mIoU of all masks")
    ax.set_xlabel("drop threshold on proxy box IoU")
    ax.set_ylim(0, 1)
    ax.set_xticks(t, [f"{r['threshold']:.2f}" for r in curve])
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return figure_uri(fig)


# ---------------------------------------------------------------- predicted mask quality

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


def quality_crop(artifact: Artifact, instance_id: int, pad: float = 0.25, size: int = 96) -> np.ndarray:
    """The image around one instance's box (padded by `pad` of its size) with its mask and box overlaid,
    scaled so that the longer side is about `size` px."""
    from .images import ImageError, read_image
    from .visualize import STATUS_COLOURS, overlay

    hit = np.flatnonzero(artifact.instances["id"] == int(instance_id))
    i = int(hit[0])
    image_id = int(artifact.instances["image_id"][i])
    im = artifact.image(image_id)
    try:
        rgb = read_image(Path(artifact.attrs.get("image_root", ".")) / im["file_name"])
    except ImageError:
        rgb = np.full((im["height"], im["width"], 3), 40, np.uint8)
    h, w = rgb.shape[:2]
    mask = artifact.mask(instance_id) if artifact.has_masks() else np.zeros((h, w), np.uint8)
    if mask.shape != (h, w):
        mask = np.zeros((h, w), np.uint8)
    x, y, bw, bh = (float(v) for v in artifact.instances["bbox"][i])
    px, py = pad * max(bw, 1), pad * max(bh, 1)
    x0, y0 = max(0, int(np.floor(x - px))), max(0, int(np.floor(y - py)))
    x1, y1 = min(w, int(np.ceil(x + bw + px))), min(h, int(np.ceil(y + bh + py)))
    if x1 <= x0 or y1 <= y0:
        x0, y0, x1, y1 = 0, 0, w, h
    crop, m = rgb[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    status = str(artifact.instances["status"][i])
    colour = np.array([STATUS_COLOURS.get(status, (255, 255, 0))], np.uint8)
    scale = max(1, size // max(crop.shape[:2]))
    out = overlay(crop, m[None], [[x - x0, y - y0, bw, bh]], colours=colour, scale=scale)
    if max(out.shape[:2]) > size * 2:  # large objects: shrink to a thumbnail
        f = size / max(out.shape[:2])
        out = cv2.resize(out, (max(1, round(out.shape[1] * f)), max(1, round(out.shape[0] * f))),
                         interpolation=cv2.INTER_AREA)
    return out


def plot_quality_histograms(per_stage: dict[str, np.ndarray]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    bins = np.linspace(0, 1, 41)
    for s, q in per_stage.items():
        ax.hist(np.clip(q, 0, 1), bins=bins, histtype="step", lw=1.5, label=f"{s} ({len(q)})")
    ax.set_xlabel("predicted mask quality (predicted IoU with the true mask)")
    ax.set_ylabel("instances")
    ax.set_xlim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    return figure_uri(fig)


def plot_calibration(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """Per stage, predicted vs true IoU: points, the diagonal, and the mean true IoU per predicted bin."""
    from matplotlib.figure import Figure

    n = len(pairs)
    fig = Figure(figsize=(3.0 * n, 3.2))
    bins = np.linspace(0, 1, 11)
    for k, (s, (pred, true)) in enumerate(pairs.items()):
        ax = fig.add_subplot(1, n, k + 1)
        ax.scatter(pred, true, s=6, alpha=0.4, color="#1f77b4", lw=0)
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        which = np.clip(np.digitize(pred, bins) - 1, 0, len(bins) - 2)
        mids, means = [], []
        for b in range(len(bins) - 1):
            if np.any(which == b):
                mids.append(pred[which == b].mean())
                means.append(true[which == b].mean())
        ax.plot(mids, means, "o-", color="#d62785", ms=3, label="binned mean")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("predicted IoU", fontsize=8)
        if k == 0:
            ax.set_ylabel("true IoU", fontsize=8)
            ax.legend(loc="upper left", fontsize=7)
        ax.tick_params(labelsize=7)
    return figure_uri(fig)


def plot_keep_rate(rows: list[dict]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    x = [r["fraction"] for r in rows]
    ax.plot(x, [r["proxy_box_iou"] for r in rows], "o-", color="#1f77b4", label="kept by proxy box IoU")
    ax.plot(x, [r["quality"] for r in rows], "s-", color="#2ca02c", label="kept by predicted quality")
    ax.set_xlabel("fraction of masks kept")
    ax.set_ylabel("mIoU of the kept masks")
    ax.set_xlim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return figure_uri(fig)


def quality_section(files: dict[str, list[Path]], gt=None, score=None, gallery: int = 8,
                    thumb_width: int = 160) -> str:
    """The "Predicted mask quality" section: histograms, calibration and Spearman per stage with ground
    truth, the lowest-quality kept masks of the final mask stage, and drop curves by proxy box IoU and by
    quality at equal keep rates. `score(stage)` returns that stage's gt_scores rows (cached by the caller)."""
    head = "<h2 id='predicted-quality'>Predicted mask quality</h2>"
    quals = {s: q for s, fs in files.items() if s != "ingest" and (q := stage_quality(fs))}
    if not quals:
        return head + ("<p class='note'>no predicted quality: no artifact has a finite <code>quality</code> "
                       "column, so this section is skipped.</p>")
    parts = [head, "<p class='note'>the quality scorer's predicted IoU of each mask with its true mask "
             "(instances without a prediction left out).</p>",
             f"<div class='row'><img alt='predicted quality histogram' "
             f"src='{plot_quality_histograms({s: q['quality'] for s, q in quals.items()})}'></div>"]
    if gt is not None and score is not None:
        pairs, srows = {}, []
        for s, q in quals.items():
            try:
                rows = score(s)
            except PseudomaskError as e:
                srows.append([s, 0, None, None, None, str(e)[:60]])
                continue
            have = np.array([int(i) in rows for i in q["id"]], bool)
            pred = q["quality"][have]
            true = np.array([rows[int(i)]["iou"] for i in q["id"][have]], np.float64)
            if not len(pred):
                srows.append([s, 0, None, None, None, "no instance matches a ground-truth id"])
                continue
            pairs[s] = (pred, true)
            srows.append([s, int(len(pred)), spearman(pred, true), float(pred.mean()), float(true.mean()), ""])
        parts.append("<h3>Calibration against ground truth</h3><p class='note'>Spearman rank correlation of "
                     "predicted vs true mask IoU over the instances with a prediction; the dashed diagonal "
                     "is perfect calibration.</p>"
                     + _table(["stage", "instances", "Spearman", "mean predicted", "mean true", "note"], srows))
        if pairs:
            parts.append(f"<div class='row'><img alt='calibration' src='{plot_calibration(pairs)}'></div>")
    # the lowest-quality kept masks of the final mask stage
    final = "merge_drop" if "merge_drop" in quals else list(quals)[-1]
    low = lowest_quality(quals[final], gallery)
    figs = []
    by_shard = {f.stem: f for f in files[final]}
    truth = None
    if gt is not None and score is not None:
        try:
            truth = score(final)
        except PseudomaskError:
            truth = None
    for shard, iid, qv in low:
        with Artifact(by_shard[shard]) as a:
            rgb = quality_crop(a, iid)
        extra = f" · true {truth[iid]['iou']:.2f}" if truth and iid in truth else ""
        figs.append(f"<figure class='lowq' data-id='{iid}'><img alt='instance {iid}' "
                    f"src='{png_uri(rgb, thumb_width)}'><figcaption>id {iid} · q {qv:.2f}{extra}"
                    f"</figcaption></figure>")
    parts.append(f"<h3>Lowest predicted quality: review first ({html.escape(final)})</h3>"
                 + (f"<p class='note'>the {len(low)} kept masks with the lowest predicted quality, ascending; "
                    "crop around the box, mask filled.</p><div class='strip' style='grid-template-columns:"
                    f"repeat({len(figs)},minmax(80px,{thumb_width}px))'>" + "".join(figs) + "</div>"
                    if figs else "<p class='note'>no kept masks with a predicted quality.</p>"))
    # drop curves at equal keep rates
    if gt is not None and score is not None and "merge_drop" in quals:
        q = quals["merge_drop"]
        sel = np.isin(q["status"], ("kept", "dropped")) & np.isfinite(q["proxy_box_iou"])
        try:
            rows = score("merge_drop")
        except PseudomaskError as e:
            rows = None
            parts.append(f"<p class='note'>keep-rate curves not computed: {html.escape(str(e))}</p>")
        if rows is not None and sel.sum():
            true = np.array([rows[int(i)]["iou"] if int(i) in rows else 0.0 for i in q["id"][sel]])
            curve = keep_rate_curves({"proxy_box_iou": q["proxy_box_iou"][sel], "quality": q["quality"][sel]}, true)
            parts.append("<h3>Drop by proxy box IoU or by quality, at equal keep rates</h3><p class='note'>"
                         f"over the {int(sel.sum())} judged merge_drop instances with both scores: keep the "
                         "given fraction with the highest score, mIoU of those kept against ground truth.</p>"
                         "<div class='row'><div>"
                         + _table(["fraction kept", "kept", "mIoU by proxy box IoU", "mIoU by quality"],
                                  [[f"{r['fraction']:.1f}", r["kept"], r["proxy_box_iou"], r["quality"]]
                                   for r in curve])
                         + f"</div><img alt='keep-rate curves' src='{plot_keep_rate(curve)}'></div>")
    return "".join(parts)


# ---------------------------------------------------------------- report

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 6px}
.meta{color:#666;font-size:13px}.note{color:#666;font-size:13px;margin:4px 0}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}.row img{max-width:100%}
.strip{display:grid;gap:6px;overflow-x:auto;margin-bottom:12px}
figure{margin:0}figure img{width:100%;display:block}figcaption{font-size:12px;color:#444;text-align:center}
"""


def build_report(results: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike,
                 ground_truth: str | os.PathLike | None = None, samples: int = 4,
                 stages: Sequence[str] | None = None, thresholds: Sequence[float] = THRESHOLDS,
                 thumb_width: int = 320, reasons: int = 5, gallery: int = 8, cost: str | os.PathLike | None = None,
                 choice: str | os.PathLike | None = None,
                 evaluations: Sequence[str | os.PathLike] | None = None) -> Path:
    """Write the HTML report to `out`, of a results folder or of a list of artifacts (files or folders);
    `cost` and `choice` (annotation-cost and choose-images JSON) add the annotation section, `evaluations`
    (metrics JSONs of the evaluate stages) the evaluation section, by round."""
    from .visualize import STATUS_COLOURS, render_artifact_image

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
    gt = None
    gt_note = "no ground truth configured: mask quality (mIoU) is not shown, only drop rates."
    if ground_truth:
        from .mask_metrics import GroundTruth

        gt = GroundTruth(ground_truth)
        gt_note = f"ground truth: {html.escape(str(ground_truth))}"
    cache: dict[str, dict[int, dict] | PseudomaskError] = {}

    def score(stage: str) -> dict[int, dict]:
        """gt_scores of one stage, computed once (a failure is remembered and raised again)."""
        if stage not in cache:
            try:
                cache[stage] = gt_scores(files[stage], gt)
            except PseudomaskError as e:
                cache[stage] = e
        if isinstance(cache[stage], PseudomaskError):
            raise cache[stage]
        return cache[stage]
    parts = [f"<h1>pseudomask report</h1><div class='meta'>{html.escape(str(where.resolve()))} · "
             f"{time.strftime('%Y-%m-%d %H:%M')} · pseudomask {__version__} · {gt_note}</div>"]

    # counts by status per stage
    tallies = {s: stage_tallies(fs) for s, fs in files.items()}
    counts = {s: t[0] for s, t in tallies.items()}
    rows = [[s, len(fs)] + [counts[s].get(st, 0) for st in STATUSES] + [sum(counts[s].values())]
            for s, fs in files.items()]
    parts.append("<h2>Instances by status and stage</h2>"
                 + _table(["stage", "shards", *STATUSES, "total"], rows))
    why = []
    for s in files:
        for (st, reason), n in tallies[s][1].most_common(reasons):
            why.append([s, st, n, f"{n / max(sum(counts[s].values()), 1):.1%}", reason])
    if why:
        parts.append(f"<h2>Why: the most frequent reasons per stage</h2><p class='note'>up to {reasons} per stage, "
                     "numbers in a reason shown as #; the rows of each instance keep the full reason.</p>"
                     + _table(["stage", "status", "instances", "share", "reason"], why))

    # drop curve and histogram
    md = files.get("merge_drop")
    if md:
        with Artifact(md[0], stage="merge_drop") as a:
            threshold = a.params.get("threshold")
            src = f"{a.params.get('source_stage')} ({a.params.get('source_method')})"
        ids, proxy = proxy_ious(md)
        gt_iou = None
        if gt is not None:
            try:
                scores = score("merge_drop")
                gt_iou = [scores[int(i)]["iou"] if int(i) in scores else 0.0 for i in ids]
            except PseudomaskError as e:
                parts.append(f"<p class='note'>mIoU not computed: {html.escape(str(e))}</p>")
        curve = drop_curve(proxy, thresholds, gt_iou)
        header = ["threshold", "drop rate", "kept", "dropped"]
        if gt_iou is not None:
            header += ["mIoU kept", "mIoU all"]
        crow = [[f"{r['threshold']:.2f}", r["drop_rate"], r["kept"], r["dropped"]]
                + ([r["miou_kept"], r["miou_all"]] if gt_iou is not None else []) for r in curve]
        parts.append(
            f"<h2>Merge and drop: threshold curve</h2><p class='note'>masks from {html.escape(src)}, merged "
            f"(smaller box wins), then judged by proxy box IoU; this run drops below {threshold}. Over "
            f"{len(proxy)} judged instances; drop rate = dropped / judged (BoxCaseg Table 8 on COCO: 0.00, 0.27, "
            f"0.49, 0.64, 0.80).</p><div class='row'><div>{_table(header, crow)}</div>"
            f"<img alt='drop curve' src='{plot_curve(curve)}'>"
            f"<img alt='proxy box IoU histogram' src='{plot_histogram(proxy, threshold)}'></div>")
    else:
        parts.append("<h2>Merge and drop</h2><p class='note'>no merge_drop artifacts in this folder.</p>")

    # mask quality per stage
    if gt is not None:
        from .mask_metrics import summarize

        qrows, trows = [], []
        for s, fs in files.items():
            if s == "ingest":
                continue
            if tag_only(fs, gt):
                t = tag_only_metrics(fs, gt)
                trows.append([s, t["predictions"], t["gt_instances"], t["apr_25"], t["apr_50"], t["apr_70"],
                              t["apr_75"], t["abo"], t["segm_AP"]])
                continue
            try:
                q = summarize(list(score(s).values()))
            except PseudomaskError as e:
                qrows.append([s, str(e)[:60]] + [None] * 6)
                continue
            qrows.append([s, q["with_mask"], q["miou"], q["miou_small"], q["miou_medium"], q["miou_large"],
                          q["invalid_rate_small64"], q["invalid_rate_large64"]])
        parts.append("<h2>Mask quality against ground truth</h2><p class='note'>mask IoU per ground-truth "
                     "instance (0 for no mask; ignore pixels count as background); invalid = box agreement "
                     "&lt; 0.5, split at 64×64 px (hybrid networks: 76.5 % small, 23.2 % large on VOC).</p>"
                     + _table(["stage", "with mask", "mIoU", "small", "medium", "large", "invalid small64",
                               "invalid large64"], qrows) if qrows else "")
        if trows:
            parts.append("<h2>Tag-only pseudo masks against ground truth</h2><p class='note'>instances from image-level "
                         "tags have no ground-truth ids: each kept thing mask is an unmatched prediction ranked by "
                         "its cam_score; AP^r at mask IoU .25/.5/.7/.75 (VOC style), ABO (mean best overlap per true "
                         "instance) and COCO segm AP.</p>"
                         + _table(["stage", "predictions", "true instances", "AP^r .25", "AP^r .5", "AP^r .7",
                                   "AP^r .75", "ABO", "segm AP"], trows))

    # sample overlays
    ref = "merge_drop" if md else list(files)[-1]
    picked = pick_samples(files[ref], samples)
    strips = []
    for shard, image_id in picked:
        figs = []
        for s, fs in files.items():
            f = next((p for p in fs if p.stem == shard), None)
            if f is None:
                continue
            with Artifact(f) as a:
                if image_id not in a.image_ids:
                    continue
                rgb = render_by_status(a, image_id) if s == "merge_drop" else render_artifact_image(a, image_id)
            cap = f"{s} (<span style='color:rgb{STATUS_COLOURS['kept']}'>kept</span> / <span style='color:rgb" \
                  f"{STATUS_COLOURS['dropped']}'>dropped</span>)" if s == "merge_drop" else html.escape(s)
            figs.append(f"<figure><img alt='{s} {image_id}' src='{png_uri(rgb, thumb_width)}'>"
                        f"<figcaption>{cap}</figcaption></figure>")
        strips.append(f"<div class='note'>image {image_id} ({html.escape(shard)})</div><div class='strip' "
                      f"style='grid-template-columns:repeat({len(figs)},minmax(150px,1fr))'>" + "".join(figs) + "</div>")
    parts.append("<h2>Sample images, stage by stage</h2><p class='note'>masks filled, ignore (255) pixels "
                 "hatched grey, boxes labelled category:status.</p>" + ("".join(strips) or "<p class='note'>"
                                                                         "no images with instances.</p>"))

    # predicted mask quality
    parts.append(quality_section(files, gt, score if gt is not None else None, gallery=gallery))

    if evaluations:
        parts.append(evaluation_section(evaluations))
    if cost or choice:
        parts.append(annotation_section(files, cost, choice, thumb_width))

    # by category
    cats, ccount, cproxy = category_status(files[ref])
    crow = []
    for c in sorted(cats, key=lambda c: -sum(ccount.get(c["id"], Counter()).values())):
        cc = ccount.get(c["id"], Counter())
        if not cc:
            continue
        p = cproxy.get(c["id"])
        crow.append([c["name"]] + [cc.get(st, 0) for st in STATUSES] + [sum(cc.values()),
                                                                        float(np.mean(p)) if p else None])
    parts.append(f"<h2>Instances by category ({ref})</h2>"
                 + _table(["category", *STATUSES, "total", "mean proxy box IoU"], crow))

    # provenance
    prov = []
    for s, fs in files.items():
        with Artifact(fs[0]) as a:
            prov.append([s, a.method, ", ".join(f"{k}={v}" for k, v in sorted(a.params.items()))[:200], a.version,
                         a.attrs.get("created", "")])
    parts.append("<h2>Provenance</h2>" + _table(["stage", "method", "parameters", "version", "created"], prov))

    doc = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>pseudomask report</title>"
           f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    from .files import write_text_atomic

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(doc, out)


def run_stage(s: ReportSettings, *, artifacts: list[str], ground_truth: str | None, out: str,
              cost: str | None = None, choice: str | None = None, evaluations: list[str] | None = None,
              threads: int = 1) -> dict:
    """The `report` stage (see pseudomask.registry): of artifacts and folders of them, or of one results folder."""
    one = Path(artifacts[0]) if len(artifacts) == 1 else None
    where = str(one) if one is not None and (one / "ingest").is_dir() else list(artifacts)
    return {"out": str(build_report(where, out, ground_truth=ground_truth or None, samples=s.samples,
                                    thresholds=s.thresholds, cost=cost, choice=choice,
                                    evaluations=evaluations))}
