"""Train Mask R-CNN on a COCO JSON of pseudo masks with MMEngine's Runner; resumable, weights-only output.

The work folder holds the generated config (`mask_rcnn.py`), MMEngine's logs and its full checkpoints
(`epoch_N.pth` or `iter_N.pth` with optimizer state, `last_checkpoint`). A run whose config text (settings,
paths and the training JSON's digest) equals the one in the folder resumes from the last checkpoint; any other
run starts afresh and removes the stale checkpoints. The result is `latest.pth`: the model weights and metadata only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from .weights import export_weights, trusted_checkpoints
from .mmdet_config import CONFIG_NAME, RetrainSettings, build_config, config_text, write_config


def _stale_checkpoints(work_dir: Path) -> list[Path]:
    saved = sorted([*work_dir.glob("iter_*.pth"), *work_dir.glob("epoch_*.pth")])
    return saved + [p for p in [work_dir / "last_checkpoint"] if p.exists()]


def can_resume(work_dir: Path, text: str) -> bool:
    """Whether the folder holds an interrupted or finished run of exactly this config."""
    cfg_path, marker = work_dir / CONFIG_NAME, work_dir / "last_checkpoint"
    if not (cfg_path.is_file() and marker.is_file() and cfg_path.read_text() == text):
        return False
    return Path(marker.read_text().strip()).is_file()


def _history(message_hub, key: str) -> list[float]:
    try:
        return [float(v) for v in message_hub.get_scalar(key).data[0]]
    except KeyError:
        return []


def train(train_json: str | os.PathLike, images: str | os.PathLike, work_dir: str | os.PathLike,
          settings: RetrainSettings | None = None, *, val_json: str | os.PathLike | None = None,
          val_images: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
          config_out: str | os.PathLike | None = None, threads: int | None = None,
          builder: Callable[..., dict] = build_config) -> dict[str, Any]:
    """Train (or resume) and write the weights to `out` (default WORK_DIR/latest.pth); returns a summary.
    `builder` makes the MMDetection config (config.build_config: Mask R-CNN; build_faster_rcnn_config)."""
    import torch  # lazy, with MMEngine (optional): building the config, and its errors, need neither
    from mmengine.config import Config
    from mmengine.runner import Runner

    from ..distributed import barrier, is_main, mean_over_ranks, rank_and_world, replica_digests  # lazy: torch

    world = rank_and_world()[1]
    cfg = builder(train_json, images, work_dir, settings, val_json=val_json, val_images=val_images, world=world)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(int(threads))
    text = config_text(cfg)
    resume = can_resume(work_dir, text)
    barrier()  # every rank has decided before rank 0 changes the folder; only rank 0 writes
    cfg_path = work_dir / CONFIG_NAME
    if is_main():
        prepare_folder(work_dir, cfg, resume, config_out)
    barrier()
    mm_cfg = Config.fromfile(str(cfg_path))
    mm_cfg.resume = resume
    if world > 1:  # the process group is up (pseudomask.launch): MMEngine uses it, and wraps a CPU model as DDP
        mm_cfg.launcher = "pytorch"  # allows on the CPU: DDP without device_ids (MMEngine would pass LOCAL_RANK)
        mm_cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", broadcast_buffers=False,
                                        find_unused_parameters=False,
                                        **({} if torch.cuda.is_available() else {"device_ids": None}))
    runner = Runner.from_cfg(mm_cfg)
    if is_main():
        cfg_path.write_text(text)  # the Runner dumped its own rendering over ours; keep the commented original
    start = time.perf_counter()
    with trusted_checkpoints():  # its own resume checkpoints, or the configured init checkpoint
        runner.train()
    seconds = time.perf_counter() - start
    out = Path(out or work_dir / "latest.pth")
    if is_main():  # its CheckpointHook wrote the last checkpoint
        export_weights((work_dir / "last_checkpoint").read_text().strip(), out)
    times = _history(runner.message_hub, "train/time")
    steady = times[1:] or times
    summary = {
        "checkpoint": str(out), "config": str(config_out or cfg_path), "work_dir": str(work_dir),
        "resumed": resume, "iters": int(runner.iter), "seconds": round(seconds, 3),
        "seconds_per_iter": round(sum(steady) / len(steady), 4) if steady else None,
        "device": str(next(runner.model.parameters()).device),
    }
    if world > 1:
        summary.update(processes=world, replica_digests=replica_digests(runner.model.module))
    ends = {}
    for key in ("loss", "loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"):
        hist = _history(runner.message_hub, f"train/{key}")
        if hist:
            ends[f"first_{key}"], ends[f"last_{key}"] = hist[0], hist[-1]
    # each rank logs the loss of its part of the batch; the whole batch's is their mean
    summary.update({k: round(v, 4) for k, v in mean_over_ranks(ends).items()})
    return summary


def prepare_folder(work_dir: Path, cfg: dict, resume: bool, config_out: str | os.PathLike | None) -> None:
    """The run folder for this config: stale checkpoints of another config removed, the config written (and
    a copy at `config_out`)."""
    if not resume:
        for p in _stale_checkpoints(work_dir):
            print(f"retrain: removing {p} (from a run with another config)")
            p.unlink()
    cfg_path = write_config(cfg, work_dir / CONFIG_NAME)
    if config_out and Path(config_out).resolve() != cfg_path.resolve():
        write_config(cfg, config_out)


def run_stage(s: RetrainSettings, *, annotations: str, images: str, val: str | None, val_images: str | None,
              checkpoint: str, mmdet_config: str, threads: int = 1) -> dict:
    """The `retrain` stage (see pseudomask.registry): MMEngine's run folder is `work/` beside the checkpoint, and a
    rerun with the same config resumes from it."""
    return train(annotations, images, Path(checkpoint).parent / "work", s, val_json=val, val_images=val_images,
                 out=checkpoint, config_out=mmdet_config, threads=threads)

