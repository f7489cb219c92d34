"""The report's HTML: one function per page section, each returning its HTML, and the page around them."""

from __future__ import annotations

import html
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .. import __version__
from ..errors import PseudomaskError, read_json
from ..mask_metrics import summarize
from ..merge import RULES
from ..merge_drop import MergeDropSettings, drop_curve
from ..quality.ranking import spearman
from ..store import STATUSES, Artifact
from ..visualize import STATUS_COLOURS, render_artifact_image
from .data import (category_status, evaluation_kind, keep_rate_curves, lowest_quality, pick_samples, proxy_ious,
                   stage_quality, stage_tallies, tag_only, tag_only_metrics)
from .figures import (plot_calibration, plot_curve, plot_histogram, plot_keep_rate, plot_quality_histograms,
                      png_uri, quality_crop, render_by_status)

Files = dict[str, list[Path]]
Score = Callable[[str], dict[int, dict]]  # a stage's gt_scores rows (data.StageScores)

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


def page(parts: Sequence[str]) -> str:
    """The whole HTML document around the sections."""
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>pseudomask report</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")


def title(where: Path, ground_truth: str | os.PathLike | None) -> str:
    """The heading: which folder, when, which version, and whether ground truth is given."""
    gt_note = (f"ground truth: {html.escape(str(ground_truth))}" if ground_truth else
               "no ground truth configured: mask quality (mIoU) is not shown, only drop rates.")
    return (f"<h1>pseudomask report</h1><div class='meta'>{html.escape(str(where.resolve()))} · "
            f"{time.strftime('%Y-%m-%d %H:%M')} · pseudomask {__version__} · {gt_note}</div>")


def status_section(files: Files, reasons: int) -> str:
    """Instances by status per stage, and the `reasons` most frequent reasons per stage."""
    tallies = {s: stage_tallies(fs) for s, fs in files.items()}
    counts = {s: t[0] for s, t in tallies.items()}
    rows = [[s, len(fs)] + [counts[s].get(st, 0) for st in STATUSES] + [sum(counts[s].values())]
            for s, fs in files.items()]
    out = "<h2>Instances by status and stage</h2>" + _table(["stage", "shards", *STATUSES, "total"], rows)
    why = []
    for s in files:
        for (st, reason), n in tallies[s][1].most_common(reasons):
            why.append([s, st, n, f"{n / max(sum(counts[s].values()), 1):.1%}", reason])
    if why:
        out += (f"<h2>Why: the most frequent reasons per stage</h2><p class='note'>up to {reasons} per stage, "
                "numbers in a reason shown as #; the rows of each instance keep the full reason.</p>"
                + _table(["stage", "status", "instances", "share", "reason"], why))
    return out


def drop_section(md: Sequence[Path] | None, score: Score | None, thresholds: Sequence[float]) -> str:
    """The merge_drop threshold curve (with ground truth, the mIoU of kept and of all masks) and the
    histogram of proxy box IoU."""
    if not md:
        return "<h2>Merge and drop</h2><p class='note'>no merge_drop artifacts in this folder.</p>"
    out = ""
    with Artifact(md[0], stage="merge_drop") as a:
        threshold, params = a.params.get("threshold"), dict(a.params)
        src = f"{a.params.get('source_stage')} ({a.params.get('source_method')})"
    ids, proxy = proxy_ious(md)
    gt_iou = None
    if score is not None:
        try:
            scores = score("merge_drop")
            gt_iou = [scores[int(i)]["iou"] if int(i) in scores else 0.0 for i in ids]
        except PseudomaskError as e:
            out += f"<p class='note'>mIoU not computed: {html.escape(str(e))}</p>"
    curve = drop_curve(proxy, thresholds, gt_iou)
    header = ["threshold", "drop rate", "kept", "dropped"]
    if gt_iou is not None:
        header += ["mIoU kept", "mIoU all"]
    crow = [[f"{r['threshold']:.2f}", r["drop_rate"], r["kept"], r["dropped"]]
            + ([r["miou_kept"], r["miou_all"]] if gt_iou is not None else []) for r in curve]
    return out + (
        f"<h2>Merge and drop: threshold curve</h2><p class='note'>masks from {html.escape(src)}; "
        f"{html.escape(merge_drop_in_use(params))}. The curve: proxy box IoU thresholds over "
        f"{len(proxy)} judged instances; drop rate = dropped / judged (BoxCaseg Table 8 on COCO: 0.00, 0.27, "
        f"0.49, 0.64, 0.80).</p><div class='row'><div>{_table(header, crow)}</div>"
        f"<img alt='drop curve' src='{plot_curve(curve)}'>"
        f"<img alt='proxy box IoU histogram' src='{plot_histogram(proxy, threshold)}'></div>")


def merge_drop_in_use(params: dict) -> str:
    """The merge rule and drop criterion a merge_drop artifact was made with, in words."""
    crit, t, qt = params.get("criterion", "proxy_box_iou"), params.get("threshold"), params.get("quality_threshold")
    drops = {"proxy_box_iou": f"proxy box IoU below {t}", "quality": f"predicted quality below {qt}",
             "both": f"proxy box IoU below {t} or predicted quality below {qt}"}[crit]
    rule = params.get("rule", "smaller_box")
    default = MergeDropSettings()
    chosen = ("the defaults, chosen by measurement: docs/stages/merge_drop.md" if (rule, crit) ==
              (default.rule, default.criterion) else "set in the config of this run; the defaults are " +
              f"{default.rule} and {default.criterion} (docs/stages/merge_drop.md says why)")
    return f"merge rule {rule} ({RULES[rule]}); drop criterion {crit} (dropped: {drops}); {chosen}"


def mask_quality_section(files: Files, gt, score: Score) -> str:
    """Mask quality per stage against ground truth: mIoU by size and invalid rates, or for tag-only masks
    AP^r, ABO and COCO AP."""
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
    out = ("<h2>Mask quality against ground truth</h2><p class='note'>mask IoU per ground-truth "
           "instance (0 for no mask; ignore pixels count as background); invalid = box agreement "
           "&lt; 0.5, split at 64×64 px (hybrid networks: 76.5 % small, 23.2 % large on VOC).</p>"
           + _table(["stage", "with mask", "mIoU", "small", "medium", "large", "invalid small64",
                     "invalid large64"], qrows) if qrows else "")
    if trows:
        out += ("<h2>Tag-only pseudo masks against ground truth</h2><p class='note'>instances from image-level "
                "tags have no ground-truth ids: each kept thing mask is an unmatched prediction ranked by "
                "its cam_score; AP^r at mask IoU .25/.5/.7/.75 (VOC style), ABO (mean best overlap per true "
                "instance) and COCO segm AP.</p>"
                + _table(["stage", "predictions", "true instances", "AP^r .25", "AP^r .5", "AP^r .7",
                          "AP^r .75", "ABO", "segm AP"], trows))
    return out


def samples_section(files: Files, ref: str, samples: int, thumb_width: int) -> str:
    """Up to `samples` images of stage `ref`, each shown as every stage drew it, side by side."""
    strips = []
    for shard, image_id in pick_samples(files[ref], samples):
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
    return ("<h2>Sample images, stage by stage</h2><p class='note'>masks filled, ignore (255) pixels "
            "hatched grey, boxes labelled category:status.</p>" + ("".join(strips) or "<p class='note'>"
                                                                    "no images with instances.</p>"))


def quality_section(files: Files, gt=None, score: Score | None = None, gallery: int = 8,
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
    with_gt = gt is not None and score is not None
    if with_gt:
        parts.append(calibration(quals, score))
    parts.append(lowest_quality_gallery(files, quals, score if with_gt else None, gallery, thumb_width))
    if with_gt and "merge_drop" in quals:
        parts.append(keep_rate_section(quals["merge_drop"], score))
    return "".join(parts)


def calibration(quals: dict[str, dict[str, np.ndarray]], score: Score) -> str:
    """Per stage the Spearman of predicted vs true mask IoU (table) and the calibration plot."""
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
    out = ("<h3>Calibration against ground truth</h3><p class='note'>Spearman rank correlation of "
           "predicted vs true mask IoU over the instances with a prediction; the dashed diagonal "
           "is perfect calibration.</p>"
           + _table(["stage", "instances", "Spearman", "mean predicted", "mean true", "note"], srows))
    if pairs:
        out += f"<div class='row'><img alt='calibration' src='{plot_calibration(pairs)}'></div>"
    return out


def lowest_quality_gallery(files: Files, quals: dict[str, dict[str, np.ndarray]], score: Score | None,
                           gallery: int, thumb_width: int) -> str:
    """Crops of the `gallery` kept masks of the final mask stage with the lowest predicted quality (with
    ground truth, their true IoU too)."""
    final = "merge_drop" if "merge_drop" in quals else list(quals)[-1]
    low = lowest_quality(quals[final], gallery)
    figs = []
    by_shard = {f.stem: f for f in files[final]}
    truth = None
    if score is not None:
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
    return (f"<h3>Lowest predicted quality: review first ({html.escape(final)})</h3>"
            + (f"<p class='note'>the {len(low)} kept masks with the lowest predicted quality, ascending; "
               "crop around the box, mask filled.</p><div class='strip' style='grid-template-columns:"
               f"repeat({len(figs)},minmax(80px,{thumb_width}px))'>" + "".join(figs) + "</div>"
               if figs else "<p class='note'>no kept masks with a predicted quality.</p>"))


def keep_rate_section(q: dict[str, np.ndarray], score: Score) -> str:
    """The mIoU of the merge_drop masks kept by proxy box IoU or by predicted quality, at equal keep rates."""
    sel = np.isin(q["status"], ("kept", "dropped")) & np.isfinite(q["proxy_box_iou"])
    try:
        rows = score("merge_drop")
    except PseudomaskError as e:
        return f"<p class='note'>keep-rate curves not computed: {html.escape(str(e))}</p>"
    if not sel.sum():
        return ""
    true = np.array([rows[int(i)]["iou"] if int(i) in rows else 0.0 for i in q["id"][sel]])
    curve = keep_rate_curves({"proxy_box_iou": q["proxy_box_iou"][sel], "quality": q["quality"][sel]}, true)
    return ("<h3>Drop by proxy box IoU or by quality, at equal keep rates</h3><p class='note'>"
            f"over the {int(sel.sum())} judged merge_drop instances with both scores: keep the "
            "given fraction with the highest score, mIoU of those kept against ground truth.</p>"
            "<div class='row'><div>"
            + _table(["fraction kept", "kept", "mIoU by proxy box IoU", "mIoU by quality"],
                     [[f"{r['fraction']:.1f}", r["kept"], r["proxy_box_iou"], r["quality"]] for r in curve])
            + f"</div><img alt='keep-rate curves' src='{plot_keep_rate(curve)}'></div>")


def evaluation_section(paths: Sequence[str | os.PathLike]) -> str:
    """The evaluate stages' figures side by side, per round: the pseudo masks (mIoU, or AP^r for tag-only
    masks; PQ) and the retrained model (COCO AP, AP^r, ABO)."""
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
            models.append([rnd, name, m.get("ground_truth"), m.get("segm_AP"), m.get("segm_AP50"), m.get("bbox_AP"),
                           m.get("apr_50"), m.get("apr_75"), m.get("abo"), m.get("segm_APs")])
    parts = ["<h2>Evaluation by round</h2><p class='note'>the evaluate stages' JSON files: round 1 is "
             "results/evaluate, round k results/round&lt;k&gt;/evaluate (retrain.rounds), hybrid the hybrid "
             "recipe's fused predictions.</p>"]
    if masks:
        parts.append("<h3>Pseudo masks</h3>" + _table(["round", "file", "mode", "mIoU", "AP^r .5", "ABO", "PQ",
                                                       "true masks given"], masks))
    if models:
        parts.append("<h3>Retrained model</h3><p class='note'>scored against the true masks of the images in "
                     "'evaluated on': workflow.test_annotations (held-out images) when set, else the training "
                     "images themselves, which flatter the model.</p>"
                     + _table(["round", "file", "evaluated on", "segm AP", "segm AP50", "bbox AP", "AP^r .5",
                               "AP^r .75", "ABO", "segm AP small"], models))
    return "".join(parts)


def annotation_section(files: Files, cost: str | os.PathLike | None, choice: str | os.PathLike | None,
                       thumb_width: int = 320, show: int = 8) -> str:
    """What the labels cost (annotation-cost's JSON) and which images a person should annotate next
    (choose-images' JSON): budget, scores and the chosen images with their pseudo masks."""
    return ("<h2>Annotation: cost and the images to annotate next</h2>" + (cost_table(cost) if cost else "")
            + (chosen_images(files, choice, thumb_width, show) if choice else ""))


def cost_table(cost: str | os.PathLike) -> str:
    """The annotation cost of each kind of label on this dataset, in seconds and annotator-days."""
    c = read_json(cost, PseudomaskError, "annotation cost")
    sec, days = c.get("seconds", {}), c.get("days", {})
    labels = [("tags", "tags (every class verified per image)"), ("tags_counts", "tags + counts"),
              ("boxes", "boxes"), ("masks_strong", "masks of the strong images"),
              ("run", "this run's labels"), ("full_masks", "masks for the whole dataset")]
    rows = [[what, sec.get(k), days.get(k)] for k, what in labels if k in sec]
    share = c.get("run_vs_full_masks")
    return ("<p class='note'>Bearman et al.'s per-label times (1 s per class verified, 1.48 s per present "
            "class counted, 7 s per box, 79 s per mask) on this dataset's counts"
            + (f"; this run's labels cost {share:.1%} of full mask annotation" if share is not None else "")
            + ".</p>" + _table(["labels", "seconds", "annotator-days"], rows))


def chosen_images(files: Files, choice: str | os.PathLike, thumb_width: int, show: int) -> str:
    """The images chosen for annotation: how and within what budget, their scores, and the first `show`
    of them with their pseudo masks."""
    ch = read_json(choice, PseudomaskError, "annotation choice")
    chosen = ch.get("chosen", [])
    how = ch.get("strategy", "")
    if how == "beta":
        how += f" (closest to {ch.get('beta')})"
    out = (f"<p class='note'>{len(chosen)} of {ch.get('candidates', '?')} eligible images chosen by "
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
        out += (f"<div class='strip' style='grid-template-columns:repeat({min(len(figs), 4)},"
                f"minmax(150px,1fr))'>" + "".join(figs) + "</div>")
    return out


def category_section(files: Sequence[Path], ref: str) -> str:
    """Instances by category and status in stage `ref`'s artifacts, most frequent category first."""
    cats, ccount, cproxy = category_status(files)
    crow = []
    for c in sorted(cats, key=lambda c: -sum(ccount.get(c["id"], Counter()).values())):
        cc = ccount.get(c["id"], Counter())
        if not cc:
            continue
        p = cproxy.get(c["id"])
        crow.append([c["name"]] + [cc.get(st, 0) for st in STATUSES] + [sum(cc.values()),
                                                                        float(np.mean(p)) if p else None])
    return (f"<h2>Instances by category ({ref})</h2>"
            + _table(["category", *STATUSES, "total", "mean proxy box IoU"], crow))


def provenance_section(files: Files) -> str:
    """Per stage the method, parameters, version and creation time recorded in its first artifact."""
    prov = []
    for s, fs in files.items():
        with Artifact(fs[0]) as a:
            prov.append([s, a.method, ", ".join(f"{k}={v}" for k, v in sorted(a.params.items()))[:200], a.version,
                         a.attrs.get("created", "")])
    return "<h2>Provenance</h2>" + _table(["stage", "method", "parameters", "version", "created"], prov)
