"""The one file format of the project's own torch models (BoxCaseg, the CAM classifier) and their resume states.

A checkpoint is a dict written with torch.save (atomically, see `files`):

    format: "pseudomask-checkpoint", format_version: 1, stage: the stage that trained it (e.g. "boxcaseg_train"),
    settings: that stage's settings as plain values, package_version, state: the model's state_dict,
    plus the stage's own keys (e.g. the architecture).

It holds plain types and tensors only, so `load` reads it with torch.load(weights_only=True): opening a
checkpoint never runs pickled code.

Resume convention, the same for every trainer: a run writing `out` keeps its resume state at `<out>.resume.pt`
beside it, a checkpoint of the same stage with the keys `iteration`, `optimizer`, `resume_key` and `log` added,
written every N iterations and once more at the end. A new run resumes from it when its resume key (the
settings and data a continuation must share) equals the run's and it is not past the run's last iteration;
otherwise the run starts afresh and overwrites it. The resume state is kept after the run ends, so that
rerunning a finished run costs nothing and a trainer whose key leaves out the length can extend a finished
run; delete it to reclaim the space (model and optimizer state).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from . import __version__
from .errors import PseudomaskError
from .files import atomic_path

FORMAT = "pseudomask-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(PseudomaskError, ValueError):
    """A checkpoint that is missing, not a pseudomask checkpoint, of another version or of another stage."""


def save(path: str | os.PathLike, *, stage: str, settings: Mapping[str, Any], state: Mapping[str, Any],
         **extra: Any) -> Path:
    """Write a checkpoint of `stage` with the model `state` and plain `extra` keys, atomically."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "stage": stage, "settings": dict(settings),
               "package_version": __version__, "state": state, **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load(path: str | os.PathLike, stage: str, *, what: str = "pseudomask", error: type[Exception] = CheckpointError,
         device: Any = "cpu") -> dict[str, Any]:
    """The checkpoint dict of a `stage` checkpoint; `error` naming the file when it is missing, unreadable,
    not a pseudomask checkpoint, of another format version or of another stage (`what` names the kind)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} checkpoint not found")
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt, foreign or fully pickled files
        raise error(f"{path}: not a {what} checkpoint (not a weights-only torch file: {e})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise error(f"{path}: not a {what} checkpoint (no {FORMAT!r} header)")
    if ck.get("format_version") != FORMAT_VERSION:
        raise error(f"{path}: checkpoint format version {ck.get('format_version')}, this pseudomask reads "
                    f"version {FORMAT_VERSION}; retrain the model")
    if ck.get("stage") != stage:
        raise error(f"{path}: a checkpoint of stage {ck.get('stage')!r}, not a {what} checkpoint (stage {stage!r})")
    return ck


def resume_path(out: str | os.PathLike) -> Path:
    """Where the run writing `out` keeps its resume state."""
    out = Path(out)
    return out.with_name(out.name + ".resume.pt")


def save_resume(out: str | os.PathLike, *, stage: str, settings: Mapping[str, Any], state: Mapping[str, Any],
                optimizer: Mapping[str, Any], iteration: int, resume_key: Any, log: list, **extra: Any) -> Path:
    """Write the resume state of the run writing `out`."""
    return save(resume_path(out), stage=stage, settings=settings, state=state, optimizer=optimizer,
                iteration=int(iteration), resume_key=resume_key, log=log, **extra)


def load_resume(out: str | os.PathLike, stage: str, resume_key: Any, iters: int,
                device: Any = "cpu") -> dict[str, Any] | None:
    """The resume state of the run writing `out` when it continues this run (same key, iteration <= iters),
    else None; says on stderr which it is."""
    path = resume_path(out)
    if not path.is_file():
        return None
    try:
        ck = load(path, stage, device=device)
    except CheckpointError as e:
        print(f"ignoring {e}", file=sys.stderr)
        return None
    if ck.get("resume_key") != resume_key or int(ck.get("iteration", 0)) > iters:
        print(f"ignoring {path}: written with other settings or data; starting afresh", file=sys.stderr)
        return None
    print(f"resuming from {path} at iteration {ck['iteration']}/{iters}", file=sys.stderr)
    return ck
