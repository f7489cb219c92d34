"""The report's pictures, each as a base64 PNG data URI: matplotlib charts (drop curve, histograms,
calibration, keep-rate curves) and image overlays (samples by status, crops of single masks)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import cv2
import numpy as np

from ..errors import PseudomaskError
from ..images import ImageError, read_annotated_image
from ..merge_drop import is_dropped
from ..store import Artifact
from ..visualize import STATUS_COLOURS, overlay


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


def new_figure(figsize: tuple[float, float] = (6, 3.2)):
    """A matplotlib Figure (no pyplot, no display)."""
    from matplotlib.figure import Figure  # lazy: matplotlib takes about a second to import, on every CLI start

    return Figure(figsize=figsize)


def plot_histogram(proxy: np.ndarray, threshold: float | None) -> str:
    fig = new_figure()
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
    fig = new_figure()
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


def plot_quality_histograms(per_stage: dict[str, np.ndarray]) -> str:
    fig = new_figure()
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
    n = len(pairs)
    fig = new_figure((3.0 * n, 3.2))
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
    fig = new_figure()
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


def artifact_rgb(artifact: Artifact, image_id: int) -> np.ndarray:
    """One image of an artifact read from its image_root; dark grey of the image's size if unreadable."""
    im = artifact.image(image_id)
    try:
        return read_annotated_image(Path(artifact.attrs.get("image_root", ".")) / im["file_name"], im)
    except ImageError:
        return np.full((im["height"], im["width"], 3), 40, np.uint8)


def render_by_status(artifact: Artifact, image_id: int) -> np.ndarray:
    """An image of an artifact with each mask and box in the colour of its status (kept green, dropped magenta)."""
    rgb = artifact_rgb(artifact, image_id)
    recs = artifact.records(image_id)
    names = {c["id"]: c["name"] for c in artifact.categories}
    colours = np.array([STATUS_COLOURS.get(r["status"], (255, 255, 0)) for r in recs], np.uint8).reshape(-1, 3)
    labels = [f"{names.get(r['category_id'], r['category_id'])}:{r['status']}" for r in recs]
    return overlay(rgb, artifact.mask_stack(image_id), [r["bbox"] for r in recs], labels, colours=colours)


def quality_crop(artifact: Artifact, instance_id: int, pad: float = 0.25, size: int = 96) -> np.ndarray:
    """The image around one instance's box (padded by `pad` of its size) with its mask and box overlaid,
    scaled so that the longer side is about `size` px."""
    hit = np.flatnonzero(artifact.instances["id"] == int(instance_id))
    i = int(hit[0])
    rgb = artifact_rgb(artifact, int(artifact.instances["image_id"][i]))
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
