"""Settings of the tag classifier's training and of peak extraction (config sections `cam_train:`, `cam:`).

`cam_train.cpu` is the short profile used when the device is the CPU, for the CLI and the workflow alike.
Torch-free, so that the CLI and the config checks load without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import Settings, cpu_profile, device_setting, setting

MODES = ("sample", "best")
# measured on the 24 demo scenes, 1 thread of a shared 2-core machine (benchmarks/RESULTS.md, CAM peaks):
# tiny at 160 px trains in about a minute and its peaks hit objects 4x as often as ResNet-18's (random init)
CPU_PROFILE = {"backbone": "tiny", "iters": 300, "batch_size": 8, "input_size": 160, "optimizer": "adam",
               "lr": 0.003, "levels": [-2, -1]}


@dataclass(frozen=True)
class CamTrainSettings(Settings):
    SECTION = "cam_train"
    backbone: str = setting("auto", "auto: resnet50 on a GPU, resnet18 on CPU (the CPU profile picks tiny); tiny "
                                    "(no MMDetection); or a pseudomask.backbones name")
    backbone_checkpoint: str = setting("", "pretrained backbone weights (local file); \"\" = random initialisation")
    iters: int = setting(2000, "training iterations (batches)", minimum=1)
    batch_size: int = setting(8, "images per batch", minimum=1)
    lr: float = setting(0.01, "peak learning rate (linear warm-up over 5 %, then cosine decay)", exclusive_minimum=0)
    optimizer: str = setting("sgd", "sgd (momentum 0.9, as PRM) | adam (AdamW, decoupled weight decay)",
                             choices=("sgd", "adam"))
    weight_decay: float = setting(0.0001, "weight decay", minimum=0)
    input_size: int = setting(448, "images are resized to this square for the classifier (PRM: 448)", minimum=64)
    window: int = setting(3, "peak window r, in cells of the class response map (odd)", minimum=1)
    levels: tuple[int, ...] = setting([-1], "backbone levels feeding the class maps (-1: the last, as PRM)")
    seed: int = setting(0, "seed of weights and batches")
    save_every: int = setting(100, "iterations between resume states (<model>.resume.pt, kept after the run)",
                              minimum=1)
    workers: int = setting(0, "image-loading processes", minimum=0)
    cache_mb: int = setting(1024, "decoded images kept in memory (per loading process)", minimum=0)
    amp: bool = setting(True, "mixed precision (float16 autocast, loss scaling) on CUDA; nothing on the CPU")
    device: str = device_setting()
    cpu: dict = cpu_profile(CPU_PROFILE)

    def check(self) -> None:
        if self.window % 2 == 0:
            self.fail(f"window must be odd, got {self.window}")


@dataclass(frozen=True)
class CamSettings(Settings):
    SECTION = "cam"
    select: str = setting("sample", "sample: proposal drawn by objectness (WISE); best: the top proposal "
                                    "containing the peak", choices=MODES)
    seed: int = setting(0, "seed of the proposal sampling")
    peak_threshold: float = setting(0.5, "keep peaks >= median + t * (max - median) of their class map",
                                    minimum=0, maximum=1)
    max_peaks: int = setting(10, "per class and image", minimum=1)
    window: int | None = setting(None, "peak window; null = the one the classifier was trained with", minimum=1)
    stuff_classes: tuple[str, ...] = setting([], "category names segmented by Grad-CAM, one region per image, "
                                                 "instead of peaks")
    stuff_threshold: float = setting(0.5, "Grad-CAM threshold as a fraction of its maximum (Li et al.: 50 %)",
                                     minimum=0, maximum=1)
    dedupe: bool = setting(True, "a peak that picks an already chosen proposal is ignored (a duplicate)")
    mcg: dict = setting({}, "mcg settings of on-the-fly proposals when no proposal artifact is given")
    batch_size: int = setting(8, "images per forward pass of the backbone", minimum=1)
    loader_workers: int = setting(2, "threads reading images ahead of the network (0: read in turn)", minimum=0)
    amp: bool = setting(True, "mixed precision (float16 autocast) on CUDA; nothing on the CPU")
    device: str = device_setting()
