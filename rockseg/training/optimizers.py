"""The optimizer (Adam, AdamW or SGD) and the learning-rate schedule of a run, with its linear warm-up.

The schedules step once per epoch (``plateau`` on the validation mean IoU); the warm-up scales the scheduled rate
step by step over the first ``warmup_epochs`` epochs, and the schedule then continues from the rate it set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rockseg.training.settings import TrainConfig

#: Plateau schedule: the learning rate is multiplied by this when the validation mean IoU stops improving.
PLATEAU_FACTOR = 0.5
SGD_MOMENTUM = 0.9


def _optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=SGD_MOMENTUM, nesterov=True,
                               weight_decay=config.weight_decay or 0.0)
    if config.optimizer == "adamw":
        wd = 1e-2 if config.weight_decay is None else config.weight_decay
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=wd)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay or 0.0)


def _scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=PLATEAU_FACTOR, patience=config.patience, min_lr=config.min_lr)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=config.cosine_epochs, eta_min=config.min_lr)
    if config.schedule == "exp":
        floor = config.min_lr / config.lr
        gamma = floor ** (1.0 / max(1, config.epochs - 1))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: max(floor, gamma**e))
    return None


def _warm_up(optimizer: torch.optim.Optimizer, scheduled: Sequence[float], step: int, warmup_steps: int) -> None:
    """Before optimizer step ``step`` (from 0), scale the ``scheduled`` rates linearly up to 1 over ``warmup_steps``."""
    if step < warmup_steps:
        ramp = (step + 1) / warmup_steps
        for group, lr in zip(optimizer.param_groups, scheduled):
            group["lr"] = lr * ramp


def _step_schedule(scheduler: Any, schedule: str, mean_iou: float) -> None:
    """Step the schedule at the end of an epoch (``plateau`` watches the validation mean IoU)."""
    if scheduler is not None:
        if schedule == "plateau":
            scheduler.step(mean_iou)
        else:
            scheduler.step()
