"""Feature backbones by name: MMDetection's ResNet and HRNet (HRNetV2-W48 as in BoxCaseg), or timm models
where timm imports; weights from a local checkpoint file, otherwise random initialisation (never downloaded).

`build_backbone(name)` returns a `Backbone`: `forward(x)` gives a list of feature maps from high to low
resolution, with `out_channels` and `strides` describing them.

Names: resnet18, resnet34, resnet50 (torchvision-compatible parameter names), resnet18_w16 (ResNet-18 at a
quarter of the width, for CPU tests), hrnetv2_w48 (paper default), hrnetv2_w18, hrnetv2_w18_small, and
timm:<model name>.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .errors import PseudomaskError


class BackboneError(PseudomaskError, ValueError):
    """An unknown backbone name, a missing library, or a checkpoint that does not fit the architecture."""


def _hrnet_extra(width: int, small: bool = False) -> dict:
    """MMDetection HRNet stages: HRNetV2 (modules 1/1/4/3, four blocks per branch) or its small variant
    (HRNet-W18-small v1 schedule: one module per stage, two blocks per branch); branch k has width x 2^k."""
    modules, blocks = ((1, 1, 1, 1), 2) if small else ((1, 1, 4, 3), 4)
    extra = {"stage1": dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(1 if small else 4,),
                            num_channels=(32 if small else 64,))}
    for n in (2, 3, 4):
        extra[f"stage{n}"] = dict(num_modules=modules[n - 1], num_branches=n, block="BASIC", num_blocks=(blocks,) * n,
                                  num_channels=tuple(width * 2 ** k for k in range(n)))
    return extra


# name -> (kind, constructor kwargs, channels of the 4 levels); strides are 4, 8, 16, 32 for all of them
_SPECS: dict[str, tuple[str, dict, list[int]]] = {
    "resnet18": ("resnet", dict(depth=18), [64, 128, 256, 512]),
    "resnet34": ("resnet", dict(depth=34), [64, 128, 256, 512]),
    "resnet50": ("resnet", dict(depth=50), [256, 512, 1024, 2048]),
    "resnet18_w16": ("resnet", dict(depth=18, base_channels=16, stem_channels=16), [16, 32, 64, 128]),
    "hrnetv2_w48": ("hrnet", dict(extra=_hrnet_extra(48)), [48, 96, 192, 384]),
    "hrnetv2_w18": ("hrnet", dict(extra=_hrnet_extra(18)), [18, 36, 72, 144]),
    "hrnetv2_w18_small": ("hrnet", dict(extra=_hrnet_extra(18, small=True)), [18, 36, 72, 144]),
}
_STRIDES = [4, 8, 16, 32]


def available_backbones() -> list[str]:
    """Names `build_backbone` accepts (plus any `timm:<name>` when timm imports)."""
    return sorted(_SPECS)


class Backbone(nn.Module):
    """A feature extractor returning the selected levels, high to low resolution."""

    def __init__(self, name: str, body: nn.Module, out_indices: Sequence[int], channels: Sequence[int],
                 strides: Sequence[int], timm_model: bool = False):
        super().__init__()
        self.name = name
        self.body = body
        self.out_indices = list(out_indices)
        self.out_channels = [int(channels[i]) for i in self.out_indices]
        self.strides = [int(strides[i]) for i in self.out_indices]
        self._timm = timm_model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(x)
        if self._timm:  # timm already returns only the requested levels
            return list(feats)
        return [feats[i] for i in self.out_indices]


def _import_mmdet_backbones():
    try:
        from mmdet.models.backbones import HRNet, ResNet  # lazy: MMDetection is optional
    except Exception as e:  # ImportError, or mmcv ops missing
        raise BackboneError(f"backbone needs MMDetection (mmdet 3.x with mmcv): {e}") from e
    return ResNet, HRNet


def _build_mmdet(kind: str, kwargs: dict) -> nn.Module:
    ResNet, HRNet = _import_mmdet_backbones()
    if kind == "resnet":
        # norm_eval=False: batch-norm statistics train with the model (random init needs them)
        body = ResNet(out_indices=(0, 1, 2, 3), norm_eval=False, zero_init_residual=False, **kwargs)
    else:
        body = HRNet(norm_eval=False, **kwargs)
    _init_weights(body)
    return body


def _init_weights(body: nn.Module) -> None:
    """MMDetection's default init for these backbones (Kaiming fan-out for convolutions, unit norms), done here
    rather than by `init_weights()`, which logs every parameter."""
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _build_timm(model_name: str, out_indices: Sequence[int] | None) -> Backbone:
    try:
        import timm  # lazy: timm is optional
    except Exception as e:
        raise BackboneError(f"backbone 'timm:{model_name}' needs timm, which does not import here: {e}") from e
    kw = {"features_only": True, "pretrained": False}
    if out_indices is not None:
        kw["out_indices"] = tuple(out_indices)
    try:
        body = timm.create_model(model_name, **kw)
    except Exception as e:
        raise BackboneError(f"timm cannot build '{model_name}' with features_only: {e}") from e
    ch, red = body.feature_info.channels(), body.feature_info.reduction()
    return Backbone(f"timm:{model_name}", body, range(len(ch)), ch, red, timm_model=True)


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BackboneError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    for key in ("state_dict", "model", "backbone"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError(f"{path}: expected a state_dict (name -> tensor)")
    # accept the usual prefixes of full-model checkpoints
    for prefix in ("module.", "backbone.", "body."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_backbone_weights(backbone: Backbone, checkpoint: str | os.PathLike) -> None:
    """Load a state_dict file into the backbone's body; every parameter must be present with its shape.

    Extra keys (a classifier, a neck) are ignored; a missing or mis-shaped parameter means the file is for
    another architecture and raises BackboneError naming the file and the first offending keys."""
    path = Path(checkpoint)
    if not path.is_file():
        raise BackboneError(f"backbone checkpoint not found: {path}")
    sd = _state_dict_from_file(path)
    own = backbone.body.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    shape = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if k in sd and sd[k].shape != v.shape]
    if missing or shape:
        detail = "; ".join(filter(None, [
            f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
            f"{len(shape)} of other shape (e.g. {', '.join(shape[:3])})" if shape else ""]))
        raise BackboneError(f"{path}: checkpoint does not fit backbone '{backbone.name}': {detail}")
    backbone.body.load_state_dict({k: sd[k] for k in own if k in sd}, strict=False)


def build_backbone(name: str, checkpoint: str | os.PathLike | None = None,
                   out_indices: Sequence[int] | None = None) -> Backbone:
    """The named backbone with levels `out_indices` (default all four; strides 4, 8, 16, 32).

    `checkpoint`: a local state_dict file for the backbone (e.g. ImageNet weights); None = random init."""
    if name.startswith("timm:"):
        bb = _build_timm(name[5:], out_indices)
    else:
        if name not in _SPECS:
            raise BackboneError(f"unknown backbone '{name}'; choose one of {', '.join(available_backbones())} "
                                f"or timm:<name>")
        kind, kwargs, channels = _SPECS[name]
        idx = list(range(4)) if out_indices is None else list(out_indices)
        if not idx or any(i not in range(4) for i in idx):
            raise BackboneError(f"backbone '{name}': out_indices must be within 0..3, got {idx}")
        bb = Backbone(name, _build_mmdet(kind, kwargs), idx, channels, _STRIDES)
    if checkpoint:
        load_backbone_weights(bb, checkpoint)
    return bb
