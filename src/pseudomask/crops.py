"""Compact masks: each instance's mask as its tight crop (the box of its non-zero pixels, foreground or
ignore) and the crop's offset in the image, so that bytes follow the mask's information, not the image size.

`crop_masks` turns (K, H, W) masks into the concatenated crops (row-major, values kept: 1 foreground,
255 ignore, 0 background), their (y, x) offsets and (h, w) shapes; `paste_crops` is its inverse. An empty
mask has a (0, 0) crop. The artifact store keeps these arrays per shard (see `pseudomask.store`); `Crops`
holds one image's, so that a worker process hands the writer its image's masks in this form (a few KiB)
rather than as K full frames. `MaskStack` is one image's masks as a list of `Crop`s, the form in which the
stages hold and edit them (a crop is replaced, never written in place), so that memory follows the boxes'
pixels, not K x H x W.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np


@dataclass(frozen=True)
class Crops:
    """One image's K masks as crops: `crop_masks`' three arrays."""

    data: np.ndarray  # (sum of h * w,) uint8
    offsets: np.ndarray  # (K, 2) int32 (y, x)
    shapes: np.ndarray  # (K, 2) int32 (h, w)

    @classmethod
    def from_masks(cls, masks: np.ndarray) -> "Crops":
        return cls(*crop_masks(masks))

    def __len__(self) -> int:
        return len(self.shapes)

    def __reduce__(self):
        """Pickled (from a worker process to the writer) as bits when every value is 0 or 1: an eighth of the
        bytes through the pipe; crops with ignore (255) pixels as they are."""
        if len(self.data) and int(self.data.max()) <= 1:
            return _from_bits, (np.packbits(self.data), len(self.data), self.offsets, self.shapes)
        return Crops, (self.data, self.offsets, self.shapes)

    def fits(self, height: int, width: int) -> bool:
        """Whether every crop lies inside a height x width image and the data holds their pixels."""
        end = self.offsets.astype(np.int64) + self.shapes
        inside = bool(np.all(self.offsets >= 0) and np.all(end[:, 0] <= height) and np.all(end[:, 1] <= width))
        return inside and int(np.prod(self.shapes.astype(np.int64), axis=1).sum()) == len(self.data)


def _from_bits(bits: np.ndarray, n: int, offsets: np.ndarray, shapes: np.ndarray) -> Crops:
    return Crops(np.unpackbits(bits, count=n), offsets, shapes)


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) of a 2-D mask's non-zero pixels; (0, 0, 0, 0) when it has none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return 0, 0, 0, 0
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def span_overlaps(spans: np.ndarray) -> np.ndarray:
    """(K, K) bool: whether the end-exclusive pixel spans (x0, y0, x1, y1) i and j intersect."""
    s = np.asarray(spans, np.int64).reshape(-1, 4)
    return ((np.minimum(s[:, None, 2], s[None, :, 2]) > np.maximum(s[:, None, 0], s[None, :, 0]))
            & (np.minimum(s[:, None, 3], s[None, :, 3]) > np.maximum(s[:, None, 1], s[None, :, 1])))


def span_intersection(a: Sequence[int], b: Sequence[int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of two end-exclusive pixel spans' intersection (empty when x1 <= x0 or y1 <= y0)."""
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


def crop_masks(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crops concatenated as uint8 1-D, (K, 2) int32 (y, x) offsets, (K, 2) int32 (h, w) shapes)."""
    masks = np.asarray(masks, np.uint8)
    k = len(masks)
    offsets, shapes, parts = np.zeros((k, 2), np.int32), np.zeros((k, 2), np.int32), []
    for i, m in enumerate(masks):
        y0, x0, y1, x1 = tight_box(m)
        offsets[i], shapes[i] = (y0, x0), (y1 - y0, x1 - x0)
        if y1 > y0:
            parts.append(m[y0:y1, x0:x1].ravel())
    data = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return data, offsets, shapes


def paste_crops(data: np.ndarray, offsets: np.ndarray, shapes: np.ndarray, height: int, width: int
                ) -> np.ndarray:
    """(K, H, W) uint8 masks from crops concatenated in order (`crop_masks`' output)."""
    k = len(shapes)
    out = np.zeros((k, height, width), np.uint8)
    pos = 0
    for i in range(k):
        h, w = int(shapes[i][0]), int(shapes[i][1])
        if h and w:
            y, x = int(offsets[i][0]), int(offsets[i][1])
            out[i, y:y + h, x:x + w] = data[pos:pos + h * w].reshape(h, w)
            pos += h * w
    if pos != len(data):
        raise ValueError(f"{len(data)} crop bytes for crops of {pos} pixels")
    return out


class Crop(NamedTuple):
    """One mask as its tight crop: offset (y, x) and the (h, w) uint8 pixels; an empty mask has a (0, 0) crop."""

    y: int
    x: int
    data: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray) -> "Crop":
        """The tight crop of a 2-D mask (its non-zero pixels' box)."""
        y0, x0, y1, x1 = tight_box(mask)
        return cls(y0, x0, np.ascontiguousarray(mask[y0:y1, x0:x1], np.uint8))

    def window(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """The mask's pixels in the image window [y0:y1, x0:x1] (zeros outside the crop)."""
        out = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), np.uint8)
        h, w = self.data.shape
        a0, b0 = max(self.y, y0), max(self.x, x0)
        a1, b1 = min(self.y + h, y1), min(self.x + w, x1)
        if a1 > a0 and b1 > b0:
            out[a0 - y0:a1 - y0, b0 - x0:b1 - x0] = self.data[a0 - self.y:a1 - self.y, b0 - self.x:b1 - self.x]
        return out


class MaskStack:
    """One image's K masks as crops, used where stages used (K, H, W) arrays: `stack[k]` is mask k as a full
    (H, W) frame (made on demand, one at a time), `stack[k] = mask` stores a frame (or a `Crop`) as its crop,
    `stack.crop(k)` is the crop itself, `stack[indices]` a sub-stack. Memory follows the masks' pixels, not
    K x H x W."""

    def __init__(self, crops: Sequence[Crop], height: int, width: int):
        self.crops, self.height, self.width = list(crops), int(height), int(width)

    @classmethod
    def zeros(cls, k: int, height: int, width: int) -> "MaskStack":
        empty = Crop(0, 0, np.zeros((0, 0), np.uint8))
        return cls([empty] * k, height, width)

    @classmethod
    def from_masks(cls, masks: np.ndarray) -> "MaskStack":
        """From (K, H, W) masks (or another stack)."""
        if isinstance(masks, MaskStack):
            return masks.copy()
        masks = np.asarray(masks, np.uint8)
        return cls([Crop.of(m) for m in masks], *masks.shape[1:])

    @classmethod
    def from_crops(cls, crops: Crops, height: int, width: int) -> "MaskStack":
        """From one image's `Crops` (e.g. as an artifact stores them)."""
        ends = np.cumsum(np.prod(crops.shapes.astype(np.int64), axis=1))
        starts = ends - np.prod(crops.shapes.astype(np.int64), axis=1)
        return cls([Crop(int(o[0]), int(o[1]), crops.data[s:e].reshape(int(sh[0]), int(sh[1])))
                    for o, sh, s, e in zip(crops.offsets, crops.shapes, starts, ends)], height, width)

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.crops), self.height, self.width

    def __len__(self) -> int:
        return len(self.crops)

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    def crop(self, k: int) -> Crop:
        return self.crops[k]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.crops[index].window(0, 0, self.height, self.width)
        idx = np.arange(len(self))[index]
        return MaskStack([self.crops[int(i)] for i in idx], self.height, self.width)

    def __setitem__(self, k: int, mask: np.ndarray | Crop) -> None:
        c = mask if isinstance(mask, Crop) else Crop.of(np.asarray(mask))
        if not c.data.size or not c.data.any():
            c = Crop(0, 0, np.zeros((0, 0), np.uint8))
        else:
            y0, x0, y1, x1 = tight_box(c.data)
            c = Crop(c.y + y0, c.x + x0, np.ascontiguousarray(c.data[y0:y1, x0:x1], np.uint8))
        self.crops[int(k)] = c

    def equal(self, value: int = 1) -> "MaskStack":
        """The masks of each mask's pixels equal to `value` (1 there, 0 elsewhere)."""
        out = MaskStack.zeros(len(self), self.height, self.width)
        for k, c in enumerate(self.crops):
            out[k] = Crop(c.y, c.x, (c.data == value).astype(np.uint8))
        return out

    def any_equal(self, value: int) -> np.ndarray:
        """(H, W) bool: where some mask has `value`."""
        out = np.zeros((self.height, self.width), bool)
        for c in self.crops:
            out[c.y:c.y + c.data.shape[0], c.x:c.x + c.data.shape[1]] |= c.data == value
        return out

    def spans(self, value: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Tight end-exclusive spans (x0, y0, x1, y1) in the image of each mask's pixels equal to `value` (zeros
        when it has none), and which masks have some."""
        span, has = np.zeros((len(self), 4), np.int64), np.zeros(len(self), bool)
        for k, c in enumerate(self.crops):
            y0, x0, y1, x1 = tight_box(c.data == value) if c.data.size else (0, 0, 0, 0)
            if y1 > y0:
                span[k], has[k] = (c.x + x0, c.y + y0, c.x + x1, c.y + y1), True
        return span, has

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The dense (K, H, W) array: K x H x W bytes, for small images and tests."""
        c = self.to_crops()
        out = paste_crops(c.data, c.offsets, c.shapes, self.height, self.width)
        return out if dtype is None else out.astype(dtype)

    def copy(self) -> "MaskStack":
        return MaskStack(self.crops, self.height, self.width)  # crops are replaced, never written in place

    def to_crops(self) -> Crops:
        """The stack as `Crops` (what the artifact writer takes)."""
        k = len(self)
        offsets, shapes = np.zeros((k, 2), np.int32), np.zeros((k, 2), np.int32)
        for i, c in enumerate(self.crops):
            if c.data.size:
                offsets[i], shapes[i] = (c.y, c.x), c.data.shape
        parts = [c.data.ravel() for c in self.crops if c.data.size]
        return Crops(np.concatenate(parts) if parts else np.zeros(0, np.uint8), offsets, shapes)
