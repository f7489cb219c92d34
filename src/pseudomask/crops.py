"""Compact masks: each instance's mask as its tight crop (the box of its non-zero pixels, foreground or
ignore) and the crop's offset in the image, so that bytes follow the mask's information, not the image size.

`crop_masks` turns (K, H, W) masks into the concatenated crops (row-major, values kept: 1 foreground,
255 ignore, 0 background), their (y, x) offsets and (h, w) shapes; `paste_crops` is its inverse. An empty
mask has a (0, 0) crop. The artifact store keeps these arrays per shard (see `pseudomask.store`); `Crops`
holds one image's, so that a worker process hands the writer its image's masks in this form (a few KiB)
rather than as K full frames.
"""

from __future__ import annotations

from dataclasses import dataclass

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
