"""Image reading that accepts what real datasets hold (grayscale, RGBA, 16-bit) and fails with the file's name."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .errors import PseudomaskError


class ImageError(PseudomaskError, OSError):
    """An image that is missing or cannot be decoded."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 (H, W, 3) pixels of an image file."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: image file not found")
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{p}: cannot decode image")
    if img.dtype != np.uint8:
        img = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: image file not found")
    try:
        with Image.open(p) as im:
            return im.size
    except Exception as e:  # PIL raises several types for corrupt files
        raise ImageError(f"{p}: cannot read image header ({e})") from None


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB (or single-channel) uint8 array to an image file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    arr = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(p), arr):
        raise ImageError(f"{p}: cannot write image")
