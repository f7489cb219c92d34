"""Torch device choice, one rule for every stage: "auto" is CUDA when available, else the CPU."""

from __future__ import annotations


def pick_device(name: str | None = "auto"):
    import torch  # lazy: `settings` imports this module, and the CLI's start-up must not import torch

    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
