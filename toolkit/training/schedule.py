"""Optimiser and learning-rate schedule (the method's fixed numbers, as parameters).

SGD with Nesterov momentum 0.99, initial learning rate 0.01, weight decay 3e-5, gradient
norm clipped at 12; the learning rate follows ``lr0 * (1 - epoch / epochs) ** 0.9``, set at
the start of every epoch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from toolkit.errors import ToolkitError


@dataclass(frozen=True)
class Schedule:
    epochs: int = 1000
    iterations_per_epoch: int = 250
    validation_iterations: int = 50
    initial_lr: float = 0.01
    lr_exponent: float = 0.9
    momentum: float = 0.99
    weight_decay: float = 3e-5
    grad_clip: float = 12.0

    def __post_init__(self) -> None:
        for name in ("epochs", "iterations_per_epoch"):
            if getattr(self, name) < 1:
                raise ToolkitError(
                    f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}"
                )
        if self.validation_iterations < 0:
            raise ToolkitError(f"--val-iters must be 0 or more, not {self.validation_iterations}")

    def lr(self, epoch: int) -> float:
        return poly_lr(epoch, self.epochs, self.initial_lr, self.lr_exponent)


def poly_lr(epoch: int, epochs: int, initial: float, exponent: float = 0.9) -> float:
    return initial * (1 - epoch / epochs) ** exponent


def make_optimizer(parameters, schedule: Schedule, fused: bool = False) -> torch.optim.SGD:
    """``fused``: one kernel for the whole update (CUDA; fewer launches for small networks)."""
    extra = (
        {"fused": True}
        if fused and "fused" in inspect.signature(torch.optim.SGD).parameters
        else {}
    )
    return torch.optim.SGD(
        parameters,
        lr=schedule.initial_lr,
        momentum=schedule.momentum,
        nesterov=True,
        weight_decay=schedule.weight_decay,
        **extra,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
