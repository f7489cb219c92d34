"""Procedurally rendered demo scenes with exact instance masks: the project's own default dataset.

Textured backgrounds, six shape classes, sizes from tiny (< 32 px) to large, occlusion, and a share of
low-contrast objects so that box-prior methods have something real to get wrong. Deterministic per seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .files import write_json
from .images import write_image
from .settings import Settings, SettingsError, setting
from .masks import mask_box, rle_encode

CLASSES = ("disc", "square", "triangle", "star", "ring", "cross")


@dataclass(frozen=True)
class DemoDataSettings(Settings):
    SECTION = "demo_data"
    scenes: int = setting(96, "number of scenes (images)", minimum=1)
    seed: int = setting(0, "seed of the scenes and the salient set")
    width: int = setting(320, "scene width (px)", minimum=32)
    height: int = setting(240, "scene height (px)", minimum=32)
    salient_images: int | None = setting(None, "images of the salient set; null = 4 per scene", minimum=1)
    test_scenes: int = setting(16, "held-out scenes (test/annotations.json, test/images/) from a seed of their own: "
                                   "the retrained model is evaluated on them", minimum=1)


def _texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray, amp: float) -> np.ndarray:
    """Base colour with low-frequency noise and, sometimes, stripes: (H, W, 3) float."""
    img = np.broadcast_to(base.astype(np.float32), (h, w, 3)).copy()
    scale = int(rng.integers(4, 24))
    noise = rng.normal(0, 1, (max(h // scale, 2), max(w // scale, 2), 3)).astype(np.float32)
    img += amp * cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.4:
        period = rng.uniform(6, 30)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        img += (0.5 * amp * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period))[..., None]
    img += rng.normal(0, amp * 0.15, (h, w, 3)).astype(np.float32)
    return img


def shape_mask(cls: str, cx: float, cy: float, size: float, angle: float, h: int, w: int) -> np.ndarray:
    """Binary (H, W) mask of one shape of a class, centred at (cx, cy) with diameter about `size`."""
    m = np.zeros((h, w), np.uint8)
    r = size / 2.0
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def poly(pts: np.ndarray) -> None:
        p = pts @ rot.T + [cx, cy]
        cv2.fillPoly(m, [np.round(p * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)

    if cls == "disc":
        cv2.ellipse(m, (int(round(cx * 16)), int(round(cy * 16))), (int(r * 16), int(r * 0.8 * 16)),
                    np.degrees(angle), 0, 360, 1, -1, shift=4)
    elif cls == "square":
        poly(np.array([[-r, -r], [r, -r], [r, r], [-r, r]]) * 0.8)
    elif cls == "triangle":
        t = np.array([-np.pi / 2, np.pi / 6, 5 * np.pi / 6])
        poly(np.stack([np.cos(t), np.sin(t)], 1) * r)
    elif cls == "star":
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        poly(np.stack([np.cos(t) * rad, np.sin(t) * rad], 1))
    elif cls == "ring":
        cv2.circle(m, (int(round(cx * 16)), int(round(cy * 16))), int(r * 16), 1, -1, shift=4)
        cv2.circle(m, (int(round(cx * 16)), int(round(cy * 16))), int(r * 0.55 * 16), 0, -1, shift=4)
    elif cls == "cross":
        a, b = r, r * 0.33
        poly(np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b],
                       [-a, -b], [-b, -b]]))
    else:
        raise ValueError(f"unknown demo class {cls!r}")
    return m


def render_scene(rng: np.random.Generator, h: int, w: int, n_objects: int,
                 min_size: float = 10.0, max_frac: float = 0.6, low_contrast: float = 0.15):
    """One scene: (RGB uint8 image, list of (class index, visible mask)) with occlusion resolved."""
    bg_base = rng.uniform(40, 215, 3)
    img = _texture(rng, h, w, bg_base, amp=rng.uniform(8, 30))
    labels = np.full((h, w), -1, np.int32)
    objects: list[tuple[int, np.ndarray, int]] = []  # (class, full mask, full area)
    for _ in range(n_objects * 6):
        if len(objects) >= n_objects:
            break
        cls = int(rng.integers(len(CLASSES)))
        size = float(np.exp(rng.uniform(np.log(min_size), np.log(max_frac * min(h, w)))))
        cx, cy = rng.uniform(size * 0.3, w - size * 0.3), rng.uniform(size * 0.3, h - size * 0.3)
        m = shape_mask(CLASSES[cls], cx, cy, size, rng.uniform(0, 2 * np.pi), h, w).astype(bool)
        if m.sum() < 12:
            continue
        trial = labels.copy()
        trial[m] = len(objects)
        if any((trial == k).sum() < 0.4 * area or (trial == k).sum() < 12 for k, (_, _, area) in enumerate(objects)):
            continue  # would hide too much of an earlier object
        labels = trial
        objects.append((cls, m, int(m.sum())))
        local = img[m].mean(0)
        if rng.random() < low_contrast:
            colour = local + rng.normal(0, 12, 3)
        else:
            colour = rng.uniform(0, 255, 3)
            while np.abs(colour - local).sum() < 120:
                colour = rng.uniform(0, 255, 3)
        tex = _texture(rng, h, w, colour, amp=rng.uniform(4, 16))
        shade = np.linspace(rng.uniform(0.85, 1.0), rng.uniform(1.0, 1.15), h)[:, None, None]
        img[m] = (tex * shade)[m]
    img = cv2.GaussianBlur(np.clip(img, 0, 255).astype(np.uint8), (0, 0), 0.7)
    return img, [(cls, (labels == k).astype(np.uint8)) for k, (cls, _, _) in enumerate(objects)]


def render_salient(rng: np.random.Generator, side: int, distractors: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """One DUTS-style salient image: (RGB uint8 (side, side, 3), its object's mask (side, side) uint8).

    Like a salient-object photo, and like the box crops BoxCaseg segments, one object fills a good part of the
    image (diameter 0.7-1.1 x the side, kept mostly inside it) over a textured background, with up to
    `distractors` other shapes cut by the border as clutter (not in the mask)."""
    img = _texture(rng, side, side, rng.uniform(40, 215, 3), amp=rng.uniform(8, 30))
    for _ in range(distractors):
        if rng.random() < 0.5:
            continue
        along, across = rng.uniform(0, side), rng.choice([rng.uniform(0, 0.15), rng.uniform(0.85, 1.0)]) * side
        cx, cy = (across, along) if rng.random() < 0.5 else (along, across)
        m = shape_mask(CLASSES[int(rng.integers(len(CLASSES)))], cx, cy, rng.uniform(0.2, 0.5) * side,
                       rng.uniform(0, 2 * np.pi), side, side).astype(bool)
        img[m] = _texture(rng, side, side, rng.uniform(0, 255, 3), amp=rng.uniform(4, 16))[m]
    size = rng.uniform(0.7, 1.1) * side
    lo, hi = sorted((min(0.425 * size, side / 2), max(side - 0.425 * size, side / 2)))  # <= 15 % of r outside
    m = shape_mask(CLASSES[int(rng.integers(len(CLASSES)))], rng.uniform(lo, hi), rng.uniform(lo, hi), size,
                   rng.uniform(0, 2 * np.pi), side, side).astype(bool)
    local = img[m].mean(0) if m.any() else img.reshape(-1, 3).mean(0)
    if rng.random() < 0.15:  # low contrast, as in the scenes
        colour = local + rng.normal(0, 12, 3)
    else:
        colour = rng.uniform(0, 255, 3)
        while np.abs(colour - local).sum() < 120:
            colour = rng.uniform(0, 255, 3)
    shade = np.linspace(rng.uniform(0.85, 1.0), rng.uniform(1.0, 1.15), side)[:, None, None]
    img[m] = (_texture(rng, side, side, colour, amp=rng.uniform(4, 16)) * shade)[m]
    img = cv2.GaussianBlur(np.clip(img, 0, 255).astype(np.uint8), (0, 0), 0.7)
    return img, m.astype(np.uint8)


def write_salient_set(out_dir: str | os.PathLike, n: int, rng: np.random.Generator) -> Path:
    """Write n salient images and masks (images/, masks/, matching stems) under out_dir: BoxCaseg's DUTS stand-in.

    Sides 48-140 px, the size of the scenes' objects, so that resized for training they show the texture and
    blur of the box crops BoxCaseg is applied to."""
    out = Path(out_dir)
    for j in range(n):
        img, mask = render_salient(rng, int(rng.integers(48, 141)))
        write_image(out / "images" / f"s{j + 1:06d}.png", img)
        write_image(out / "masks" / f"s{j + 1:06d}.png", mask * 255)
    return out


def make_demo_data(out_dir: str | os.PathLike, n_images: int = 24, seed: int | list[int] = 0,
                   size: tuple[int, int] = (320, 240), n_salient: int | None = None) -> Path:
    """Write annotations.json (COCO, RLE masks), images/, and salient/{images,masks}/ (by default 4 salient
    images per scene; 0: no salient folder) under out_dir. `seed` is numpy's: an int or a list of ints."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    w, h = size
    categories = [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(CLASSES)]
    images, anns = [], []
    for i in range(n_images):
        img, objs = render_scene(rng, h, w, int(rng.integers(2, 8)))
        name = f"{i + 1:06d}.png"
        write_image(out / "images" / name, img)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for cls, m in objs:
            box = mask_box(m)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cls + 1, "bbox": box,
                         "area": int(m.sum()), "iscrowd": 0, "segmentation": rle_encode(m)})
    write_salient_set(out / "salient", 4 * n_images if n_salient is None else n_salient, rng)
    coco = {"info": {"description": "pseudomask demo scenes", "seed": seed}, "images": images,
            "categories": categories, "annotations": anns}
    write_json(coco, out / "annotations.json")
    return out / "annotations.json"


def run_stage(s: DemoDataSettings, *, annotations: str, images: str | None = None, salient: str | None = None,
              test_annotations: str | None = None, test_images: str | None = None, threads: int = 1) -> dict:
    """The `demo_data` stage (see pseudomask.registry): the outputs share one folder, the held-out scenes its
    test/ (seed [seed, 1]: no scene of the training set)."""
    root = Path(annotations).parent
    where = {"images": (images, root / "images"), "salient": (salient, root / "salient"),
             "test_annotations": (test_annotations, root / "test" / "annotations.json"),
             "test_images": (test_images, root / "test" / "images")}
    wrong = [f"{port} must be {must}" for port, (given, must) in where.items() if given and Path(given) != must]
    if wrong:
        raise SettingsError(f"demo_data: {'; '.join(wrong)}")
    path = make_demo_data(root, s.scenes, s.seed, (s.width, s.height), s.salient_images)
    test = make_demo_data(root / "test", s.test_scenes, [s.seed, 1], (s.width, s.height), n_salient=0)
    return {"annotations": str(path), "scenes": s.scenes, "test_annotations": str(test), "test_scenes": s.test_scenes}
