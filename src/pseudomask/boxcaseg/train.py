"""Joint training of BoxCaseg on box-supervised crops and salient images (Wang et al., Sec. 3.2-3.3).

Every batch holds box crops and salient crops at a fixed ratio. The weak head gets the MIL loss (+ 0.05 x
smoothness) on all of them, the box of a salient mask giving its bags; the salient and transferred heads get
the pixel BCE on the fused map for the salient crops. SGD with the HRNet defaults (lr 4e-3, momentum 0.9,
weight decay 1e-4, poly decay) as in the paper; Adam (AdamW, see pseudomask.optim) is selectable for short CPU
runs from random weights.

Training is counted in iterations and resumable as every trainer of the project (pseudomask.checkpoints): the
resume state `<out>.resume.pt` is written every `checkpoint_every` iterations and at the end; its key leaves out
the number of iterations, so a run with more iterations and otherwise the same settings extends a finished run.

From `iou_start` x iters on, the IoU head (see .model) also trains: L1 between its output and the squared IoU
of the thresholded fused mask with the salient mask, on the salient crops of each batch, weighted by
`iou_weight`. Its input features are detached, so this term does not change the segmentation.

Strong instances of the shards (true masks of `dataset.strong`, source gt) join the salient images: a jittered
crop around the box with its true mask, supervised by the pixel loss and the IoU head like a salient crop.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..checkpoints import load_resume, resume_path, save_resume
from ..dataset import Dataset, load_dataset
from ..devices import autocast, grad_scaler, pick_device
from ..distributed import RankBatches, data_parallel, is_main, mean_over_ranks, rank_and_world, replica_digests
from ..files import atomic_path
from ..optim import build_optimizer, optimizer_step
from ..loops import progress
from .data import (BoxCasegDataError, JointDataset, RatioBatchSampler, SalientFolder, box_items, collate,
                   strong_items)
from .losses import fused_probability, iou_loss, mil_loss, pixel_loss, smoothness, weak_loss
from .model import STAGE, BoxCasegError, architecture, build_model, load_state, save_checkpoint
from .settings import BoxcasegTrainSettings

LOG_COLUMNS = ("iteration", "loss", "mil", "mil_box", "mil_salient", "smooth", "pixel", "iou", "lr", "seconds")


def poly_lr(base: float, it: int, total: int, power: float) -> float:
    return base * (1.0 - it / max(total, 1)) ** power


def iou_on(it: int, cfg: BoxcasegTrainSettings) -> bool:
    """Whether iteration `it` (0-based) trains the IoU head: from iou_start x iters on, never at iou_start 1."""
    return cfg.iou_start < 1 and it >= cfg.iou_start * cfg.iters


def train_step(model, batch: dict, cfg: BoxcasegTrainSettings, device: torch.device, iou: bool = False
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """One forward pass and the BoxCaseg loss of a mixed batch: (loss, its parts as floats). `iou` adds
    iou_weight x the IoU head's L1 loss on the salient crops (the only ones with a true mask)."""
    img, box = batch["image"].to(device), batch["box"].to(device)
    sal = batch["salient"].to(device)
    heads = ("weak", "salient", "transferred") + (("iou",) if iou else ())
    out = model(img, salient=sal, heads=heads)
    weak = out["weak"]
    loss = weak_loss(weak, box, cfg.smooth_weight)
    parts = {"pixel": 0.0, "iou": 0.0}
    if bool(sal.any()):
        mask = batch["mask"].to(device)[sal]
        l_pix = pixel_loss(out["salient"], out["transferred"], mask, cfg.alpha)
        loss = loss + l_pix
        parts["pixel"] = l_pix.item()
        if iou:
            l_iou = iou_loss(out["iou"], fused_probability(out["salient"], out["transferred"], cfg.alpha), mask)
            loss = loss + cfg.iou_weight * l_iou
            parts["iou"] = l_iou.item()
    with torch.no_grad():
        parts["mil"] = float(mil_loss(weak, box))
        parts["smooth"] = float(smoothness(torch.sigmoid(weak)))
        parts["mil_box"] = float(mil_loss(weak[~sal], box[~sal])) if bool((~sal).any()) else float("nan")
        parts["mil_salient"] = float(mil_loss(weak[sal], box[sal])) if bool(sal.any()) else float("nan")
    parts["loss"] = loss.item()
    return loss, parts


def write_log(path: str | os.PathLike, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def train(datasets: Sequence[Dataset], salient: str | os.PathLike, out: str | os.PathLike,
          cfg: BoxcasegTrainSettings | dict | None = None, loss_log: str | os.PathLike | None = None,
          resume: bool = True) -> dict[str, Any]:
    """Train BoxCaseg and write the checkpoint `out` (and the loss log CSV); returns a summary."""
    cfg = cfg if isinstance(cfg, BoxcasegTrainSettings) else BoxcasegTrainSettings.from_mapping(cfg)
    out = Path(out)
    loss_log = Path(loss_log) if loss_log else out.with_name(out.stem + "_losses.csv")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    folder = SalientFolder(salient)
    boxes = box_items(datasets)
    strong = strong_items(datasets)
    if not boxes:
        sources = ", ".join(str(ds.source or ds.image_root) for ds in datasets) or "no dataset given"
        raise BoxCasegDataError(f"no usable box to train BoxCaseg on (status kept and positive size) in {sources}")
    sampler_seed = cfg.seed
    model = build_model(cfg.backbone, cfg.backbone_checkpoint or None, alpha=cfg.alpha).to(device)
    world = rank_and_world()[1]
    net = data_parallel(model, find_unused=True)  # the IoU head trains from iou_start on only
    opt = build_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    scaler = grad_scaler(device, cfg.amp)  # mixed precision on CUDA; a pass-through on the CPU
    rows: list[dict] = []
    start = 0

    key = {"settings": cfg.resume_key(), "arch": architecture(model)}
    state = load_resume(out, STAGE, key, cfg.iters) if resume else None
    if state is not None:
        load_state(model, state["state"], resume_path(out))
        opt.load_state_dict(state["optimizer"])
        rows, start = list(state["log"]), int(state["iteration"])
        sampler_seed = cfg.seed + start

    print(f"BoxCaseg training: {cfg.backbone} on {device}, {len(boxes)} box instances, {len(folder)} salient "
          f"images, {len(strong)} strong instances (true masks), batch {cfg.batch_size} at "
          f"{cfg.ratio[0]:g}:{cfg.ratio[1]:g}, iterations {start}..{cfg.iters}",
          file=sys.stderr)
    sampler = RatioBatchSampler(len(boxes), len(folder) + len(strong), cfg.batch_size, cfg.ratio,
                                seed=sampler_seed)
    data = JointDataset(boxes, folder, cfg.crop_size, cfg.salient_resize, cfg.jitter_shift, cfg.jitter_scale,
                        strong=strong)
    # several processes: every rank draws the same batches (items carry their augmentation seeds) and trains
    # on its part of each, so that together they train on one process's batches
    loader = torch.utils.data.DataLoader(data, batch_sampler=RankBatches(sampler) if world > 1 else sampler,
                                         collate_fn=collate,
                                         num_workers=cfg.workers, persistent_workers=cfg.workers > 0)
    batches = iter(loader)
    model.train()
    t0 = time.time() - (rows[-1]["seconds"] if rows else 0.0)

    def save_state(it: int) -> None:
        if not is_main():  # rank 0 writes; every rank resumes from it
            return
        save_resume(out, stage=STAGE, settings=cfg.to_dict(), state=model.state_dict(), optimizer=opt.state_dict(),
                    iteration=it, resume_key=key, log=rows, arch=architecture(model))
        write_log(loss_log, rows)

    for it in progress(range(start, cfg.iters), desc="boxcaseg:train", total=cfg.iters - start, unit="it"):
        lr = poly_lr(cfg.lr, it, cfg.iters, cfg.poly_power)
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast(device, cfg.amp):
            loss, parts = train_step(net, next(batches), cfg, device, iou=iou_on(it, cfg))
        if not torch.isfinite(loss):
            raise BoxCasegError(f"BoxCaseg loss became {float(loss)} at iteration {it + 1}; lower the learning rate")
        optimizer_step(opt, loss, scaler)
        rows.append({"iteration": it + 1, **mean_over_ranks(parts), "lr": lr, "seconds": time.time() - t0})
        if cfg.log_every and (it + 1) % cfg.log_every == 0:
            print(" ".join(f"{k}={rows[-1][k]:.4g}" for k in LOG_COLUMNS), file=sys.stderr)
        if cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0 and it + 1 < cfg.iters:
            save_state(it + 1)

    if start < cfg.iters:
        save_state(cfg.iters)
    data = {"box_instances": len(boxes), "salient_images": len(folder), "strong_instances": len(strong)}
    return finish(model, cfg, out, loss_log, rows, {**data, "salient": str(salient)},
                  {"resumed_from": start, **data, "device": str(device)})


def finish(model, cfg: BoxcasegTrainSettings, out: Path, loss_log: Path, rows: list[dict], data: dict,
           summary: dict) -> dict[str, Any]:
    """Write the trained model's checkpoint and the loss log (rank 0) and return the run's summary."""
    model.eval()
    model.iou_head_trained = iou_on(cfg.iters - 1, cfg)
    if is_main():
        save_checkpoint(out, model, cfg.to_dict(), iteration=cfg.iters, data=data)
        write_log(loss_log, rows)
    first = float(np.mean([r["loss"] for r in rows[:10]])) if rows else float("nan")
    last = float(np.mean([r["loss"] for r in rows[-10:]])) if rows else float("nan")
    summary = {"checkpoint": str(out), "loss_log": str(loss_log), "iterations": cfg.iters, **summary,
               "loss_first10": first, "loss_last10": last, "seconds": rows[-1]["seconds"] if rows else 0.0}
    world = rank_and_world()[1]
    if world > 1:
        summary.update(processes=world, replica_digests=replica_digests(model))
    return summary


def run_stage(s: BoxcasegTrainSettings, *, shards: list[str], images: str | None, salient: str, model: str, losses: str,
              threads: int = 1) -> dict:
    """The `boxcaseg_train` stage (see pseudomask.registry)."""
    torch.set_num_threads(threads)
    return train([load_dataset(p, images) for p in shards], salient, model, s, loss_log=losses)
