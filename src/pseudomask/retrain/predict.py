"""Run a trained Mask R-CNN over images and write COCO results (RLE segmentation, xywh bbox, score) that
`COCO.loadRes` and `detection_metrics.evaluate_detections` read."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..devices import pick_device
from ..errors import read_json
from ..files import write_json
from ..images import ImageError, read_annotated_image
from ..loops import progress, read_ahead
from ..masks import rle_encode
from ..settings import Settings, device_setting, setting
from .weights import trusted_checkpoints
from .mmdet_config import CONFIG_NAME, RetrainError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def find_config(checkpoint: str | os.PathLike, config: str | os.PathLike | None = None):
    """The MMEngine Config of a checkpoint: the given file, the generated one beside it, or its metadata."""
    from mmengine.config import Config  # lazy: MMDetection is optional

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise RetrainError(f"{checkpoint}: checkpoint not found")
    if config:
        if not Path(config).is_file():
            raise RetrainError(f"{config}: config not found")
        return Config.fromfile(str(config))
    beside = checkpoint.with_name(CONFIG_NAME)
    if beside.is_file():
        return Config.fromfile(str(beside))
    import torch  # lazy: the CLI imports PredictSettings at start-up

    with trusted_checkpoints():
        meta = torch.load(checkpoint, map_location="cpu").get("meta", {})
    if "cfg" not in meta:
        raise RetrainError(f"{checkpoint}: no {CONFIG_NAME} beside it and no config in its metadata; pass --mmdet-config")
    return Config.fromstring(meta["cfg"], ".py")


def load_model(checkpoint: str | os.PathLike, config: str | os.PathLike | None = None, device: str = "cpu"):
    """(model in eval mode, its config, category ids by label) of a trained checkpoint."""
    from mmengine.registry import init_default_scope  # lazy: MMDetection is optional
    from mmengine.runner import load_checkpoint
    from mmdet.registry import MODELS

    from . import modules  # noqa: F401  registers the custom modules; lazy: it imports MMDetection

    cfg = find_config(checkpoint, config)
    init_default_scope(cfg.get("default_scope", "mmdet"))
    cfg.model.backbone.init_cfg = None  # the checkpoint has every weight; never fetch anything
    model = MODELS.build(cfg.model)
    with trusted_checkpoints():  # the checkpoint the user chose; full MMEngine checkpoints need unpickling
        load_checkpoint(model, str(checkpoint), map_location="cpu", logger="silent")
    model.to(device).eval()
    ids = list(cfg.get("pseudomask", {}).get("category_ids") or [])
    classes = cfg.train_dataloader.dataset.metainfo["classes"]
    if len(ids) != len(classes):
        ids = list(range(1, len(classes) + 1))
    return model, cfg, ids


def image_list(images: str | os.PathLike, coco: str | os.PathLike | None = None) -> list[dict]:
    """[{id, file_name}] from a COCO JSON's images, or from the folder's image files (ids 1.. by name)."""
    root = Path(images)
    if not root.is_dir():
        raise RetrainError(f"{root}: image folder not found")
    if coco:
        data = read_json(coco, RetrainError, "annotation file")
        ims = data.get("images") if isinstance(data, dict) else None
        if not isinstance(ims, list):
            raise RetrainError(f"{coco}: not a COCO dataset (no 'images' list)")
        for i, im in enumerate(ims):
            if "id" not in im or "file_name" not in im:
                raise RetrainError(f"{coco}: images[{i}] lacks 'id' or 'file_name'")
        return [{"id": int(im["id"]), "file_name": str(im["file_name"])} for im in ims]
    files = sorted(p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise RetrainError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return [{"id": i + 1, "file_name": f} for i, f in enumerate(files)]


def instances_to_results(image_id: int, pred, category_ids: Sequence[int]) -> list[dict]:
    """COCO results of one image's `pred_instances` (xyxy boxes, labels, scores, masks at image size)."""
    boxes = pred.bboxes.detach().cpu().numpy().astype(float)
    labels = pred.labels.detach().cpu().numpy().astype(int)
    scores = pred.scores.detach().cpu().numpy().astype(float)
    masks = pred.masks.detach().cpu().numpy() if "masks" in pred else None
    out = []
    for k in range(len(scores)):
        x0, y0, x1, y1 = boxes[k]
        r: dict[str, Any] = {"image_id": int(image_id), "category_id": int(category_ids[labels[k]]),
                             "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2),
                                      round(float(y1 - y0), 2)],
                             "score": round(float(scores[k]), 5)}
        if masks is not None:
            r["segmentation"] = rle_encode(masks[k].astype(np.uint8))
        out.append(r)
    return out


def _batches(items: Iterable, n: int) -> Iterable[list]:
    it = iter(items)
    return iter(lambda: list(itertools.islice(it, n)), [])


def predict(checkpoint: str | os.PathLike, images: str | os.PathLike, coco: str | os.PathLike | None = None,
            config: str | os.PathLike | None = None, device: str | None = None, batch_size: int = 2,
            score_thr: float | None = None, loader_workers: int = 0) -> tuple[list[dict], dict]:
    """COCO results of every image (in a COCO JSON's list or the folder) and a summary: `batch_size` images
    per forward pass, read and transformed ahead by `loader_workers` threads (0: in turn)."""
    import torch  # lazy: the CLI imports PredictSettings at start-up
    from mmcv.transforms import Compose

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, category_ids = load_model(checkpoint, config, device)
    if score_thr is not None:
        model.roi_head.test_cfg.score_thr = float(score_thr)
    steps = [dict(s) for s in cfg.test_pipeline]
    steps[0] = dict(type="mmdet.LoadImageFromNDArray")
    pipeline = Compose(steps)
    ims = image_list(images, coco)
    results: list[dict] = []
    skipped: list[str] = []
    root = Path(images)
    batch_size = max(1, batch_size)

    def load(im: dict) -> tuple[dict, dict | None, str]:
        try:
            rgb = read_annotated_image(root / im["file_name"], im)
        except ImageError as e:
            return im, None, str(e)
        return im, pipeline(dict(img=np.ascontiguousarray(rgb[..., ::-1]), img_id=im["id"])), ""

    loaded = read_ahead(load, ims, loader_workers, ahead=2 * batch_size)
    for batch in progress(_batches(loaded, batch_size), desc="predict", total=-(-len(ims) // batch_size),
                          unit="batch"):
        inputs, samples, ids = [], [], []
        for im, data, error in batch:
            if data is None:
                skipped.append(error)
                print(f"predict: skipping image {im['id']}: {error}")
                continue
            inputs.append(data["inputs"])
            samples.append(data["data_samples"])
            ids.append(im["id"])
        if not inputs:
            continue
        with torch.no_grad():
            outs = model.test_step(dict(inputs=inputs, data_samples=samples))
        for image_id, o in zip(ids, outs):
            results.extend(instances_to_results(image_id, o.pred_instances, category_ids))
    summary = {"images": len(ims) - len(skipped), "skipped": skipped, "detections": len(results),
               "device": device, "checkpoint": str(checkpoint)}
    return results, summary


def write_results(results: list[dict], out: str | os.PathLike) -> Path:
    """Write a COCO results list atomically."""
    return write_json(results, out)


@dataclass(frozen=True)
class PredictSettings(Settings):
    SECTION = "predict"
    score_thr: float = setting(0.05, "lowest detection score kept", minimum=0, maximum=1)
    batch_size: int = setting(2, "images per forward pass", minimum=1)
    loader_workers: int = setting(2, "threads reading and transforming images ahead of the network (0: in turn)",
                                  minimum=0)
    device: str = device_setting()


def run_stage(s: PredictSettings, *, checkpoint: str, mmdet_config: str | None, images: str, coco: str | None, out: str,
              threads: int = 1) -> dict:
    """The `predict` stage (see pseudomask.registry)."""
    import torch  # lazy: the CLI imports PredictSettings at start-up

    torch.set_num_threads(threads)
    results, summary = predict(checkpoint, images, coco=coco, config=mmdet_config, device=str(pick_device(s.device)),
                               batch_size=s.batch_size, score_thr=s.score_thr, loader_workers=s.loader_workers)
    write_results(results, out)
    return {"out": out, **summary}
