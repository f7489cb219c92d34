"""The tag classifier of PRM/WISE: a backbone, a 1x1 convolution to class response maps (CAMs), and the peak
stimulation layer that turns each map into a class score (mean of its peaks); trained with the multi-label
soft-margin loss.

Backbones come from `pseudomask.backbones.build_backbone` (MMDetection ResNet-50 by default on a GPU, ResNet-18
on CPU), plus "tiny", a small plain CNN defined here for tests and quick CPU runs that needs neither MMDetection
nor pretrained weights. timm, which PRM/WISE use, cannot be installed here (it imports torchvision, which has no
CPU build in this environment).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import checkpoints
from ..backbones import build_backbone
from ..errors import PseudomaskError
from .peaks import peak_stimulation

STAGE = "cam_train"
MEAN = (123.675, 116.28, 103.53)  # ImageNet RGB, as MMDetection's ResNets expect
STD = (58.395, 57.12, 57.375)


class CamError(PseudomaskError, ValueError):
    """A checkpoint or setting the CAM stage cannot use; the message names the file or the value."""


def prepare(rgb: np.ndarray, size: int) -> np.ndarray:
    """(3, size, size) float32 RGB in 0..255: the image squashed to the network's input size."""
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1).astype(np.float32)


class TinyBackbone(nn.Module):
    """Four stride-2 stages of 3x3 conv/BN/ReLU (strides 4, 8, 16, 32); feature maps at strides 8, 16, 32.

    Convolutions pad by reflection: with zero padding a randomly initialised network learns to tell the
    image border apart, and the class maps of a briefly trained one peak there instead of on objects.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [width, width * 2, width * 4, width * 8]

        def conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False, padding_mode="reflect"), nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True)]

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(*conv(cin, cout, 2), *conv(cout, cout, 1))

        self.stem = nn.Sequential(*conv(3, width, 2))
        self.stages = nn.ModuleList([stage(chans[0], chans[0]), stage(chans[0], chans[1]), stage(chans[1], chans[2]),
                                     stage(chans[2], chans[3])])
        self.out_channels = chans[1:]
        self.strides = [8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for s in self.stages:
            x = s(x)
            outs.append(x)
        return outs[1:]


def resolve_backbone_name(name: str, device: torch.device | str) -> str:
    """'auto' -> resnet50 on a GPU, resnet18 on CPU; other names unchanged."""
    if name != "auto":
        return name
    return "resnet50" if torch.device(device).type == "cuda" else "resnet18"


def build_features(name: str, checkpoint: str | None = None) -> nn.Module:
    """A backbone returning a list of feature maps, with `.out_channels` and `.strides`."""
    if name == "tiny":
        if checkpoint:
            raise CamError("backbone 'tiny' has no pretrained weights; leave the backbone checkpoint empty")
        return TinyBackbone()
    return build_backbone(name, checkpoint=checkpoint)


class PeakClassifier(nn.Module):
    """Backbone + 1x1 conv to C class response maps + peak stimulation.

    `levels` picks backbone outputs (default: the last, as PRM); several are upsampled to the finest and
    concatenated, which gives the maps a finer stride for small objects.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, window: int = 3, levels: Sequence[int] = (-1,)):
        super().__init__()
        self.backbone = backbone
        self.window = int(window)
        n = len(backbone.out_channels)
        self.levels = sorted({int(lv) % n for lv in levels})
        self.stride = min(backbone.strides[lv] for lv in self.levels)
        self.head = nn.Conv2d(sum(backbone.out_channels[lv] for lv in self.levels), num_classes, 1)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, K, h, w) features of RGB images given as float (N, 3, H, W) in 0..255."""
        feats = self.backbone((images - self.mean) / self.std)
        sel = [feats[lv] for lv in self.levels]
        size = sel[0].shape[-2:]
        return torch.cat([sel[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                                     for f in sel[1:]], 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(images)
        cams = self.head(feats)
        scores, peaks = peak_stimulation(cams, self.window)
        return {"features": feats, "cams": cams, "scores": scores, "peaks": peaks}


def loss_fn(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss on the peak-aggregated class scores."""
    return F.multilabel_soft_margin_loss(scores, targets)


def build_classifier(config: dict[str, Any], backbone_checkpoint: str | None = None) -> PeakClassifier:
    """Classifier from the `config` stored in a checkpoint (backbone, class_ids, window, levels)."""
    return PeakClassifier(build_features(config["backbone"], backbone_checkpoint), len(config["class_ids"]),
                          config["window"], config["levels"])


def save_checkpoint(path: str | os.PathLike, model: PeakClassifier, config: Mapping[str, Any],
                    settings: Mapping[str, Any], **extra: Any) -> Path:
    """Write the classifier and its `config` in the project's checkpoint format (see pseudomask.checkpoints)."""
    return checkpoints.save(path, stage=STAGE, settings=settings, state=model.state_dict(), config=dict(config),
                            **extra)


def read_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The checkpoint dict; CamError naming the file when it is missing or not a CAM checkpoint."""
    return checkpoints.load(path, STAGE, what="CAM", error=CamError, device=device)


def load_classifier(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[PeakClassifier, dict]:
    """The trained classifier of a checkpoint (eval mode, on `device`) and the checkpoint's config."""
    ck = read_checkpoint(path, device)
    model = build_classifier(ck["config"])
    model.load_state_dict(ck["state"])
    return model.to(device).eval(), ck["config"]
