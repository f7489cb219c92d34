"""Checkpoint files of the retraining: what kind a user's init checkpoint is, loading MMEngine's own
checkpoints under torch >= 2.6, and the weights-only copy that `latest.pth` is."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

from ..files import atomic_path

# torch >= 2.6 loads with weights_only=True unless told otherwise; MMEngine 0.10 calls torch.load without the
# argument on checkpoints that hold its HistoryBuffer and numpy objects (resume, load_from, init weights)
FORCE_FULL_LOAD = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def trusted_checkpoints() -> Iterator[None]:
    """Let MMEngine unpickle whole checkpoints for the duration: use only around files this project wrote or
    a user configured (training resumes, init checkpoints, a checkpoint given to predict)."""
    old = os.environ.get(FORCE_FULL_LOAD)
    os.environ[FORCE_FULL_LOAD] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=f"Environment variable {FORCE_FULL_LOAD} detected")
            yield
    finally:
        if old is None:
            os.environ.pop(FORCE_FULL_LOAD, None)
        else:
            os.environ[FORCE_FULL_LOAD] = old


def checkpoint_kind(path: str | os.PathLike) -> str:
    """'detector' for an MMDetection checkpoint (backbone.* keys), else 'backbone' (e.g. torchvision ResNet)."""
    import torch  # lazy: the CLI imports the retrain settings (mmdet_config, which imports this) at start-up

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {}
    return "detector" if any(str(k).startswith("backbone.") for k in state) else "backbone"


def _plain(v: Any) -> bool:
    if v is None or isinstance(v, (str, int, float, bool)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x) for k, x in v.items())
    return False


def export_weights(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Copy a training checkpoint without optimizer, scheduler and message-hub state, atomically; its
    metadata (config text, classes, iteration) keeps plain values only, so torch.load(weights_only=True)
    reads it."""
    import torch  # lazy: the CLI imports the retrain settings (mmdet_config, which imports this) at start-up

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    meta = {k: v for k, v in ckpt.get("meta", {}).items() if _plain(v)}
    with atomic_path(out) as tmp:
        torch.save({"meta": meta, "state_dict": ckpt["state_dict"]}, tmp)
    return Path(out)
