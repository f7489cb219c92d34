"""The optimisers the project's trainers offer, built in one place so that a name means the same everywhere."""

from __future__ import annotations

from typing import Iterable

import torch

from .settings import SettingsError

OPTIMIZERS = ("sgd", "adam")


def build_optimizer(params: Iterable[torch.nn.Parameter], name: str, lr: float, momentum: float = 0.9,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """sgd: SGD with momentum and L2 weight decay; adam: AdamW (decoupled weight decay, so the decay does not
    depend on the gradients' scale). Parameters without requires_grad are left out."""
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise SettingsError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, scaler: torch.amp.GradScaler) -> None:
    """One update from `loss` through the loss scaler of mixed precision (devices.grad_scaler; a disabled
    scaler makes this the plain zero_grad, backward, step)."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
