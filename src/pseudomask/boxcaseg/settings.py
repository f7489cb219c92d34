"""Settings of BoxCaseg training and inference (config sections `boxcaseg_train:` and `boxcaseg:`).

The defaults are the paper's (HRNetV2-W48, 288 crops, batch 16 at 9:7, alpha 0.7, SGD); `cpu` is the short
profile that replaces some of them when the device is the CPU, for the CLI and the workflow alike.
Torch-free, so that the CLI and the config checks load without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..settings import Settings, cpu_profile, device_setting, setting

HEADS = ("fused", "weak", "salient", "transferred")
OPTIMIZERS = ("sgd", "adam")
PAIR = {"minItems": 2, "maxItems": 2}
CPU_PROFILE = {"backbone": "resnet18_w16", "iters": 400, "batch_size": 8, "crop_size": 64, "salient_resize": 72,
               "optimizer": "adam", "lr": 0.003, "checkpoint_every": 100, "workers": 0}


@dataclass(frozen=True)
class BoxcasegTrainSettings(Settings):
    SECTION = "boxcaseg_train"
    backbone: str = setting("hrnetv2_w48", "hrnetv2_w48 (paper), hrnetv2_w18, hrnetv2_w18_small, resnet18/34/50, "
                                           "resnet18_w16, or timm:<name>")
    backbone_checkpoint: str = setting("", "local backbone weights (state_dict), e.g. ImageNet; \"\" = random "
                                           "initialisation")
    iters: int = setting(20000, "training iterations", minimum=1)
    batch_size: int = setting(16, "images per batch (box crops + salient crops)", minimum=2)
    ratio: tuple[float, ...] = setting([9, 7], "box : salient images per batch (r_ws)", schema=PAIR)
    crop_size: int = setting(288, "box crops and salient crops are trained at crop_size x crop_size", minimum=16)
    salient_resize: int = setting(320, "salient images are resized to this, then randomly cropped", minimum=16)
    jitter_shift: float = setting(0.25, "box jitter: centre shift, fraction of w/h", minimum=0)
    jitter_scale: tuple[float, ...] = setting([0.5, 1.5], "box jitter: side scale range", schema=PAIR)
    alpha: float = setting(0.7, "fused map alpha * salient + (1 - alpha) * transferred", minimum=0, maximum=1)
    smooth_weight: float = setting(0.05, "weight of the 8-neighbour smoothness term", minimum=0)
    iou_start: float = setting(0.5, "fraction of the iterations after which the IoU head (predicted squared IoU "
                                    "of the fused mask, L1 loss on the salient crops) trains; 1 = never",
                               minimum=0, maximum=1)
    iou_weight: float = setting(1.0, "weight of the IoU head's L1 loss", minimum=0)
    optimizer: str = setting("sgd", "sgd (momentum, weight decay, poly decay: the paper) | adam (AdamW, decoupled "
                                    "weight decay)", choices=OPTIMIZERS)
    lr: float = setting(0.004, "learning rate (poly decay)", exclusive_minimum=0)
    momentum: float = setting(0.9, "SGD momentum", minimum=0)
    weight_decay: float = setting(0.0001, "weight decay", minimum=0)
    poly_power: float = setting(0.9, "power of the poly learning-rate decay", minimum=0)
    checkpoint_every: int = setting(500, "iterations between resume states (<model>.resume.pt, kept after the run)",
                                    minimum=1)
    workers: int = setting(4, "data-loading processes", minimum=0)
    log_every: int = setting(10, "iterations between loss lines in the log", minimum=1)
    seed: int = setting(0, "seed of weights, sampling and jitter")
    amp: bool = setting(True, "mixed precision (float16 autocast, loss scaling) on CUDA; nothing on the CPU")
    device: str = device_setting()
    cpu: dict = cpu_profile(CPU_PROFILE)

    def check(self) -> None:
        if len(self.ratio) != 2 or min(self.ratio) <= 0:
            self.fail(f"ratio must be two positive numbers, got {list(self.ratio)}")
        if len(self.jitter_scale) != 2 or not 0 < self.jitter_scale[0] <= self.jitter_scale[1]:
            self.fail(f"jitter_scale must be [low, high] with 0 < low <= high, got {list(self.jitter_scale)}")

    def resume_key(self) -> dict[str, Any]:
        """Settings a resume state must share with this run (everything but the length and logistics)."""
        d = self.to_dict()
        for k in ("iters", "checkpoint_every", "device", "workers", "log_every", "cpu", "amp"):
            d.pop(k)
        return d


@dataclass(frozen=True)
class BoxcasegSettings(Settings):
    SECTION = "boxcaseg"
    size: Any = setting("auto", "box crops are resized to size x size; auto = training crop x 320/288 (320 for "
                                "the paper's 288)", schema={"anyOf": [{"type": "integer", "minimum": 8},
                                                                      {"const": "auto"}]})
    batch_size: int = setting(16, "crops per forward pass (crops of consecutive images share one)", minimum=1)
    loader_workers: int = setting(2, "threads reading images ahead of the network (0: read in turn)", minimum=0)
    threshold: float = setting(0.5, "foreground probability threshold", exclusive_minimum=0, maximum=1)
    head: str = setting("fused", "fused (the paper) | weak | salient | transferred (ablation)", choices=HEADS)
    keep_probabilities: bool = setting(False, "also store per-instance probability maps (map \"probability\")")
    amp: bool = setting(True, "mixed precision (float16 autocast) on CUDA; nothing on the CPU")
    device: str = device_setting()
    cpu: dict = cpu_profile({"batch_size": 8}, "8 crops per pass: as fast on 2 cores, 0.8 GB instead of 1.05 on "
                                               "a 600-box image")

    def check(self) -> None:
        if self.size != "auto" and not (isinstance(self.size, int) and self.size >= 8):
            self.fail(f"size must be auto or an integer >= 8, got {self.size!r}")
