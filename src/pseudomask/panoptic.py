"""Panoptic segmentation (Kirillov et al.) of pseudo masks, in the COCO panoptic format, and its quality
(PQ, SQ, RQ; Li et al., weakly- and semi-supervised panoptic segmentation, eq. 5).

**From instances to one id map.** Every pixel of an image gets one segment id or VOID (0):

1. *things*: the foreground of kept rows of thing categories. Where they overlap, a true mask (source `gt`)
   wins, then the smallest box (`merge.merge_masks`, "smaller object better"; a merge_drop artifact's masks
   overlap only under its rule `none`);
2. *crowd*: the foreground of crowd rows (status ignored) becomes a segment with `iscrowd` 1 where no thing is;
3. *VOID*: ignore pixels (255) of any row, the foreground of rows whose mask does not train (`mask_ignore`:
   dropped, invalid, failed), and with `given_void` (evaluation) of rows given by the user (source `gt`: they
   are never scored as predictions; the export keeps them as things); VOID beats stuff, never a thing or crowd;
4. *stuff*: the foreground of kept rows of stuff categories (category `isthing` 0, or a row with `stuff` 1: the
   CAM stage's Grad-CAM regions), one segment per category and image; where two stuff classes overlap the
   smaller region wins (as the CAM stage's rule). Stuff fills only what is left.

Segment ids are 1, 2, ... per image, in row order (things, crowd, then stuff); each segment's `instance_ids`
names the rows it came from. PNGs store id = R + 256 G + 256² B (COCO panoptic).

**PQ** (`pq_image`, `pq_summary`), the standard definition (Kirillov et al., COCO's panopticapi): within one
image and category, a predicted and a ground-truth segment match when IoU > 0.5, where the IoU leaves out the
predicted pixels that are VOID in the ground truth; such a match is unique. Unmatched non-crowd ground truth
segments are false negatives. An unmatched predicted segment is a false positive unless more than half of it
lies on VOID or on a crowd region of its category, in which case it does not count. A crowd segment of the
prediction (a crowd region passed through from the input) is no prediction: neither matched nor counted. A
ground-truth segment of category `NOTHING` (0) is labelled background, not VOID: it is never a false negative,
and a prediction on it is a false positive (instance ground truth has no stuff, but its background is known
to hold no thing; COCO panoptic PNGs leave unlabelled pixels VOID). Per category
PQ = Σ_TP IoU / (|TP| + ½|FP| + ½|FN|) = SQ × RQ with SQ = Σ_TP IoU / |TP| and
RQ = |TP| / (|TP| + ½|FP| + ½|FN|);
PQ, SQ and RQ are means over the categories with any TP, FP or FN, overall and over things and stuff.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .crops import MaskStack
from .errors import PseudomaskError, read_json
from .files import write_json
from .images import ImageError, read_image, write_image
from .masks import mask_box
from .merge import merge_masks

VOID = 0
NOTHING = 0  # category of a ground-truth segment that says "no segment here" (instance ground truth's background)
MATCH_IOU = 0.5
_OFFSET = 1 << 32  # pair key = gt id * _OFFSET + pred id (ids < 256^3)
MAX_ID = 256 ** 3 - 1


class PanopticError(PseudomaskError, ValueError):
    """A panoptic file that cannot be read or does not agree with its PNGs; names the file and the record."""


# ---- files ---------------------------------------------------------------------------------------------------

def panoptic_folder(json_path: str | os.PathLike) -> Path:
    """The PNG folder of a panoptic JSON: the same path without `.json` (COCO: panoptic_val2017.json and
    panoptic_val2017/)."""
    p = Path(json_path)
    return p.with_suffix("") if p.suffix == ".json" else p.with_name(p.name + "_png")


def default_panoptic_path(out: str | os.PathLike) -> Path:
    """Where `export --panoptic` writes its panoptic JSON when no path is given: `<out>_panoptic.json`."""
    p = Path(out)
    return p.with_name(f"{p.with_suffix('').name if p.suffix == '.json' else p.name}_panoptic.json")


def png_name(file_name: str) -> str:
    """The panoptic PNG of an image file: its relative path with the suffix `.png`."""
    return str(Path(file_name).with_suffix(".png"))


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an id map: id = R + 256 G + 256² B."""
    ids = np.asarray(ids, np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """(H, W) int64 id map of an RGB panoptic PNG's pixels."""
    rgb = np.asarray(rgb, np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def read_id_map(folder: str | os.PathLike, ann: Mapping[str, Any]) -> np.ndarray:
    path = Path(folder) / ann["file_name"]
    try:
        return rgb_to_id(read_image(path))
    except ImageError as e:
        raise PanopticError(f"{e} (panoptic PNG of image {ann.get('image_id')})") from None


def is_panoptic(data: Any) -> bool:
    """True for a COCO panoptic JSON (annotations carry `segments_info`)."""
    anns = data.get("annotations") if isinstance(data, dict) else None
    return bool(anns) and isinstance(anns, list) and all(isinstance(a, dict) and "segments_info" in a for a in anns)


def write_panoptic(data: Mapping[str, Any], id_maps: Mapping[int, np.ndarray], json_path: str | os.PathLike) -> Path:
    """Write the panoptic JSON and its PNG folder (`panoptic_folder`); both replace old ones only when complete."""
    json_path = Path(json_path)
    folder = panoptic_folder(json_path)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for ann in data["annotations"]:
            write_image(tmp / ann["file_name"], id_to_rgb(id_maps[ann["image_id"]]))
        tmp.mkdir(parents=True, exist_ok=True)
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return write_json(dict(data), json_path)


# ---- instances -> panoptic -----------------------------------------------------------------------------------

def _box(fg: np.ndarray) -> list[float]:
    return mask_box(fg.astype(np.uint8)) or [0.0, 0.0, 0.0, 0.0]


def is_stuff_row(row: Mapping[str, Any], stuff_categories: Iterable[int]) -> bool:
    """A stuff region: its category is stuff (`isthing` 0) or the row says so (CAM's `stuff` column)."""
    s = row.get("stuff")
    return int(row["category_id"]) in set(stuff_categories) or (s is not None and s == s and float(s) == 1.0)


def image_panoptic(rows: Sequence[Mapping[str, Any]], masks: MaskStack | np.ndarray,
                   stuff_categories: Iterable[int] = (), given_void: bool = False) -> tuple[np.ndarray, list[dict]]:
    """(H, W) int32 id map and segments_info of one image's instance rows and masks (a `MaskStack` or (K, H, W);
    1 fg, 255 ignore), one (H, W) frame at a time besides the maps.

    Rows need id, category_id, bbox, status; optional source and stuff. See the module docstring for the rules.
    """
    if not isinstance(masks, MaskStack) and np.ndim(masks) != 3:
        raise PanopticError(f"{len(rows)} rows but masks of shape {np.shape(masks)}")
    masks = MaskStack.from_masks(masks)
    if len(masks) != len(rows):
        raise PanopticError(f"{len(rows)} rows but masks of shape {masks.shape}")
    h, w = masks.shape[1:]
    stuff_cats = set(int(c) for c in stuff_categories)
    ids = np.zeros((h, w), np.int32)
    segments: list[dict] = []
    stuff = np.array([is_stuff_row(r, stuff_cats) for r in rows], bool)
    given = np.array([given_void and str(r.get("source") or "") == "gt" for r in rows], bool)
    status = np.array([str(r["status"]) for r in rows], object)
    thing = (status == "kept") & ~stuff & ~given
    taken = np.zeros((h, w), bool)

    def add(fg: np.ndarray, cat: int, crowd: int, inst: list[int]) -> None:
        fg = fg & ~taken
        if not fg.any():
            return
        if len(segments) >= MAX_ID:
            raise PanopticError(f"more than {MAX_ID} segments in one image")
        sid = len(segments) + 1
        ids[fg] = sid
        taken[fg] = True
        segments.append({"id": sid, "category_id": int(cat), "iscrowd": crowd, "area": int(fg.sum()),
                         "bbox": _box(fg), "instance_ids": inst})

    if thing.any():
        boxes = np.array([r["bbox"] for r in rows], np.float64).reshape(-1, 4)
        boxes[[str(r.get("source") or "") == "gt" for r in rows], 2:] = 0  # a true mask wins, as in merge_drop
        merged, _ = merge_masks(masks.equal(1), boxes, thing)
        for k in np.flatnonzero(thing):
            add(merged[k] == 1, rows[k]["category_id"], 0, [int(rows[k]["id"])])
    for k in np.flatnonzero((status == "ignored") & ~stuff & ~given):
        add(masks[k] == 1, rows[k]["category_id"], 1, [int(rows[k]["id"])])
    void = masks.any_equal(255)
    for k in np.flatnonzero(((status != "kept") & (status != "ignored")) | given):
        void |= masks[k] == 1
    void &= ~taken
    taken |= void
    by_cat: dict[int, tuple[np.ndarray, list[int]]] = {}
    for k in np.flatnonzero((status == "kept") & stuff & ~given):
        c = int(rows[k]["category_id"])
        fg, inst = by_cat.setdefault(c, (np.zeros((h, w), bool), []))
        fg |= masks[k] == 1
        inst.append(int(rows[k]["id"]))
    regions = {c: v for c, v in by_cat.items() if v[0].any()}
    for c in sorted(regions, key=lambda c: (int(regions[c][0].sum()), c)):  # the smaller stuff region wins
        add(regions[c][0], c, 0, regions[c][1])
    return ids, segments


def segment_map(masks: Sequence[np.ndarray] | MaskStack, boxes: Sequence[Sequence[float]], shape: tuple[int, int]) -> np.ndarray:
    """Id map of true segments given as masks (segment k+1 = masks[k]). True instance masks overlap (COCO's
    often do: a tie inside its person); there the smaller box takes the pixels, as for pseudo masks, so that a
    contained object keeps its segment."""
    ids = np.zeros(shape, np.int32)
    if not len(masks):
        return ids
    stack = MaskStack.zeros(len(masks), *shape)
    for k, m in enumerate(masks):
        stack[k] = (np.asarray(m, np.uint8) == 1).astype(np.uint8)
    merged, _ = merge_masks(stack, np.asarray(boxes, np.float64).reshape(-1, 4))
    for k in range(len(merged)):
        ids[merged[k] == 1] = k + 1
    return ids


# ---- PQ -----------------------------------------------------------------------------------------------------

def _areas(ids: np.ndarray) -> dict[int, int]:
    u, n = np.unique(ids, return_counts=True)
    return {int(a): int(b) for a, b in zip(u, n)}


def pq_image(gt_ids: np.ndarray, gt_segments: Sequence[Mapping], pred_ids: np.ndarray,
             pred_segments: Sequence[Mapping]) -> dict[int, dict[str, float]]:
    """Per category {tp, fp, fn, iou} (iou = sum over TP) of one image; see the module docstring.

    Segment areas are counted in the id maps; a segment of the JSON with no pixel is left out (a predicted one
    cannot match, a ground-truth one cannot be found: both as panopticapi, which requires them to have pixels).
    """
    gt_ids = np.asarray(gt_ids, np.int64)
    pred_ids = np.asarray(pred_ids, np.int64)
    if gt_ids.shape != pred_ids.shape:
        raise PanopticError(f"ground truth is {gt_ids.shape[1]}x{gt_ids.shape[0]} but the prediction is "
                            f"{pred_ids.shape[1]}x{pred_ids.shape[0]}")
    ga, pa = _areas(gt_ids), _areas(pred_ids)
    gt = {int(s["id"]): s for s in gt_segments if int(s["id"]) in ga and int(s["id"]) != VOID}
    pred = {int(s["id"]): s for s in pred_segments
            if int(s["id"]) in pa and int(s["id"]) != VOID and not s.get("iscrowd", 0)}
    inter: dict[tuple[int, int], int] = {}
    for key, n in _areas(gt_ids * _OFFSET + pred_ids).items():
        inter[(key // _OFFSET, key % _OFFSET)] = n
    stats: dict[int, dict[str, float]] = {}

    def st(cat: int) -> dict[str, float]:
        return stats.setdefault(int(cat), {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})

    matched_gt, matched_pred = set(), set()
    for (g, p), n in inter.items():
        if g not in gt or p not in pred or gt[g].get("iscrowd", 0):
            continue
        if int(gt[g]["category_id"]) != int(pred[p]["category_id"]):
            continue
        union = pa[p] + ga[g] - n - inter.get((VOID, p), 0)
        iou = n / union if union else 0.0
        if iou > MATCH_IOU:
            s = st(gt[g]["category_id"])
            s["tp"] += 1
            s["iou"] += iou
            matched_gt.add(g)
            matched_pred.add(p)
    crowd: dict[int, set[int]] = {}
    for g, s in gt.items():
        if int(s["category_id"]) == NOTHING:
            continue
        if s.get("iscrowd", 0):
            crowd.setdefault(int(s["category_id"]), set()).add(g)
        elif g not in matched_gt:
            st(s["category_id"])["fn"] += 1
    for p, s in pred.items():
        if p in matched_pred:
            continue
        cat = int(s["category_id"])
        cover = inter.get((VOID, p), 0) + sum(inter.get((g, p), 0) for g in crowd.get(cat, ()))
        if cover / pa[p] > MATCH_IOU:
            continue
        st(cat)["fp"] += 1
    return stats


def add_stats(total: dict[int, dict[str, float]], image: Mapping[int, Mapping[str, float]]) -> None:
    """Accumulate one image's per-category statistics into `total`."""
    for c, s in image.items():
        t = total.setdefault(int(c), {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})
        for k in t:
            t[k] += s[k]


def pq_summary(stats: Mapping[int, Mapping[str, float]], isthing: Mapping[int, int]) -> dict[str, Any]:
    """pq, sq, rq overall and for things / stuff (`_things`, `_stuff`), with the category counts behind them
    (`pq_categories...`) and the TP/FP/FN totals; None where no category counts. `isthing`: category -> 0/1
    (a category missing from it counts as a thing)."""
    per: dict[int, tuple[float, float, float]] = {}
    for c, s in stats.items():
        tp, fp, fn = s["tp"], s["fp"], s["fn"]
        if tp + fp + fn == 0:
            continue
        denom = tp + 0.5 * fp + 0.5 * fn
        per[c] = (s["iou"] / denom, s["iou"] / tp if tp else 0.0, tp / denom)
    out: dict[str, Any] = {}
    for suffix, keep in (("", lambda c: True), ("_things", lambda c: isthing.get(c, 1) == 1),
                         ("_stuff", lambda c: isthing.get(c, 1) == 0)):
        vals = [v for c, v in per.items() if keep(c)]
        for i, name in enumerate(("pq", "sq", "rq")):
            out[name + suffix] = float(np.mean([v[i] for v in vals])) if vals else None
        out["pq_categories" + suffix] = len(vals)
    for k in ("tp", "fp", "fn"):
        out[f"pq_{k}"] = int(sum(s[k] for s in stats.values()))
    return out


# ---- sources of panoptic images, and PQ over a dataset --------------------------------------------------------

class PanopticFile:
    """A COCO panoptic JSON and its PNG folder (`panoptic_folder`), read image by image.

    The interface of every panoptic source: `image_ids`, `isthing` (category -> 0/1), `size(image_id)` ->
    (H, W) and `image(image_id)` -> (id map, segments_info), or None for an image it does not have.
    """

    def __init__(self, json_path: str | os.PathLike, data: Mapping[str, Any] | None = None):
        self.path = Path(json_path)
        data = data if data is not None else read_json(self.path, PanopticError, "panoptic JSON")
        if not is_panoptic(data):
            raise PanopticError(f"{self.path}: not a COCO panoptic JSON (annotations without segments_info)")
        self.folder = panoptic_folder(self.path)
        if not self.folder.is_dir():
            raise PanopticError(f"{self.path}: its PNG folder {self.folder} does not exist")
        self.images = {int(im["id"]): im for im in data.get("images", [])}
        self.anns = {int(a["image_id"]): a for a in data["annotations"]}
        self.isthing = {int(c["id"]): int(c.get("isthing", 1)) for c in data.get("categories", [])}
        self.image_ids = sorted(self.anns)
        for image_id, a in self.anns.items():
            for s in a["segments_info"]:
                if int(s["category_id"]) not in self.isthing:
                    raise PanopticError(f"{self.path}: image {image_id}: segment {s.get('id')} has category "
                                        f"{s['category_id']}, not in its categories")

    def size(self, image_id: int) -> tuple[int, int]:
        im = self.images.get(int(image_id))
        if im is None:
            return self.image(image_id)[0].shape
        return int(im["height"]), int(im["width"])

    def image(self, image_id: int) -> tuple[np.ndarray, list[dict]] | None:
        a = self.anns.get(int(image_id))
        if a is None:
            return None
        ids = read_id_map(self.folder, a)
        known = {int(s["id"]) for s in a["segments_info"]} | {VOID}
        stray = set(np.unique(ids).tolist()) - known
        if stray:
            raise PanopticError(f"{self.folder / a['file_name']}: image {image_id} has segment id(s) "
                                f"{sorted(stray)[:5]} that its segments_info in {self.path} does not list")
        return ids, list(a["segments_info"])


def panoptic_quality(pred: Any, gt: Any, image_ids: Iterable[int] | None = None) -> dict[str, Any]:
    """PQ, SQ, RQ (overall, things, stuff; see `pq_summary`) of a panoptic source against another, over the
    ground truth's images (or `image_ids`); an image the prediction lacks counts as all VOID (its ground truth
    segments are false negatives). Stuff or thing is the ground truth's category `isthing`.

    Ground truth that says which categories it annotates (`gt.annotated`, instance masks) cannot judge the
    prediction's stuff segments of other categories: those are left out (as if VOID), not false positives."""
    total: dict[int, dict[str, float]] = {}
    ids = sorted(gt.image_ids if image_ids is None else image_ids)
    annotated = getattr(gt, "annotated", None)
    unscored = set() if annotated is None else {
        c for c, t in getattr(pred, "isthing", {}).items() if not t and c not in annotated}
    for image_id in ids:
        g = gt.image(image_id)
        if g is None:
            continue
        p = pred.image(image_id)
        if p is None:
            p = (np.zeros(g[0].shape, np.int32), [])
        for s in p[1]:
            if int(s["category_id"]) not in gt.isthing:
                raise PanopticError(f"image {image_id}: predicted segment {s['id']} has category "
                                    f"{s['category_id']}, not a category of the ground truth")
        try:
            add_stats(total, pq_image(g[0], g[1], p[0], [s for s in p[1] if int(s["category_id"]) not in unscored]))
        except PanopticError as e:
            raise PanopticError(f"image {image_id}: {e}") from None
    return {**pq_summary(total, gt.isthing), "pq_images": len(ids), "pq_unscored_categories": len(unscored)}
