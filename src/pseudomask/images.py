"""Image reading that accepts what real datasets hold (grayscale, RGBA, 16-bit, an EXIF orientation tag) and
fails with the file's name.

Orientation: every reader of a dataset's image uses the pixels as the annotation file describes them. If
the annotated width and height match the pixels as stored, the image is used as stored; if they match only
after the EXIF rotation, it is rotated everywhere (`orientation` "exif"); else the image is rejected with
both sizes named. `choose_orientation` is that rule, `read_annotated_image` applies it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
from PIL import Image

from .errors import PseudomaskError

ORIENTATIONS = ("stored", "exif")  # pixels as the file stores them | turned by its EXIF orientation tag
EXIF_ORIENTATION = 0x0112
SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees


class ImageError(PseudomaskError, OSError):
    """An image that is missing or cannot be decoded."""


@dataclass(frozen=True)
class ImageProbe:
    """What the file says of itself: size as stored, EXIF orientation tag (1: none), and why its pixels
    decode only partly ("" when they decode whole, or when not decoded)."""

    width: int
    height: int
    exif: int = 1
    damage: str = ""

    def displayed_size(self) -> tuple[int, int]:
        """(width, height) after the EXIF rotation."""
        return (self.height, self.width) if self.exif in SWAPS_SIDES else (self.width, self.height)


def _existing(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: image file not found")
    return p


def probe_image(path: str | os.PathLike, decode: bool = False) -> ImageProbe:
    """The file's size, orientation tag and, with `decode`, whether all its pixels decode (a JPEG is decoded
    at 1/8 scale, which still reads its whole entropy-coded stream)."""
    p = _existing(path)
    try:
        im = Image.open(p)
    except Exception as e:  # PIL raises several types for corrupt files
        raise ImageError(f"{p}: cannot read image header ({e})") from None
    with im:
        w, h = im.size
        exif, damage = 1, ""
        try:  # a PNG's EXIF may follow its pixels: reading it can meet the truncation too
            exif = int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
            if decode:
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                im.load()
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for damaged data
            damage = f"{p}: the image decodes only partly ({e})"
    return ImageProbe(w, h, exif if 1 <= exif <= 8 else 1, damage)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as stored, from the file header, without decoding the pixels."""
    probe = probe_image(path)
    return probe.width, probe.height


def choose_orientation(path: str | os.PathLike, probe: ImageProbe, annotated: tuple[int, int] | None) -> str:
    """"stored" if the annotated (width, height) is the stored size (or none is given), "exif" if it is the
    size after the EXIF rotation; ImageError naming both sizes otherwise."""
    stored = (probe.width, probe.height)
    if not annotated or not all(annotated) or tuple(annotated) == stored:
        return "stored"
    if tuple(annotated) == probe.displayed_size():
        return "exif"
    shown = probe.displayed_size()
    turned = f" ({shown[0]}x{shown[1]} turned by its EXIF orientation {probe.exif})" if shown != stored else ""
    raise ImageError(f"{path}: the image is {stored[0]}x{stored[1]} on disk{turned}, but "
                     f"{annotated[0]}x{annotated[1]} in the annotations")


def exif_transpose(pixels: np.ndarray, exif: int) -> np.ndarray:
    """`pixels` (H, W[, C]) turned as EXIF orientation `exif` says (PIL's `ImageOps.exif_transpose`)."""
    swap = (1, 0) + tuple(range(2, pixels.ndim))
    turns = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.transpose(swap), 6: lambda a: a[::-1].transpose(swap),
             7: lambda a: a[::-1, ::-1].transpose(swap), 8: lambda a: a.transpose(swap)[::-1]}
    return np.ascontiguousarray(turns[exif](pixels)) if exif in turns else pixels


def read_image(path: str | os.PathLike, orientation: str = "stored") -> np.ndarray:
    """RGB uint8 (H, W, 3) pixels of an image file, as stored or (orientation "exif") turned by its EXIF tag."""
    p = _existing(path)
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{p}: cannot decode image")
    if img.dtype != np.uint8:
        img = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        rgb = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if orientation == "exif":
        return exif_transpose(rgb, probe_image(p).exif)
    if orientation != "stored":
        raise ImageError(f"{p}: unknown orientation {orientation!r}; expected one of {ORIENTATIONS}")
    return rgb


def read_annotated_image(path: str | os.PathLike, image: Mapping[str, Any]) -> np.ndarray:
    """RGB pixels of a dataset image as its record describes them: the record's `orientation` (set by
    ingest), or else the one its `width` and `height` choose (`choose_orientation`)."""
    orientation = image.get("orientation")
    if orientation not in ORIENTATIONS:
        annotated = (int(image.get("width") or 0), int(image.get("height") or 0))
        orientation = choose_orientation(path, probe_image(path), annotated)
    return read_image(path, str(orientation))


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB (or single-channel) uint8 array to an image file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    arr = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(p), arr):
        raise ImageError(f"{p}: cannot write image")
