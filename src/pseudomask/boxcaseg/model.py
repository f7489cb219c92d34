"""The BoxCaseg network: a backbone, its levels fused at the highest resolution (HRNetV2 representation), and
three heads of one architecture (weak, salient, transferred). The transferred head has no convolution weights
of its own: a weight-transfer MLP (two layers, leaky ReLU, as in Mask^X R-CNN) maps the *detached* weights of
the weak head to them, so the pixel loss trains the MLP but never the weak head through this path.

An IoU head (Bellver et al., "mask-guided sample selection", Sec. 5) predicts the quality of the fused mask:
each backbone level (several resolutions) and the fused map's hidden features are globally average-pooled,
concatenated and mapped by one fully connected layer and a sigmoid to the squared IoU of the thresholded fused
mask with the true mask. Its input features are detached, so its loss trains the head only and leaves the
segmentation as it is (the paper freezes the segmentation network while the IoU branch trains).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .. import checkpoints
from ..backbones import Backbone, BackboneError, build_backbone
from ..errors import PseudomaskError
from .losses import fused_probability
from .settings import HEADS

# ImageNet statistics; inputs are RGB in [0, 1]
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class BoxCasegError(PseudomaskError, ValueError):
    """A BoxCaseg checkpoint that is missing, not a BoxCaseg model, or of another architecture."""


class SegHead(nn.Module):
    """HRNet's segmentation head: 1x1 conv (C->C), BN, ReLU, 1x1 conv (C->1) giving foreground logits."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn(self.conv1(x))))


class WeightTransfer(nn.Module):
    """Maps each output filter of a convolution (in*k*k values) through Linear-LeakyReLU-Linear to a new filter;
    the bias becomes k * bias + b with learnt scalars k, b."""

    def __init__(self, conv: nn.Conv2d, hidden_ratio: int = 4, negative_slope: float = 0.1):
        super().__init__()
        self.shape = tuple(conv.weight.shape)
        self.padding = conv.padding
        n = self.shape[1] * self.shape[2] * self.shape[3]
        self.fc1 = nn.Linear(n, n * hidden_ratio)
        self.fc2 = nn.Linear(n * hidden_ratio, n)
        self.negative_slope = negative_slope
        self.k = nn.Parameter(torch.ones(1))
        self.b = nn.Parameter(torch.zeros(1))
        for lin in (self.fc1, self.fc2):
            nn.init.normal_(lin.weight, std=0.01)
            nn.init.normal_(lin.bias, std=0.01)

    def forward(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.leaky_relu(self.fc1(weight.reshape(self.shape[0], -1)), self.negative_slope)
        return self.fc2(h).reshape(self.shape), self.k * bias + self.b


class TransferredHead(nn.Module):
    """Same layout as SegHead; both convolutions' weights come from the weak head via WeightTransfer."""

    def __init__(self, weak: SegHead):
        super().__init__()
        self.transfer1 = WeightTransfer(weak.conv1)
        self.bn = nn.BatchNorm2d(weak.conv1.out_channels)
        self.transfer2 = WeightTransfer(weak.conv2)

    def forward(self, x: torch.Tensor, weak: SegHead) -> torch.Tensor:
        w1, b1 = self.transfer1(weak.conv1.weight.detach(), weak.conv1.bias.detach())
        x = F.relu(self.bn(F.conv2d(x, w1, b1, padding=self.transfer1.padding)))
        w2, b2 = self.transfer2(weak.conv2.weight.detach(), weak.conv2.bias.detach())
        return F.conv2d(x, w2, b2, padding=self.transfer2.padding)


class IoUHead(nn.Module):
    """Global average pooling of each feature map, concatenated, one fully connected layer, sigmoid: (N,)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Linear(channels, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        pooled = torch.cat([m.detach().mean(dim=(2, 3)) for m in maps], 1)
        return torch.sigmoid(self.fc(pooled))[:, 0]


IOU_PREDICTOR = "boxcaseg-iou-head"


class BoxCasegNet(nn.Module):
    """Backbone + fused features + weak / salient / transferred heads.

    forward(x, salient) with x RGB in [0, 1] (N, 3, H, W) returns logits at input resolution:
    {"weak": (N,1,H,W)} and, for the images selected by the boolean `salient` (all when None),
    {"salient": ..., "transferred": ...}, and with "iou" in `heads` also {"iou": (n,)}, the IoU head's
    predicted squared IoU of the fused mask, for the same images. `predict(x)` gives the fused probability
    sigmoid(alpha*S_a + (1-alpha)*S_t) of the two heads' logits S_a, S_t; `predict_quality(x)` that and the
    IoU head's predicted IoU (the square root of its output)."""

    def __init__(self, backbone: Backbone, alpha: float = 0.7):
        super().__init__()
        self.backbone = backbone
        self.alpha = float(alpha)
        channels = int(sum(backbone.out_channels))
        self.channels = channels
        self.weak_head = SegHead(channels)
        self.salient_head = SegHead(channels)
        self.transferred_head = TransferredHead(self.weak_head)
        self.iou_head = IoUHead(2 * channels)
        self.iou_head_trained = True
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone levels, finest first."""
        return list(self.backbone((x - self.mean) / self.std))

    @staticmethod
    def fuse(feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        return torch.cat([feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                                       for f in feats[1:]], 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """All backbone levels upsampled to the finest one and concatenated."""
        return self.fuse(self.levels(x))

    def forward(self, x: torch.Tensor, salient: torch.Tensor | None = None,
                heads: tuple[str, ...] = ("weak", "salient", "transferred")) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        feats = self.levels(x)
        f = self.fuse(feats)
        up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        out = {}
        if "weak" in heads:
            out["weak"] = up(self.weak_head(f))
        fs = f if salient is None else f[salient]
        if fs.shape[0]:
            if "salient" in heads:
                out["salient"] = up(self.salient_head(fs))
            if "transferred" in heads:
                out["transferred"] = up(self.transferred_head(fs, self.weak_head))
            if "iou" in heads:
                levels = feats if salient is None else [t[salient] for t in feats]
                bn = self.salient_head.bn  # the salient head's BN statistics must not see this second pass
                hidden = F.relu(F.batch_norm(self.salient_head.conv1(fs), bn.running_mean, bn.running_var,
                                             bn.weight, bn.bias, False, 0.0, bn.eps)
                                if not self.training else
                                F.batch_norm(self.salient_head.conv1(fs), None, None, bn.weight, bn.bias, True,
                                             0.0, bn.eps))
                out["iou"] = self.iou_head(levels + [hidden])
        return out

    @torch.no_grad()
    def predict(self, x: torch.Tensor, head: str = "fused") -> torch.Tensor:
        """Foreground probability (N, H, W). "fused" (the paper's inference): sigmoid(alpha*S_a + (1-alpha)*S_t)
        of the two heads' logits; "weak", "salient" or "transferred": one head alone (the paper's Table 4
        ablation)."""
        if head not in HEADS:
            raise BoxCasegError(f"unknown BoxCaseg head {head!r}; choose one of {', '.join(HEADS)}")
        if head != "fused":
            return torch.sigmoid(self.forward(x, heads=(head,))[head])[:, 0]
        out = self.forward(x, heads=("salient", "transferred"))
        return fused_probability(out["salient"], out["transferred"], self.alpha)[:, 0]

    @torch.no_grad()
    def predict_quality(self, x: torch.Tensor, head: str = "fused") -> tuple[torch.Tensor, torch.Tensor]:
        """(foreground probability (N, H, W) as `predict`, predicted IoU (N,) of the fused mask: the square
        root of the IoU head's squared-IoU output)."""
        if head not in HEADS:
            raise BoxCasegError(f"unknown BoxCaseg head {head!r}; choose one of {', '.join(HEADS)}")
        heads = ("salient", "transferred", "iou") + (() if head == "fused" else (head,))
        out = self.forward(x, heads=heads)
        prob = (fused_probability(out["salient"], out["transferred"], self.alpha) if head == "fused"
                else torch.sigmoid(out[head]))[:, 0]
        return prob, out["iou"].clamp(0, 1).sqrt()


def build_model(backbone: str, backbone_checkpoint: str | os.PathLike | None = None, alpha: float = 0.7,
                out_indices: tuple[int, ...] | None = None) -> BoxCasegNet:
    """A BoxCaseg network on a named backbone (see pseudomask.backbones), random heads."""
    return BoxCasegNet(build_backbone(backbone, checkpoint=backbone_checkpoint, out_indices=out_indices),
                       alpha=alpha)


def architecture(model: BoxCasegNet) -> dict[str, Any]:
    """What it takes to rebuild the network (stored in every checkpoint)."""
    return {"backbone": model.backbone.name, "out_indices": list(model.backbone.out_indices),
            "alpha": model.alpha, "channels": model.channels}


STAGE = "boxcaseg_train"


def save_checkpoint(path: str | os.PathLike, model: BoxCasegNet, settings: Mapping[str, Any] | None = None,
                    **extra: Any) -> Path:
    """Write the model in the project's checkpoint format (see pseudomask.checkpoints), with its architecture."""
    extra.setdefault("iou_head_trained", bool(model.iou_head_trained))
    return checkpoints.save(path, stage=STAGE, settings=settings or {}, state=model.state_dict(),
                            arch=architecture(model), **extra)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict; BoxCasegError when the file is missing or is not a BoxCaseg checkpoint."""
    return checkpoints.load(path, STAGE, what="BoxCaseg", error=BoxCasegError)


def load_state(model: BoxCasegNet, state: Mapping[str, torch.Tensor], source: str | os.PathLike,
               allow_missing_iou_head: bool = False) -> None:
    """load_state_dict that names the file and the offending parameters when the architecture differs.

    `allow_missing_iou_head`: a state without the IoU head (a model trained before it existed) loads with
    the head left randomly initialised and `model.iou_head_trained` False."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if allow_missing_iou_head and missing and all(k.startswith("iou_head.") for k in missing):
        print(f"{source}: checkpoint has no IoU head; it stays untrained and predicts no quality",
              file=sys.stderr)
        model.load_state_dict(state, strict=False)
        model.iou_head_trained = False
        return
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shape:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
                 f"{len(shape)} of other shape (e.g. {', '.join(shape[:3])})" if shape else ""]
        raise BoxCasegError(f"{source}: checkpoint does not fit this BoxCaseg architecture "
                            f"({model.backbone.name}): {'; '.join(p for p in parts if p)}")
    model.load_state_dict(state)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               expect_backbone: str | None = None) -> BoxCasegNet:
    """Rebuild the network a checkpoint describes and load its weights (eval mode)."""
    ckpt = read_checkpoint(path)
    arch = ckpt.get("arch") or {}
    if expect_backbone and arch.get("backbone") != expect_backbone:
        raise BoxCasegError(f"{path}: checkpoint is for backbone {arch.get('backbone')!r}, "
                            f"expected {expect_backbone!r}")
    try:
        model = build_model(arch["backbone"], alpha=float(arch.get("alpha", 0.7)),
                            out_indices=tuple(arch["out_indices"]) if arch.get("out_indices") else None)
    except (KeyError, BackboneError) as e:
        raise BoxCasegError(f"{path}: cannot rebuild the architecture it describes ({e})") from e
    load_state(model, ckpt["state"], path, allow_missing_iou_head=True)
    model.train_config = dict(ckpt.get("settings") or {})
    if not ckpt.get("iou_head_trained", False):
        model.iou_head_trained = False
    return model.to(device).eval()
