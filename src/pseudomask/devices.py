"""Torch device choice, one rule for every stage: "auto" is CUDA when available, else the CPU; and mixed
precision, which only a CUDA device uses."""

from __future__ import annotations

import contextlib


def pick_device(name: str | None = "auto"):
    import torch  # lazy: `settings` imports this module, and the CLI's start-up must not import torch

    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device, amp: bool = True):
    """Mixed precision (float16 autocast) on a CUDA device when `amp`; elsewhere a context that changes nothing."""
    import torch  # lazy, as above

    if amp and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def grad_scaler(device, amp: bool = True):
    """The loss scaler of a mixed-precision training step (`autocast`); disabled (a pass-through) elsewhere."""
    import torch  # lazy, as above

    return torch.amp.GradScaler("cuda", enabled=bool(amp) and torch.device(device).type == "cuda")
