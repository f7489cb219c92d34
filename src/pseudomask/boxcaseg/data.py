"""BoxCaseg training data: box-supervised crops with the paper's box jitter, salient images from a DUTS-style
folder, and the batch sampler that mixes them at a fixed ratio (r_ws = 9:7 by default).

A box crop: the GT box is jittered (centre shifted by up to +-0.25 w/h, size scaled by 0.5-1.5), that region
is cropped from the image (clipped to it) and resized to 288x288; its label is the GT box rasterised in the
crop, from which the MIL bags are made. A salient image is resized to 320x320 and randomly cropped to 288x288
with its pixel mask.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import torch

from ..dataset import Dataset
from ..errors import PseudomaskError
from ..images import read_image
from ..masks import box_pixels, rle_decode

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
BOX, SALIENT = "box", "salient"


class BoxCasegDataError(PseudomaskError, ValueError):
    """Training data BoxCaseg cannot use: an empty or inconsistent salient folder, no usable boxes."""


# ---- geometry -------------------------------------------------------------------------------------------


def jitter_box(box_xyxy: Sequence[float], rng: np.random.Generator, shift: float = 0.25,
               scale: tuple[float, float] = (0.5, 1.5)) -> tuple[float, float, float, float]:
    """The paper's box augmentation: centre moved by U(-shift, shift) x (w, h), sides scaled by U(scale)."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2 + rng.uniform(-shift, shift) * w
    cy = (y0 + y1) / 2 + rng.uniform(-shift, shift) * h
    w2, h2 = rng.uniform(*scale) * w, rng.uniform(*scale) * h
    return cx - w2 / 2, cy - h2 / 2, cx + w2 / 2, cy + h2 / 2


def crop_span(box_xyxy: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel span (x0, y0, x1, y1) of a float box, clipped to the image, at least 1x1."""
    x0, y0, x1, y1 = box_xyxy
    x0 = int(np.clip(math.floor(x0), 0, width - 1))
    y0 = int(np.clip(math.floor(y0), 0, height - 1))
    x1 = int(np.clip(math.ceil(x1), x0 + 1, width))
    y1 = int(np.clip(math.ceil(y1), y0 + 1, height))
    return x0, y0, x1, y1


def box_in_crop(bbox_xywh: Sequence[float], span: tuple[int, int, int, int], size: int) -> np.ndarray:
    """(size, size) uint8 mask of the GT box inside a crop `span` resized to size x size."""
    x0, y0, x1, y1 = span
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    bx, by, bw, bh = (float(v) for v in bbox_xywh)
    m = np.zeros((size, size), np.uint8)
    px0, py0, px1, py1 = box_pixels([(bx - x0) * sx, (by - y0) * sy, bw * sx, bh * sy], size, size)
    m[py0:py1, px0:px1] = 1
    return m


def box_crop(rgb: np.ndarray, bbox_xywh: Sequence[float], size: int, rng: np.random.Generator | None = None,
             shift: float = 0.25, scale: tuple[float, float] = (0.5, 1.5)) -> tuple[np.ndarray, np.ndarray]:
    """(crop (size,size,3) uint8, box label (size,size) uint8) around a box, jittered when `rng` is given."""
    crop, label, _ = box_crop_span(rgb, bbox_xywh, size, rng, shift, scale)
    return crop, label


def box_crop_span(rgb: np.ndarray, bbox_xywh: Sequence[float], size: int, rng: np.random.Generator | None = None,
                  shift: float = 0.25, scale: tuple[float, float] = (0.5, 1.5)
                  ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """`box_crop` and the pixel span it cut (to crop a mask of the image the same way)."""
    h, w = rgb.shape[:2]
    x, y, bw, bh = (float(v) for v in bbox_xywh)
    if not (bw > 0 and bh > 0):
        raise BoxCasegDataError(f"box {list(bbox_xywh)} has zero size")
    region = (x, y, x + bw, y + bh)
    if rng is not None:
        region = jitter_box(region, rng, shift, scale)
    span = crop_span(region, w, h)
    x0, y0, x1, y1 = span
    crop = cv2.resize(rgb[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_LINEAR)
    return crop, box_in_crop(bbox_xywh, span, size), span


def salient_crop(rgb: np.ndarray, mask: np.ndarray, resize: int, size: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Resize image and mask to resize x resize, then a random size x size crop of both."""
    img = cv2.resize(rgb, (resize, resize), interpolation=cv2.INTER_LINEAR)
    m = cv2.resize(mask.astype(np.uint8), (resize, resize), interpolation=cv2.INTER_NEAREST)
    top = int(rng.integers(0, resize - size + 1))
    left = int(rng.integers(0, resize - size + 1))
    return img[top:top + size, left:left + size], m[top:top + size, left:left + size]


def mask_box_label(mask: np.ndarray) -> np.ndarray:
    """The filled tight box of a mask's foreground: the box supervision a salient image gives its MIL bags."""
    out = np.zeros(mask.shape, np.uint8)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size:
        out[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = 1
    return out


# ---- sources --------------------------------------------------------------------------------------------


class SalientFolder:
    """A DUTS-style folder: images/ and masks/ whose files pair up by stem (mask > half its max = object)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        img_dir, mask_dir = self.root / "images", self.root / "masks"
        for d in (img_dir, mask_dir):
            if not d.is_dir():
                raise BoxCasegDataError(f"{self.root}: salient folder needs images/ and masks/ ({d} is missing)")
        imgs = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        if not imgs:
            raise BoxCasegDataError(f"{img_dir}: no salient images (expected {', '.join(IMAGE_SUFFIXES)} files)")
        no_mask, no_image = sorted(set(imgs) - set(masks)), sorted(set(masks) - set(imgs))
        if no_mask or no_image:
            detail = "; ".join(filter(None, [
                f"{len(no_mask)} image(s) without a mask in {mask_dir} (e.g. {', '.join(no_mask[:3])})"
                if no_mask else "",
                f"{len(no_image)} mask(s) without an image in {img_dir} (e.g. {', '.join(no_image[:3])})"
                if no_image else ""]))
            raise BoxCasegDataError(f"{self.root}: image and mask stems do not match: {detail}")
        self.stems = sorted(imgs)
        self.images = [imgs[s] for s in self.stems]
        self.masks = [masks[s] for s in self.stems]

    def __len__(self) -> int:
        return len(self.stems)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8, binary uint8 mask) of pair i; the mask is resized to the image if they differ."""
        rgb = read_image(self.images[i])
        raw = read_image(self.masks[i])[..., 0]
        mask = (raw > (127 if raw.max() > 1 else 0)).astype(np.uint8)
        if mask.shape != rgb.shape[:2]:
            mask = cv2.resize(mask, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
        return rgb, mask


@dataclass(frozen=True)
class BoxItem:
    image_path: Path
    bbox: tuple[float, float, float, float]  # COCO xywh
    instance_id: int
    mask: Any = None  # COCO RLE of the true mask of a strong instance (dataset.strong), else None
    orientation: str = "stored"  # how its image is read (pseudomask.images)


def strong_items(datasets: Sequence[Dataset]) -> list[BoxItem]:
    """The strong instances (true masks, source gt) of the datasets/shards: supervised like salient images."""
    items = []
    for ds in datasets:
        images = {im["id"]: im for im in ds.images}
        for r in ds.instances:
            if r.get("source") == "gt" and int(r["id"]) in ds.strong:
                im = images[r["image_id"]]
                items.append(BoxItem(ds.image_path(im), tuple(float(v) for v in r["bbox"]), int(r["id"]),
                                     ds.strong[int(r["id"])], im.get("orientation", "stored")))
    return items


def box_items(datasets: Sequence[Dataset], usable: Sequence[str] = ("kept", "invalid", "dropped")) -> list[BoxItem]:
    """Every instance with a usable status and a box of positive size, from one or more datasets/shards."""
    items = []
    for ds in datasets:
        images = {im["id"]: im for im in ds.images}
        for r in ds.instances:
            b = r.get("bbox")
            if r.get("status") not in usable or b is None or not (float(b[2]) > 0 and float(b[3]) > 0):
                continue
            im = images[r["image_id"]]
            items.append(BoxItem(ds.image_path(im), tuple(float(v) for v in b), int(r["id"]),
                                 orientation=im.get("orientation", "stored")))
    return items


# ---- batches --------------------------------------------------------------------------------------------


def split_batch(batch_size: int, ratio: Sequence[float]) -> tuple[int, int]:
    """(box images, salient images) per batch for a box:salient ratio, each at least 1."""
    if batch_size < 2:
        raise BoxCasegDataError(f"batch size {batch_size}: need at least 2 (one box and one salient image)")
    rw, rs = (float(v) for v in ratio)
    if rw <= 0 or rs <= 0:
        raise BoxCasegDataError(f"box:salient ratio {list(ratio)} must be positive")
    n_box = int(round(batch_size * rw / (rw + rs)))
    n_box = min(max(n_box, 1), batch_size - 1)
    return n_box, batch_size - n_box


class RatioBatchSampler:
    """Batches with a fixed number of box and salient items (BoxCaseg's r_ws sampling).

    Each epoch uses every salient image once, in a new random order (the last batch is topped up from the
    next order); box items are drawn without replacement from a shuffled cycle that continues across epochs,
    so the many box images are sampled and all of them are seen before any repeats. Yields lists of
    (kind, index, seed) with a per-item seed for the augmentation; infinite (training is counted in
    iterations)."""

    def __init__(self, n_box: int, n_salient: int, batch_size: int = 16, ratio: Sequence[float] = (9, 7),
                 seed: int = 0):
        if n_box < 1:
            raise BoxCasegDataError("no usable box instances to train on")
        if n_salient < 1:
            raise BoxCasegDataError("no salient images to train on")
        self.n_box, self.n_salient = n_box, n_salient
        self.box_per_batch, self.salient_per_batch = split_batch(batch_size, ratio)
        self.batches_per_epoch = math.ceil(n_salient / self.salient_per_batch)
        self.rng = np.random.default_rng(seed)

    def _cycle(self, n: int) -> Iterator[int]:
        while True:
            yield from (int(i) for i in self.rng.permutation(n))

    def __iter__(self) -> Iterator[list[tuple[str, int, int]]]:
        boxes, salient = self._cycle(self.n_box), self._cycle(self.n_salient)
        while True:
            batch = [(BOX, next(boxes), 0) for _ in range(self.box_per_batch)]
            batch += [(SALIENT, next(salient), 0) for _ in range(self.salient_per_batch)]
            seeds = self.rng.integers(0, 2**31 - 1, len(batch))
            yield [(k, i, int(s)) for (k, i, _), s in zip(batch, seeds)]


class JointDataset(torch.utils.data.Dataset):
    """Items addressed by (kind, index, seed): an augmented box crop or salient crop as tensors.

    Salient indices past the salient folder address the `strong` instances (true masks of the dataset): a
    jittered crop around the box as for box items, with the true mask cropped the same way, supervised as a
    salient image is (pixel loss, IoU head). Returns {"image": (3,S,S) float in [0,1], "box": (1,S,S) float
    box label for the MIL bags (the GT box, or the tight box of a salient mask), "mask": (1,S,S) float true
    mask (zeros for box items), "salient": bool}."""

    def __init__(self, boxes: Sequence[BoxItem], salient: SalientFolder, crop_size: int = 288,
                 salient_resize: int = 320, shift: float = 0.25, scale: tuple[float, float] = (0.5, 1.5),
                 strong: Sequence[BoxItem] = ()):
        if salient_resize < crop_size:
            raise BoxCasegDataError(f"salient resize {salient_resize} is smaller than the crop size {crop_size}")
        self.boxes, self.salient, self.strong = list(boxes), salient, list(strong)
        self.crop_size, self.salient_resize = crop_size, salient_resize
        self.shift, self.scale = shift, tuple(scale)
        self._cache: dict[Path, np.ndarray] = {}

    def _image(self, item: BoxItem) -> np.ndarray:
        path = item.image_path
        if path not in self._cache:
            if len(self._cache) > 64:
                self._cache.pop(next(iter(self._cache)))
            self._cache[path] = read_image(path, item.orientation)
        return self._cache[path]

    def __len__(self) -> int:
        return len(self.boxes) + len(self.salient) + len(self.strong)

    def __getitem__(self, key: tuple[str, int, int]) -> dict:
        kind, i, seed = key
        rng = np.random.default_rng(seed)
        if kind == BOX:
            item = self.boxes[i]
            img, box = box_crop(self._image(item), item.bbox, self.crop_size, rng,
                                self.shift, self.scale)
            mask = np.zeros_like(box)
        elif i >= len(self.salient):
            item = self.strong[i - len(self.salient)]
            img, box, (x0, y0, x1, y1) = box_crop_span(self._image(item), item.bbox, self.crop_size,
                                                       rng, self.shift, self.scale)
            mask = cv2.resize(rle_decode(item.mask)[y0:y1, x0:x1], (self.crop_size, self.crop_size),
                              interpolation=cv2.INTER_NEAREST)
        else:
            rgb, mask = self.salient.load(i)
            img, mask = salient_crop(rgb, mask, self.salient_resize, self.crop_size, rng)
            box = mask_box_label(mask)
        as_map = lambda a: torch.from_numpy(a.astype(np.float32))[None]  # noqa: E731
        return {"image": torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0,
                "box": as_map(box), "mask": as_map(mask), "salient": kind == SALIENT}


def collate(items: list[dict]) -> dict:
    return {"image": torch.stack([it["image"] for it in items]),
            "box": torch.stack([it["box"] for it in items]),
            "mask": torch.stack([it["mask"] for it in items]),
            "salient": torch.tensor([it["salient"] for it in items], dtype=torch.bool)}
