"""MMDetection Mask R-CNN config generated from config.yaml's `retrain:` section and the training COCO JSON.

The config is a plain dict (no _base_ inheritance, absolute paths) written as a Python file next to the run,
so that a user can read it and rerun it with MMDetection's own tools (`custom_imports` brings in
`pseudomask.retrain.modules`, which must be importable). Nothing in it fetches weights: without an init
checkpoint the backbone's `init_cfg` is None (random init, trainable BN, no frozen stages).
"""

from __future__ import annotations

import math
import os
import pprint
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from .. import __version__
from ..errors import read_json
from ..files import write_text_atomic
from ..devices import pick_device
from ..settings import Settings, SettingsError, cpu_profile, setting
from ..store import file_digest
from .weights import checkpoint_kind

ARCHS = {"r18": 18, "r34": 34, "r50": 50, "r101": 101}
# MMDetection's epoch schedules: (epochs, lr steps at these epochs)
SCHEDULES = {"iters": None, "1x": (12, (8, 11)), "2x": (24, (16, 22))}
BASE_BATCH = 16  # the total batch of MMDetection's lr 0.02 (8 GPUs x 2 images)
# the CPU's run (the demo's, a few minutes on 2 cores): a narrow ResNet-18 Mask R-CNN that learns from random init
# in 1000 iterations of AdamW, multi-scale, at the demo's 320 px (benchmarks/bench_learning.py)
CPU_PROFILE = {"arch": "r18", "width": 32, "channels": 64, "proposals": 100, "rois": 64, "schedule": "iters",
               "max_iters": 1000, "batch_size": 4, "optimizer": "adamw", "lr": 0.001, "lr_batch": None,
               "warmup_iters": 50, "scale": 320, "scale_jitter": 0.2, "checkpoint_interval": 0}
CUSTOM_MODULE = "pseudomask.retrain.modules"
CONFIG_NAME = "mask_rcnn.py"
NECKS = ("fpn", "pafpn")
OPTIMIZERS = ("sgd", "adamw")
RECIPES = ("mask_rcnn", "hybrid")


class RetrainError(SettingsError):
    """Unusable training input or settings; names the file and the record."""


SCALE_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 32},
                          {"type": "array", "items": {"type": "integer", "minimum": 32}, "minItems": 2,
                           "maxItems": 2}]}
TEST_SCORE_THR = 0.05  # MMDetection's; `predict.score_thr` sets the one used for predictions


def list_scale(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """Settings values with a tuple `scale` (as Python code writes MMDetection's (1333, 800)) as the list a
    config file gives."""
    values = dict(values or {})
    if isinstance(values.get("scale"), tuple):
        values["scale"] = list(values["scale"])
    return values


@dataclass(frozen=True)
class RetrainSettings(Settings):
    """The knobs of a Mask R-CNN training run (config section `retrain:`)."""

    SECTION = "retrain"
    arch: str = setting("r50", "ResNet depth of the Mask R-CNN FPN backbone", choices=tuple(ARCHS))
    width: int = setting(64, "channels of the backbone's first stage, doubled at each of the next three (ResNet: 64)",
                         minimum=8)
    channels: int = setting(256, "channels of the FPN, the RPN and the RoI heads; the box head's two layers have 4 x "
                                 "this (MMDetection: 256, 1024)", minimum=8)
    proposals: int = setting(1000, "RPN proposals per image passed to the RoI heads (MMDetection: 1000)", minimum=1)
    rois: int = setting(512, "RoIs sampled per training image for the box head (MMDetection: 512)", minimum=1)
    schedule: str = setting("1x", "1x | 2x: MMDetection's 12 | 24 epochs, lr x 0.1 after epochs 8,11 | 16,22; "
                                  "iters: max_iters iterations, lr steps at lr_steps", choices=tuple(SCHEDULES))
    init_checkpoint: str = setting("", "local .pth: ImageNet ResNet (backbone) or a whole MMDetection model; "
                                       "\"\" = random init")
    max_iters: int = setting(20, "training iterations of schedule iters (COCO's 1x is 90000 at batch 16)",
                             minimum=1)
    batch_size: int = setting(2, "images per iteration (on each GPU)", minimum=1)
    optimizer: str = setting("sgd", "sgd (momentum 0.9, weight decay 1e-4: MMDetection's) | adamw (weight decay "
                                    "0.05: fewer steps from random init, the CPU profile's)", choices=OPTIMIZERS)
    lr: float = setting(0.02, "learning rate at a total batch of lr_batch (MMDetection's SGD: 0.02 at 16)",
                        exclusive_minimum=0)
    lr_batch: int | None = setting(BASE_BATCH, "the total batch lr is for: the run's lr is lr x total batch / "
                                               "lr_batch, the total batch being batch_size x GPUs (MMEngine's "
                                               "auto_scale_lr); null = lr as given", minimum=1)
    clip_grad: float | None = setting(35.0, "gradient L2-norm clip (random init diverges without); null = off",
                                      exclusive_minimum=0)
    warmup_iters: int = setting(500, "linear warm-up from lr/1000 over these iterations (at most the run)",
                                minimum=0)
    lr_steps: tuple[float, ...] = setting([0.67, 0.92], "lr x 0.1 at these fractions of max_iters")
    scale: Any = setting([1333, 800], "longest image side (int), or [long, short] as MMDetection's (1333, 800)",
                         schema=SCALE_SCHEMA)
    scale_jitter: float = setting(0.0, "multi-scale training: each image resized to scale x a factor drawn from "
                                       "[1 - jitter, 1 + jitter]; 0 = the one scale", minimum=0, exclusive_maximum=1)
    flip: float = setting(0.5, "horizontal flip probability", minimum=0, maximum=1)
    workers: int = setting(0, "data loader processes (0: in the training process)", minimum=0)
    checkpoint_interval: int = setting(0, "save a resumable checkpoint every N iterations; 0 = after every epoch "
                                          "(1x, 2x) or at the end only (iters)", minimum=0)
    sync_bn: bool = setting(False, "with several processes, BatchNorm statistics over the whole batch (MMEngine's "
                                   "sync_bn \"torch\"; CUDA only); off: each process normalises its own images")
    amp: bool = setting(True, "mixed precision on CUDA (MMEngine's AmpOptimWrapper, dynamic loss scale); the CPU "
                              "trains in full precision")
    log_interval: int = setting(10, "iterations between log lines", minimum=1)
    seed: int = setting(0, "seed of weights and data order")
    max_per_img: int = setting(100, "most detections per image (the model's test config)", minimum=1)
    neck: str = setting("fpn", "fpn | pafpn (PANet's bottom-up path augmentation, the hybrid networks' "
                               "Enhanced-FPN)", choices=NECKS)
    recipe: str = setting("mask_rcnn", "workflow: mask_rcnn (this one model) | hybrid (hybrid networks: Mask R-CNN "
                                       "on the valid masks + Faster R-CNN and GrabCut for the invalid, small ones; "
                                       "stages hybrid_split, retrain_hybrid, predict_hybrid)", choices=RECIPES)
    rounds: int = setting(1, "workflow: rounds of iterative ground truth (Li et al.); round k >= 2 trains on round "
                             "k-1's detections on the training images (refine_round), under results/round<k>/; "
                             "wiring only, not a parameter of one training run", minimum=1)
    cpu: dict = cpu_profile(CPU_PROFILE)
    WIRING: ClassVar[tuple[str, ...]] = ("rounds", "recipe")  # keys left out of the rule's params (stage_settings)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, where: str | None = None) -> "RetrainSettings":
        return super().from_mapping(list_scale(values), where)

    def check(self) -> None:
        if self.init_checkpoint and not Path(self.init_checkpoint).is_file():
            raise RetrainError(f"{self.init_checkpoint}: init checkpoint not found (retrain.init_checkpoint); "
                               "nothing is downloaded, set it to a local file or \"\" for random init")
        scale_pair(self.scale)
        if self.recipe == "hybrid" and getattr(self, "rounds", 1) > 1:
            self.fail("recipe hybrid trains its two branches once; it has no rounds (set rounds: 1)")


def scale_pair(scale: Any) -> tuple[int, int]:
    """MMDetection's Resize scale (keep ratio) from an int (longest side) or a [long, short] pair."""
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale >= 32:
        return int(scale), int(scale)
    if isinstance(scale, (list, tuple)) and len(scale) == 2 and all(isinstance(v, (int, float)) for v in scale) \
            and min(scale) >= 32:
        return int(max(scale)), int(min(scale))
    raise RetrainError(f"retrain.scale must be an int >= 32 or a [long, short] pair, got {scale!r}")


def resolve_schedule(s: RetrainSettings, n_images: int) -> tuple[int, list[int], int]:
    """(max_iters, lr step iterations, warm-up iterations) of the settings for `n_images` training images."""
    if SCHEDULES[s.schedule] is None:
        max_iters = int(s.max_iters)
        steps = [int(round(f * max_iters)) for f in s.lr_steps]
        warmup = int(s.warmup_iters)
    else:
        epochs, at = SCHEDULES[s.schedule]
        per_epoch = max(1, math.ceil(n_images / int(s.batch_size)))
        max_iters, steps, warmup = epochs * per_epoch, [e * per_epoch for e in at], int(s.warmup_iters)
    steps = sorted({min(max(1, i), max_iters) for i in steps})
    return max_iters, steps, max(1, min(warmup, max_iters))


def scaled_lr(lr: float, total_batch: int, base_batch: int | None = BASE_BATCH) -> float:
    """The learning rate for `total_batch` images per step (all GPUs) of one given for `base_batch`: linear
    scaling, as MMEngine's auto_scale_lr; `base_batch` None: `lr` as given."""
    return float(lr) if not base_batch else float(lr) * int(total_batch) / int(base_batch)


def training_loop(s: RetrainSettings, n_images: int, validate: bool) -> dict[str, Any]:
    """The loop, sampler, lr schedule and checkpoint hook of the schedule: an epoch loop for 1x / 2x (lr steps
    and checkpoints by epoch, unless checkpoint_interval sets iterations), an iteration loop for iters."""
    max_iters, lr_steps, warmup = resolve_schedule(s, n_images)
    warm = dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=warmup)
    every = int(s.checkpoint_interval)
    if SCHEDULES[s.schedule] is None:
        return dict(
            by_epoch=False, sampler=dict(type="InfiniteSampler", shuffle=True),  # no epoch restarts
            train_cfg=dict(type="IterBasedTrainLoop", max_iters=max_iters,
                           val_interval=max_iters if validate else max_iters + 1),
            param_scheduler=[warm, dict(type="MultiStepLR", begin=0, end=max_iters, by_epoch=False,
                                        milestones=lr_steps, gamma=0.1)],
            checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=every or max_iters, max_keep_ckpts=2,
                            save_last=True))
    epochs, at = SCHEDULES[s.schedule]
    return dict(
        by_epoch=True, sampler=dict(type="DefaultSampler", shuffle=True),
        train_cfg=dict(type="EpochBasedTrainLoop", max_epochs=epochs, val_interval=epochs if validate else epochs + 1),
        param_scheduler=[warm, dict(type="MultiStepLR", begin=0, end=epochs, by_epoch=True, milestones=list(at),
                                    gamma=0.1)],
        checkpoint=dict(type="CheckpointHook", by_epoch=not every, interval=every or 1, max_keep_ckpts=2,
                        save_last=True))


def optim_wrapper(s: RetrainSettings, total_batch: int, device: str) -> dict[str, Any]:
    """The optimizer at the lr scaled to the total batch; MMEngine's AmpOptimWrapper (mixed precision) on CUDA
    with `amp`."""
    amp = bool(s.amp) and device == "cuda"
    lr = scaled_lr(s.lr, total_batch, s.lr_batch)
    optimizer = dict(type="AdamW", lr=lr, weight_decay=0.05) if s.optimizer == "adamw" else \
        dict(type="SGD", lr=lr, momentum=0.9, weight_decay=0.0001)
    out: dict[str, Any] = dict(type="AmpOptimWrapper" if amp else "OptimWrapper", optimizer=optimizer,
                               clip_grad=dict(max_norm=float(s.clip_grad), norm_type=2) if s.clip_grad else None)
    if amp:
        out["loss_scale"] = "dynamic"
    return out


def read_training_json(coco_json: str | os.PathLike) -> dict:
    """The training COCO JSON, checked for categories and annotations."""
    path = Path(coco_json)
    data = read_json(path, RetrainError, "training annotations")
    if not isinstance(data, dict) or not data.get("categories"):
        raise RetrainError(f"{path}: no 'categories' to train on")
    if not data.get("annotations"):
        raise RetrainError(f"{path}: no annotations to train on")
    for i, a in enumerate(data["annotations"]):
        if "image_id" not in a or "category_id" not in a or "bbox" not in a:
            raise RetrainError(f"{path}: annotations[{i}] lacks 'image_id', 'category_id' or 'bbox'")
    return data


def dataset_classes(data: Mapping[str, Any], source: str = "training annotations") -> tuple[list[str], list[int]]:
    """Category names and ids of a COCO dict in file order: label i of the model is category ids[i]."""
    names, ids = [], []
    for i, c in enumerate(data["categories"]):
        if "id" not in c or "name" not in c:
            raise RetrainError(f"{source}: categories[{i}] lacks 'id' or 'name'")
        if c["name"] in names:
            raise RetrainError(f"{source}: category name {c['name']!r} appears twice (MMDetection maps by name)")
        names.append(str(c["name"]))
        ids.append(int(c["id"]))
    return names, ids


def stage_channels(s: RetrainSettings) -> list[int]:
    """The channels of the backbone's four stages (the neck's inputs): width doubling per stage, x 4 for the
    bottleneck ResNets (50, 101)."""
    expansion = 4 if ARCHS[s.arch] >= 50 else 1
    return [int(s.width) * 2 ** i * expansion for i in range(4)]


def neck_config(kind: str = "fpn", in_channels: tuple[int, ...] = (256, 512, 1024, 2048), channels: int = 256) -> dict:
    """The neck: MMDetection's FPN, or PAFPN (FPN plus PANet's bottom-up path: N_i+1 = conv3x3(P_i+1 +
    conv3x3/2(N_i)), no activation, as MMDetection's; see docs/stages/retrain.md for what the paper's
    Enhanced-FPN adds)."""
    if kind not in NECKS:
        raise RetrainError(f"neck must be one of {', '.join(NECKS)}, got {kind!r}")
    return dict(type="PAFPN" if kind == "pafpn" else "FPN", in_channels=list(in_channels), out_channels=int(channels),
                num_outs=5)


def model_config(num_classes: int, s: RetrainSettings, init_kind: str | None) -> dict:
    """Mask R-CNN ResNet-FPN as in MMDetection's mask-rcnn_r50_fpn base, with the ignore-aware mask head."""
    pretrained_backbone = init_kind == "backbone"
    ch = int(s.channels)
    return dict(
        type="MaskRCNN",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                               bgr_to_rgb=True, pad_mask=True, pad_size_divisor=32),
        backbone=dict(type="ResNet", depth=ARCHS[s.arch], base_channels=int(s.width), num_stages=4,
                      out_indices=(0, 1, 2, 3),
                      frozen_stages=1 if pretrained_backbone else -1,
                      norm_cfg=dict(type="BN", requires_grad=True), norm_eval=pretrained_backbone, style="pytorch",
                      init_cfg=dict(type="Pretrained", checkpoint=str(Path(s.init_checkpoint).resolve()))
                      if pretrained_backbone else None),
        neck=neck_config(s.neck, stage_channels(s), ch),
        rpn_head=dict(
            type="RPNHead", in_channels=ch, feat_channels=ch,
            anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                                  strides=[4, 8, 16, 32, 64]),
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
        roi_head=dict(
            type="StandardRoIHead",
            bbox_roi_extractor=dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlign", output_size=7,
                                                                              sampling_ratio=0),
                                    out_channels=ch, featmap_strides=[4, 8, 16, 32]),
            bbox_head=dict(type="Shared2FCBBoxHead", in_channels=ch, fc_out_channels=4 * ch, roi_feat_size=7,
                           num_classes=num_classes,
                           bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                           target_stds=[0.1, 0.1, 0.2, 0.2]),
                           reg_class_agnostic=False,
                           loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                           loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
            mask_roi_extractor=dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlign", output_size=14,
                                                                              sampling_ratio=0),
                                    out_channels=ch, featmap_strides=[4, 8, 16, 32]),
            mask_head=dict(type="IgnoreAwareFCNMaskHead", num_convs=4, in_channels=ch, conv_out_channels=ch,
                           num_classes=num_classes,
                           loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                                   match_low_quality=True, ignore_iof_thr=-1),
                     sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1,
                                  add_gt_as_proposals=False),
                     allowed_border=-1, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=2000, max_per_img=int(s.proposals), nms=dict(type="nms", iou_threshold=0.7),
                              min_bbox_size=0),
            rcnn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                                    match_low_quality=True, ignore_iof_thr=-1),
                      sampler=dict(type="RandomSampler", num=int(s.rois), pos_fraction=0.25, neg_pos_ub=-1,
                                   add_gt_as_proposals=True),
                      mask_size=28, pos_weight=-1, debug=False)),
        test_cfg=dict(
            rpn=dict(nms_pre=1000, max_per_img=int(s.proposals), nms=dict(type="nms", iou_threshold=0.7),
                     min_bbox_size=0),
            rcnn=dict(score_thr=TEST_SCORE_THR, nms=dict(type="nms", iou_threshold=0.5),
                      max_per_img=int(s.max_per_img), mask_thr_binary=0.5)),
    )


def train_resize(s: RetrainSettings) -> dict:
    """The training pipeline's resize: to `scale`, or with `scale_jitter` to scale x a random factor."""
    scale = scale_pair(s.scale)
    if not s.scale_jitter:
        return dict(type="Resize", scale=scale, keep_ratio=True)
    return dict(type="RandomResize", scale=scale, ratio_range=(1 - float(s.scale_jitter), 1 + float(s.scale_jitter)),
                keep_ratio=True)


def pipelines(s: RetrainSettings) -> tuple[list, list]:
    scale = scale_pair(s.scale)
    train = [dict(type="LoadAnnotatedImage"),
             dict(type="LoadPseudoAnnotations", with_bbox=True, with_mask=True),
             train_resize(s),
             dict(type="RandomFlip", prob=float(s.flip)),
             dict(type="PackPseudoDetInputs")]
    test = [dict(type="LoadAnnotatedImage"),
            dict(type="Resize", scale=scale, keep_ratio=True),
            dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"))]
    return train, test


def build_config(train_json: str | os.PathLike, images: str | os.PathLike, work_dir: str | os.PathLike,
                 settings: RetrainSettings | None = None, val_json: str | os.PathLike | None = None,
                 val_images: str | os.PathLike | None = None, device: str | None = None, world: int = 1) -> dict:
    """The whole MMDetection config (a dict) of one training run on `device` (default: the one MMEngine's
    Runner picks, CUDA when available; it decides mixed precision) by `world` processes of batch_size images
    each (the learning rate is scaled to the total batch)."""
    s = settings or RetrainSettings()
    device = str(device or pick_device("auto")).split(":")[0]
    s.check()
    images = Path(images)
    if not images.is_dir():
        raise RetrainError(f"{images}: image folder not found")
    data = read_training_json(train_json)
    names, ids = dataset_classes(data, str(train_json))
    n_images = len({a["image_id"] for a in data["annotations"]})
    del data
    init_kind = checkpoint_kind(s.init_checkpoint) if s.init_checkpoint else None
    train_pipeline, test_pipeline = pipelines(s)
    classes = tuple(names)
    loop = training_loop(s, n_images, bool(val_json))
    cfg: dict[str, Any] = dict(
        default_scope="mmdet",
        custom_imports=dict(imports=[CUSTOM_MODULE], allow_failed_imports=False),
        pseudomask=dict(category_ids=ids, train_annotations=str(Path(train_json).resolve()),
                        train_sha256=file_digest(train_json),
                        settings=_plain({k: v for k, v in s.to_dict().items() if k not in s.WIRING})),
        work_dir=str(Path(work_dir).resolve()),
        model=model_config(len(names), s, init_kind),
        train_pipeline=train_pipeline,
        test_pipeline=test_pipeline,
        train_dataloader=dict(
            batch_size=int(s.batch_size), num_workers=int(s.workers), persistent_workers=int(s.workers) > 0,
            sampler=loop["sampler"],
            batch_sampler=dict(type="AspectRatioBatchSampler"),
            dataset=dict(type="PseudoCocoDataset", data_root="", ann_file=str(Path(train_json).resolve()),
                         data_prefix=dict(img=str(images.resolve()) + os.sep), metainfo=dict(classes=classes),
                         filter_cfg=dict(filter_empty_gt=True, min_size=0), pipeline=train_pipeline)),
        train_cfg=loop["train_cfg"],
        optim_wrapper=optim_wrapper(s, int(s.batch_size) * int(world), device),
        param_scheduler=loop["param_scheduler"],
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=int(s.log_interval)),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=loop["checkpoint"],
            sampler_seed=dict(type="DistSamplerSeedHook")),
        env_cfg=dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend="nccl")),
        visualizer=dict(type="DetLocalVisualizer", vis_backends=[dict(type="LocalVisBackend")], name="visualizer"),
        log_processor=dict(type="LogProcessor", window_size=max(1, min(50, int(s.log_interval))),
                           by_epoch=loop["by_epoch"]),
        log_level="INFO",
        randomness=dict(seed=int(s.seed)),
        load_from=str(Path(s.init_checkpoint).resolve()) if init_kind == "detector" else None,
        resume=False,
        auto_scale_lr=dict(enable=False, base_batch_size=int(s.lr_batch or BASE_BATCH)),  # lr already scaled
    )
    if s.sync_bn and world > 1:
        cfg["sync_bn"] = "torch"  # the Runner converts the model's BatchNorm layers
    if val_json:
        if not val_images:
            raise RetrainError(f"{val_json}: validation annotations need --val-images")
        val_ds = dict(type="CocoDataset", data_root="", ann_file=str(Path(val_json).resolve()),
                      data_prefix=dict(img=str(Path(val_images).resolve()) + os.sep), metainfo=dict(classes=classes),
                      test_mode=True, pipeline=test_pipeline)
        loader = dict(batch_size=1, num_workers=int(s.workers), persistent_workers=int(s.workers) > 0,
                      drop_last=False, sampler=dict(type="DefaultSampler", shuffle=False), dataset=val_ds)
        evaluator = dict(type="CocoMetric", ann_file=str(Path(val_json).resolve()), metric=["bbox", "segm"],
                         format_only=False)
        cfg.update(val_dataloader=loader, val_evaluator=evaluator, val_cfg=dict(type="ValLoop"),
                   test_dataloader=loader, test_evaluator=evaluator, test_cfg=dict(type="TestLoop"))
    return cfg


def without_masks(model: dict) -> dict:
    """Faster R-CNN from a Mask R-CNN model dict: the same backbone, neck, RPN and box head, no mask branch."""
    out = {**model, "type": "FasterRCNN",
           "data_preprocessor": {**model["data_preprocessor"], "pad_mask": False},
           "roi_head": {k: v for k, v in model["roi_head"].items() if k not in ("mask_roi_extractor", "mask_head")}}
    out["train_cfg"] = {**model["train_cfg"],
                        "rcnn": {k: v for k, v in model["train_cfg"]["rcnn"].items() if k != "mask_size"}}
    out["test_cfg"] = {**model["test_cfg"],
                       "rcnn": {k: v for k, v in model["test_cfg"]["rcnn"].items() if k != "mask_thr_binary"}}
    return out


def build_faster_rcnn_config(train_json: str | os.PathLike, images: str | os.PathLike, work_dir: str | os.PathLike,
                             settings: RetrainSettings | None = None, val_json: str | os.PathLike | None = None,
                             val_images: str | os.PathLike | None = None, device: str | None = None,
                             world: int = 1) -> dict:
    """The MMDetection config of a Faster R-CNN run (boxes only; the hybrid recipe's small-object branch):
    `build_config`'s run with the mask head, the mask loading and the mask metric taken out."""
    cfg = build_config(train_json, images, work_dir, settings, val_json=val_json, val_images=val_images,
                       device=device, world=world)
    cfg["model"] = without_masks(cfg["model"])
    s = settings or RetrainSettings()
    cfg["train_pipeline"] = [dict(type="LoadAnnotatedImage"), dict(type="LoadAnnotations", with_bbox=True),
                             train_resize(s), dict(type="RandomFlip", prob=float(s.flip)), dict(type="PackDetInputs")]
    cfg["train_dataloader"]["dataset"]["pipeline"] = cfg["train_pipeline"]
    if "val_evaluator" in cfg:
        cfg["val_evaluator"] = cfg["test_evaluator"] = {**cfg["val_evaluator"], "metric": ["bbox"]}
    return cfg


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def config_text(cfg: Mapping[str, Any]) -> str:
    """The config as a Python file MMDetection's Config.fromfile reads (one assignment per key)."""
    s = cfg.get("pseudomask", {}).get("settings", {})
    model = {"MaskRCNN": "Mask R-CNN", "FasterRCNN": "Faster R-CNN"}.get(cfg.get("model", {}).get("type"), "Mask R-CNN")
    neck = cfg.get("model", {}).get("neck", {}).get("type", "FPN")
    lines = [f"# MMDetection {model} {s.get('arch', '')}-{neck} config, generated by pseudomask {__version__}.",
             "# Training pseudo masks flagged `mask_ignore` are left out of the mask loss only (IgnoreAwareFCNMaskHead).",
             "# Rerun: pseudomask retrain ... or MMDetection's tools/train.py with this file.", ""]
    for key, value in cfg.items():
        lines.append(f"{key} = {pprint.pformat(value, width=110, sort_dicts=False)}")
    return "\n".join(lines) + "\n"


def write_config(cfg: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write the config file atomically."""
    return write_text_atomic(config_text(cfg), path)
