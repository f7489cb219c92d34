"""Training the tag classifier: multi-label soft-margin loss on peak-stimulated class scores (PRM, WISE).

Resumable as every trainer of the project (pseudomask.checkpoints): every `save_every` iterations and at the end
the state goes to `<out>.resume.pt`; a new run with the same settings and data continues from it (a Slurm job
that hit its time limit loses at most `save_every` iterations). Its key includes the number of iterations (the
learning-rate schedule depends on it). Batches are a pure function of (seed, iteration), so a resumed run sees
the same images as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..checkpoints import load_resume, resume_path, save_resume
from ..dataset import Dataset, load_dataset
from ..devices import autocast, grad_scaler, pick_device
from ..distributed import data_parallel, is_main, mean_over_ranks, rank_and_world, replica_digests
from ..images import ImageError, read_annotated_image
from ..optim import build_optimizer, optimizer_step
from ..loops import progress
from .model import STAGE, CamError, build_classifier, loss_fn, prepare, resolve_backbone_name, save_checkpoint
from .settings import CamTrainSettings


def tag_targets(images: Sequence[dict], class_ids: Sequence[int]) -> np.ndarray:
    """(N, C) 0/1 multi-label targets from the images' tags."""
    col = {c: i for i, c in enumerate(class_ids)}
    y = np.zeros((len(images), len(class_ids)), np.float32)
    for n, im in enumerate(images):
        for t in im.get("tags", []):
            y[n, col[int(t)]] = 1.0
    return y


class _Batches(torch.utils.data.Dataset):
    """Item i = the batch of iteration i: indices drawn from (seed, i), random horizontal flips."""

    def __init__(self, images: list[tuple[Path, dict]], targets: np.ndarray, first: int, last: int, s: CamTrainSettings):
        self.images, self.targets, self.first, self.last, self.s = images, targets, first, last, s
        self._cache: dict[int, np.ndarray] = {}
        per_image = 3 * s.input_size ** 2 * 4
        self._cache_limit = int(s.cache_mb * 2 ** 20 // per_image)
        self.rank, self.world = rank_and_world()

    def _image(self, j: int) -> np.ndarray:
        """Decoded and resized image j; kept in memory up to cache_mb (a small dataset is decoded once)."""
        x = self._cache.get(j)
        if x is None:
            x = prepare(read_annotated_image(*self.images[j]), self.s.input_size)
            if len(self._cache) < self._cache_limit:
                self._cache[j] = x
        return x

    def __len__(self) -> int:
        return self.last - self.first

    def __getitem__(self, i: int):
        it = self.first + i
        rng = np.random.default_rng([self.s.seed, it])
        idx = rng.choice(len(self.images), size=min(self.s.batch_size, len(self.images)), replace=False)
        flips = rng.random(len(idx)) < 0.5
        xs, ys, bad = [], [], []
        # several processes: every rank draws the same batch and takes its part of it
        for j, flip in list(zip(idx, flips))[self.rank::self.world]:
            try:
                x = self._image(j)
            except ImageError as e:
                bad.append(str(e))
                continue
            xs.append(x[:, :, ::-1].copy() if flip else x)
            ys.append(self.targets[j])
        if not xs:
            return it, None, None, bad
        return it, torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)), bad


def _lr(s: CamTrainSettings, it: int) -> float:
    """Linear warm-up over the first 5 % of iterations, then cosine decay to 0."""
    warm = max(1, s.iters // 20)
    if it < warm:
        return s.lr * (it + 1) / warm
    return 0.5 * s.lr * (1 + math.cos(math.pi * (it - warm) / max(1, s.iters - warm)))


def train_classifier(ds: Dataset | Sequence[Dataset], out: str | os.PathLike, settings: CamTrainSettings | None = None,
                     resume: bool = True, stop_at: int | None = None) -> dict:
    """Train on the image tags of `ds` (one dataset or its shards), write the checkpoint to `out`.

    `stop_at`: stop after that iteration, leaving only the resume state (for a job that must end before
    its time limit). Returns the checkpoint's config, the loss of every iteration so far, and the path written."""
    s = settings or CamTrainSettings()
    if s.input_size < 64:
        raise CamError(f"input_size must be at least 64 pixels, got {s.input_size}")
    parts = [ds] if isinstance(ds, Dataset) else list(ds)
    if not parts:
        raise CamError("no dataset to train the tag classifier on")
    source = parts[0].source if len(parts) == 1 else f"{parts[0].source} (+{len(parts) - 1} shards)"
    out = Path(out)
    device = pick_device(s.device)
    torch.manual_seed(s.seed)
    # ingest marks unreadable images with size 0; they cannot train anything
    pairs = [(d.image_path(im), im) for d in parts for im in d.images if im.get("width")]
    images = [im for _, im in pairs]
    if not images:
        raise CamError(f"{source}: no readable images to train the tag classifier on")
    categories = parts[0].categories
    class_ids = [int(c["id"]) for c in categories]
    if not class_ids:
        raise CamError(f"{source}: the dataset has no categories")
    if not any(im.get("tags") for im in images):
        raise CamError(f"{source}: no image has a tag; the classifier has nothing to learn")
    config = {"backbone": resolve_backbone_name(s.backbone, device), "class_ids": class_ids,
              "class_names": [c["name"] for c in categories], "window": s.window, "levels": list(s.levels),
              "input_size": s.input_size}
    model = build_classifier(config, s.backbone_checkpoint or None).to(device)
    net = data_parallel(model)
    opt = build_optimizer(model.parameters(), s.optimizer, s.lr, weight_decay=s.weight_decay)
    scaler = grad_scaler(device, s.amp)  # mixed precision on CUDA; a pass-through on the CPU
    run_key = {**config, **{k: getattr(s, k) for k in ("iters", "batch_size", "lr", "optimizer", "weight_decay",
                                                          "seed", "backbone_checkpoint")},
               "images": hashlib.sha256("\n".join(f"{p}:{im.get('tags')}" for p, im in pairs).encode()).hexdigest()}
    start, history = 0, []
    ck = load_resume(out, STAGE, run_key, s.iters, device) if resume else None
    if ck is not None:
        model.load_state_dict(ck["state"])
        opt.load_state_dict(ck["optimizer"])
        start, history = int(ck["iteration"]), list(ck["log"])
    targets = tag_targets(images, class_ids)
    last = s.iters if stop_at is None else max(start, min(int(stop_at), s.iters))
    batches = _Batches(pairs, targets, start, last, s)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=s.workers)
    warned = set()
    model.train()

    def snapshot(it: int) -> None:
        if not is_main():  # rank 0 writes; every rank resumes from it
            return
        save_resume(out, stage=STAGE, settings=s.to_dict(), state=model.state_dict(), optimizer=opt.state_dict(),
                    iteration=it, resume_key=run_key, log=history, config=config)

    for it, x, y, bad in progress(loader, desc=f"cam-train:{config['backbone']}", total=len(batches), unit="it"):
        for msg in bad:
            if msg not in warned:
                warned.add(msg)
                print(f"skipping unreadable image: {msg}", file=sys.stderr)
        if x is not None:
            for g in opt.param_groups:
                g["lr"] = _lr(s, it)
            with autocast(device, s.amp):
                loss = loss_fn(net(x.to(device))["scores"], y.to(device))
            optimizer_step(opt, loss, scaler)
            history.append(mean_over_ranks({"loss": float(loss.detach())})["loss"])
        if (it + 1) % s.save_every == 0 and it + 1 < last:
            snapshot(it + 1)
    if start < last:
        snapshot(last)
    if last < s.iters:
        return {"config": config, "history": history, "checkpoint": str(resume_path(out))}
    return finish(model, out, config, s, history)


def finish(model, out: Path, config: dict, s: CamTrainSettings, history: list[float]) -> dict:
    """Write the trained classifier (rank 0); its config, the loss history and the path written (and with
    several processes every rank's weight digest)."""
    model.eval()
    if is_main():
        save_checkpoint(out, model, config, s.to_dict(), iteration=s.iters, history=history)
    result = {"config": config, "history": history, "checkpoint": str(out)}
    if rank_and_world()[1] > 1:
        result["replica_digests"] = replica_digests(model)
    return result


def run_stage(s: CamTrainSettings, *, shards: list[str], images: str | None, model: str, threads: int = 1) -> dict:
    """The `cam_train` stage (see pseudomask.registry)."""
    torch.set_num_threads(threads)
    r = train_classifier([load_dataset(p, images) for p in shards], model, s)
    h = r["history"]
    k = max(1, len(h) // 10)
    summary = {"checkpoint": r["checkpoint"], "backbone": r["config"]["backbone"], "iterations": len(h),
               "loss_first": sum(h[:k]) / k if h else None, "loss_last": sum(h[-k:]) / k if h else None}
    if "replica_digests" in r:
        summary.update(processes=len(r["replica_digests"]), replica_digests=r["replica_digests"])
    return summary
