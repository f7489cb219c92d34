"""Extraction: for each image, the class response maps of its tagged classes, their peaks, and for each peak a
proposal mask containing it (WISE); for stuff classes one Grad-CAM region each (Li et al.).

Output: a "cam" artifact with one instance per peak (id = image_id * 1000 + k, unique across shards), category
from the CAM, bbox = the chosen proposal's box, mask = the proposal, status kept, and the columns peak_y, peak_x
(image pixels), cam_score (response at the peak), class_score (sigmoid of the peak-mean class score),
proposal_id, objectness, stuff (0/1). Every tag is accounted for: a tag that yields no mask (unreadable image,
no proposal containing the peak, class unknown to the checkpoint, empty stuff region) gets a "failed" row with
the reason. When two peaks of a class pick the same proposal the weaker one is "ignored" (a duplicate).
The low-resolution maps of the tagged classes are stored as map "cam" (/cam/<image_id>/<category_id>).

The backbone runs on `batch_size` images at a time, read ahead by `loader_workers` threads; the class maps,
peaks and proposals are then computed per image, so results do not depend on the batch size.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..dataset import Dataset, load_dataset
from ..images import ImageError, read_annotated_image
from ..crops import Crop, MaskStack
from ..masks import mask_box
from ..proposals import Proposals, read_proposals
from ..loops import progress, quality_attrs, read_ahead
from ..store import Artifact, ArtifactWriter
from ..devices import autocast, pick_device
from .model import CamError, load_classifier, prepare
from .peaks import find_peaks, peak_stimulation
from .sampling import MODES, ProposalPicker
from .settings import CamSettings
from .stuff import grad_cam, stuff_regions

ID_STRIDE = 1000  # instance id = image_id * ID_STRIDE + k


def stuff_ids(ds: Dataset, names: Sequence[str]) -> set[int]:
    """Category ids of the stuff class names; an unknown name is an error naming it."""
    by_name = {c["name"]: int(c["id"]) for c in ds.categories}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise CamError(f"{ds.source}: stuff classes {unknown} are not categories of the dataset "
                       f"(categories: {sorted(by_name)})")
    return {by_name[n] for n in names}


def refine_peak(up: np.ndarray, i: int, j: int, h: int, w: int) -> tuple[int, int]:
    """Image pixel of a peak at cell (i, j) of an h x w map: the maximum of the upsampled map in that cell."""
    H, W = up.shape
    y0, y1 = (i * H) // h, max(((i + 1) * H + h - 1) // h, (i * H) // h + 1)
    x0, x1 = (j * W) // w, max(((j + 1) * W + w - 1) // w, (j * W) // w + 1)
    cell = up[y0:y1, x0:x1]
    dy, dx = np.unravel_index(int(np.argmax(cell)), cell.shape)
    return y0 + int(dy), x0 + int(dx)


def image_features(model, rgbs: Sequence[np.ndarray], input_size: int, device: torch.device,
                   amp: bool = False) -> torch.Tensor:
    """(N, K, h, w) float32 backbone features of several images in one forward pass (each squashed to
    input_size; in mixed precision on CUDA with `amp`: the class maps and their gradients stay float32)."""
    x = torch.from_numpy(np.stack([prepare(rgb, input_size) for rgb in rgbs])).to(device)
    with torch.no_grad(), autocast(device, amp):
        return model.features(x).float()


def image_maps(model, rgb: np.ndarray, input_size: int, device: torch.device, win: int,
               feats: torch.Tensor | None = None):
    """(features requiring grad, cams (C, h, w), class scores (C,)) of one image; `feats` (1, K, h, w): its
    features when already computed with other images' (`image_features`)."""
    if feats is None:
        feats = image_features(model, [rgb], input_size, device)
    feats = feats.detach().requires_grad_(True)
    with torch.enable_grad():
        cams = model.head(feats)
        scores, _ = peak_stimulation(cams, win)
    return feats, cams, scores[0]


def _failed(iid: int, cat: int, reason: str, box=(0.0, 0.0, 0.0, 0.0)) -> dict:
    return {"id": iid, "category_id": cat, "bbox": [float(v) for v in box], "status": "failed", "reason": reason,
            "peak_y": None, "peak_x": None, "cam_score": None, "class_score": None, "proposal_id": -1,
            "objectness": None, "stuff": None}


def extract_image(model, config: dict, im: dict, rgb: np.ndarray, proposals: Proposals | None, stuff: set[int],
                  s: CamSettings, device: torch.device, feats: torch.Tensor | None = None
                  ) -> tuple[list[dict], MaskStack, dict[str, np.ndarray]]:
    """Rows, their masks (as crops) and low-res CAMs of one image's tags (`feats`: its backbone features, when
    computed in a batch)."""
    H, W = rgb.shape[:2]
    col = {c: k for k, c in enumerate(config["class_ids"])}
    win = int(s.window or config["window"])
    tags = [int(t) for t in im.get("tags", [])]
    base = int(im["id"]) * ID_STRIDE
    rows: list[dict] = []
    masks: list[Crop] = []

    def add(row: dict, mask: np.ndarray | None) -> None:
        if len(rows) >= ID_STRIDE:
            raise CamError(f"image {im['id']} ({im['file_name']}): more than {ID_STRIDE} instances; lower max_peaks")
        row["id"] = base + len(rows)
        rows.append(row)
        masks.append(Crop(0, 0, np.zeros((0, 0), np.uint8)) if mask is None else Crop.of(mask.astype(np.uint8)))

    known = [t for t in tags if t in col]
    for t in tags:
        if t not in col:
            add(_failed(0, t, f"category {t} is not a class of the CAM checkpoint"), None)
    if not known:
        return rows, MaskStack(masks, H, W), {}
    feats, cams, scores = image_maps(model, rgb, config["input_size"], device, win, feats)
    h, w = cams.shape[-2:]
    cams_np = cams.detach()[0].cpu().numpy()
    up = F.interpolate(cams.detach()[:, [col[t] for t in known]], size=(H, W), mode="bilinear",
                       align_corners=False)[0].cpu().numpy()
    class_score = torch.sigmoid(scores.detach()).cpu().numpy()
    rng = np.random.default_rng([s.seed, int(im["id"])])
    picker = ProposalPicker(proposals) if proposals is not None else None
    things = [t for t in known if t not in stuff]
    for t in things:
        k = col[t]
        if picker is None:
            add(_failed(0, t, "no proposals for this image"), None)
            continue
        chosen: dict[int, int] = {}
        for i, j, v in find_peaks(cams_np[k], win, s.peak_threshold, s.max_peaks):
            y, x = refine_peak(up[known.index(t)], int(i), int(j), h, w)
            common = {"peak_y": float(y), "peak_x": float(x), "cam_score": float(v),
                      "class_score": float(class_score[k]), "stuff": 0.0}
            p = picker.pick(y, x, rng, s.select)
            if p < 0:
                add({**_failed(0, t, f"no proposal contains the peak at (y={y}, x={x})", (x, y, 1, 1)), **common},
                    None)
                continue
            m = picker.mask(p)
            row = {"category_id": t, "bbox": mask_box(m), "status": "kept", "reason": "", **common,
                   "proposal_id": float(p), "objectness": float(proposals.scores[p])}
            if s.dedupe and p in chosen:
                row.update(status="ignored", reason=f"duplicate: same proposal as instance {chosen[p]}")
            add(row, m)
            chosen.setdefault(p, row["id"])
    stuffs = [t for t in known if t in stuff]
    if stuffs:
        heat = []
        for t in stuffs:
            g = grad_cam(feats, scores[col[t]])[None, None]
            heat.append(F.interpolate(g, size=(H, W), mode="bilinear", align_corners=False)[0, 0].cpu().numpy())
        regions = stuff_regions(np.stack(heat), s.stuff_threshold)
        for t, hm, reg in zip(stuffs, heat, regions):
            y, x = np.unravel_index(int(np.argmax(hm)), hm.shape)
            common = {"peak_y": float(y), "peak_x": float(x), "cam_score": float(scores[col[t]].detach()),
                      "class_score": float(class_score[col[t]]), "stuff": 1.0, "proposal_id": -1.0,
                      "objectness": None}
            box = mask_box(reg.astype(np.uint8))
            if box is None:
                add({**_failed(0, t, "Grad-CAM region is empty (no positive response)"), **common}, None)
            else:
                add({"category_id": t, "bbox": box, "status": "kept", "reason": "", **common}, reg)
    maps = {str(t): cams_np[col[t]].astype(np.float16) for t in known}
    return rows, MaskStack(masks, H, W), maps


def extract_peaks(ds: Dataset, checkpoint: str | os.PathLike, out: str | os.PathLike,
                  proposals: str | os.PathLike | None = None, settings: CamSettings | None = None,
                  inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Write the "cam" artifact of a dataset (shard) to `out`; see the module docstring for its contents."""
    s = settings or CamSettings()
    if s.select not in MODES:
        raise CamError(f"proposal selection must be one of {MODES}, got {s.select!r}")
    device = pick_device(s.device)
    model, config = load_classifier(checkpoint, device)
    stuff = stuff_ids(ds, s.stuff_classes)
    props_art = Artifact(proposals) if proposals else None
    if props_art is None and any(t not in stuff for im in ds.images for t in im.get("tags", [])):
        try:
            from ..mcg import proposals_for_image  # here: MCG (numba) is needed only without a proposal file
        except ImportError as e:
            raise CamError(f"no proposal file given and pseudomask.mcg is unavailable ({e})") from None
    else:
        proposals_for_image = None
    params: dict[str, Any] = {**s.to_dict(), "checkpoint": str(checkpoint), "proposals": str(proposals or ""),
                              "classifier": config}
    try:
        with ArtifactWriter(out, stage="cam", method=f"wise-peaks-{s.select}", params=params,
                            inputs=[checkpoint, *([proposals] if proposals else []), *inputs],
                            categories=ds.categories,
                            attrs={"image_root": str(Path(ds.image_root).resolve()), "quality_source": "cam",
                                   **quality_attrs(None)}) as w:
            known = set(config["class_ids"])

            def load(im: dict) -> tuple[dict, list[int], np.ndarray | ImageError | None]:
                tags = [int(t) for t in im.get("tags", [])]
                if not tags:
                    return im, tags, None
                try:
                    return im, tags, read_annotated_image(ds.image_path(im), im)
                except ImageError as e:
                    return im, tags, e

            def results():
                # s.batch_size images at a time: the backbone runs once on those whose features are needed
                items = read_ahead(load, ds.images, s.loader_workers, ahead=2 * s.batch_size)
                for group in iter(lambda: list(itertools.islice(items, s.batch_size)), []):
                    need = [k for k, (im, tags, rgb) in enumerate(group) if isinstance(rgb, np.ndarray)
                            and rgb.shape[:2] == (int(im["height"]), int(im["width"])) and known & set(tags)]
                    feats = image_features(model, [group[k][2] for k in need], config["input_size"],
                                           device, s.amp) if need else None
                    by_k = {k: feats[n:n + 1] for n, k in enumerate(need)}
                    for k, (im, tags, rgb) in enumerate(group):
                        if not tags:
                            yield im, tags, ([], MaskStack([], int(im["height"]), int(im["width"])), {})
                            continue
                        yield im, tags, _one_image(model, config, ds, im, tags, props_art, proposals_for_image,
                                                   stuff, s, device, rgb, by_k.get(k))

            for im, tags, (rows, masks, maps) in progress(results(), desc=f"cam:{s.select}", total=len(ds.images)):
                for r in rows:  # no quality predictor knows tag-only masks (the scorer has no CAM training data)
                    r["quality"] = float("nan")
                w.add_image(im, rows, masks, maps={"cam": maps} if maps else None, tags=tags)
    finally:
        if props_art is not None:
            props_art.close()
    return Path(out)


def _one_image(model, config, ds, im, tags, props_art, proposals_for_image, stuff, s, device, rgb, feats):
    """One tagged image of `extract_peaks`: `rgb` is the image read (or the ImageError), `feats` its backbone
    features when computed in a batch (else None: computed here)."""
    H, W = int(im["height"]), int(im["width"])
    base = int(im["id"]) * ID_STRIDE

    def all_failed(reason: str):
        rows = [{**_failed(base + k, t, reason)} for k, t in enumerate(tags)]
        return rows, np.zeros((len(rows), H, W), np.uint8), {}

    if isinstance(rgb, ImageError):
        return all_failed(str(rgb))
    if rgb.shape[:2] != (H, W):
        return all_failed(f"{ds.image_path(im)} is {rgb.shape[1]}x{rgb.shape[0]}, the record says {W}x{H}")
    props = None
    if props_art is not None:
        props = read_proposals(props_art, im["id"])
        if props is not None and props.superpixels.shape != (H, W):
            return all_failed(f"{props_art.path}: proposals of image {im['id']} are {props.superpixels.shape[::-1]}"
                              f", the image is {W}x{H}")
    elif proposals_for_image is not None and any(t not in stuff for t in tags):
        props = proposals_for_image(rgb, **s.mcg)
    rows, masks, maps = extract_image(model, config, im, rgb, props, stuff, s, device, feats)
    if props is None and props_art is not None:
        for r in rows:
            if r["reason"] == "no proposals for this image":
                r["reason"] = f"{props_art.path}: no proposals for image {im['id']}"
    return rows, masks, maps


def run_stage(s: CamSettings, *, shard: str, images: str | None, model: str, proposals: str | None, out: str,
              threads: int = 1) -> dict:
    """The `cam` stage (see pseudomask.registry)."""
    torch.set_num_threads(threads)
    extract_peaks(load_dataset(shard, images), model, out, proposals, s, inputs=[shard])
    with Artifact(out) as a:
        return {"out": out, "images": len(a.image_ids), "instances": len(a.instances.get("id", [])),
                "status": a.status_counts()}
