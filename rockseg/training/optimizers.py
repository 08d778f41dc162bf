"""The optimizer (Adam, AdamW or SGD) and the learning-rate schedule of a run, with its linear warm-up.

``poly`` (:class:`PolySchedule`, the default) sets the rate before every optimizer step from the share of the run
done: of ``max_minutes`` when given, else of the epochs. The others step once per epoch (``plateau`` on the
validation mean IoU). The warm-up scales the scheduled rate step by step over the first ``warmup_epochs`` epochs
(:func:`_set_rates`), and the schedule then continues from the rate it set.
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
#: Exponent of the poly schedule (nnU-Net's).
POLY_EXPONENT = 0.9


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
    if config.schedule == "poly":
        return PolySchedule(optimizer, min_lr=config.min_lr)
    return None


class PolySchedule:
    """nnU-Net's polynomial decay: ``lr = lr0 * (1 - progress) ** 0.9``, floored at ``min_lr``.

    It does not step per epoch: the loop asks for :meth:`rates` before every optimizer step, at the run's progress
    (:meth:`rockseg.training.loop._Run.progress`: optimizer steps or elapsed time, both of which a checkpoint
    restores), so a run of a few long epochs decays smoothly and a resumed run continues on the same curve.
    :meth:`state_dict` records the initial rates and the last progress for the checkpoint.

    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> [round(r, 4) for p in (0.0, 0.5, 1.0) for r in PolySchedule(opt, min_lr=1e-3).rates(p)]
    [1.0, 0.5359, 0.001]
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, min_lr: float) -> None:
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.min_lr = float(min_lr)
        self.progress = 0.0

    def rates(self, progress: float) -> list[float]:
        """The rate of each parameter group at ``progress`` (0..1, the share of the run done)."""
        self.progress = float(progress)
        left = min(1.0, max(0.0, 1.0 - self.progress))
        return [max(self.min_lr, lr * left**POLY_EXPONENT) for lr in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "min_lr": self.min_lr, "progress": self.progress}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lrs = [float(lr) for lr in state["base_lrs"]]
        self.min_lr, self.progress = float(state["min_lr"]), float(state["progress"])


def _set_rates(optimizer: torch.optim.Optimizer, rates: Sequence[float], step: int, warmup_steps: int) -> None:
    """Before optimizer step ``step`` (from 0), set the schedule's ``rates``, scaled linearly up to 1 over the first
    ``warmup_steps`` steps (the warm-up)."""
    ramp = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    for group, lr in zip(optimizer.param_groups, rates):
        group["lr"] = lr * ramp


def _step_schedule(scheduler: Any, schedule: str, mean_iou: float) -> None:
    """Step the schedule at the end of an epoch (``plateau`` watches the validation mean IoU; ``poly`` sets the rate
    before every optimizer step instead)."""
    if scheduler is not None and schedule != "poly":
        if schedule == "plateau":
            scheduler.step(mean_iou)
        else:
            scheduler.step()
