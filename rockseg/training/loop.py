"""The epoch loop of a training run (:class:`_Run`): batches, optimizer steps, validation, the best weights.

A :class:`_Run` holds one run's network, optimizer, schedule and loss, and what happened so far (epochs, history,
best weights), which :mod:`rockseg.training.checkpoints` writes and restores. Its methods are the loop, from the
outside in: :meth:`_Run.fit` (epochs until ``epochs`` or the deadline; the log and a checkpoint after each),
:meth:`_Run._epoch` (train, validate, keep the best), :meth:`_Run._train_epoch` (optimizer steps, each at the
rate of the warm-up and schedule, ``poly``'s from :meth:`_Run.progress`), :meth:`_Run._accumulate` (the forward and
backward passes of one step) and :meth:`_Run._validate`. Training batches are fresh patches from the tile set's
training regions (:mod:`rockseg.training.regions`) or its stored tiles, reshuffled each epoch (:meth:`_Run._batch`).

Every process under torchrun runs the same loop on its share of the batches (:meth:`_Run._epoch_plan`); the
processes agree on when to stop, and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from rockseg.errors import InputError
from rockseg.training.augment import preset
from rockseg.training.checkpoints import _write_checkpoint
from rockseg.training.data import _load_batch, _Part, _Prefetcher
from rockseg.training.finetune import encoder_modules, set_trainable
from rockseg.training.distributed import _broadcast_buffers, _Dist, _reduce, _wrap
from rockseg.training.hardware import _autocast
from rockseg.training.losses import loss_function
from rockseg.training.optimizers import PolySchedule, _optimizer, _scheduler, _set_rates, _step_schedule
from rockseg.training.regions import _region_batch, _Regions
from rockseg.training.settings import UNLIMITED_EPOCHS, TrainConfig
from rockseg.training.validation import _validation_counts, euler_error, iou_from_confusion, selection_score


def _steps_per_epoch(config: TrainConfig, n_train: int, world: int) -> int:
    """``steps_per_epoch``, else one pass over the training tiles (times ``fraction``) by all processes."""
    if config.steps_per_epoch is not None:
        return config.steps_per_epoch
    per_step = config.accumulate * world  # forward passes per optimizer step, all processes
    passes = math.ceil(config.fraction * math.ceil(n_train / config.batch_size))
    return max(1, math.ceil(passes / per_step))


@dataclass
class _Run:
    """One training run: the network, its optimizer and schedule, the data, and what happened so far."""

    net: nn.Module
    parts: Mapping[str, _Part]
    config: TrainConfig
    classes: int
    phases: Mapping[int, str]
    device: torch.device
    bf16: bool
    class_weights: list[float] | None
    dist_info: _Dist
    fingerprint: Mapping[str, Any]
    ckpt_path: Path
    log_path: Path
    t0: float
    epoch: int = 0
    optimizer_steps: int = 0
    stopped: str = "epochs"
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "mean_iou": -1.0, "score": -math.inf,
                                                          "per_phase": [], "state": None})
    previous_elapsed: float = 0.0
    train_seconds: float = 0.0
    regions: _Regions | None = None  # fresh random patches from these, else the stored tiles
    ignore: int | None = None  # the label of unlabelled voxels (sparse labels): no loss, no validation count
    adversary: Any = None  # pix2pix: the discriminator (:class:`rockseg.training.adversarial._Adversary`)

    def __post_init__(self) -> None:
        c = self.config
        self.model: nn.Module = _wrap(self.net, self.dist_info, self.device)
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = _optimizer(c, params)
        self.scheduler = _scheduler(c, self.optimizer)
        self.criterion = loss_function(c.loss, class_weights=self.class_weights, focal_gamma=c.focal_gamma,
                                       iou_alpha=c.iou_alpha, device=self.device, ignore=self.ignore)
        self.augment = preset(c.augment)
        self.steps = _steps_per_epoch(c, len(self.parts["train"]), self.dist_info.world)
        self.warmup_steps = c.warmup_epochs * self.steps
        self.deadline = self.t0 + 60.0 * c.max_minutes if c.max_minutes is not None else math.inf
        self.pin = self.device.type == "cuda"
        # encoder frozen for the first epochs: its modules, and whether its gradients are dropped (under torchrun)
        self.encoder = encoder_modules(self.net) if c.freeze_encoder or c.freeze_encoder_epochs else []
        self.drop_encoder_grads = False

    def elapsed(self) -> float:
        """Seconds of the run so far, the parts before a resume included (as their checkpoint recorded them)."""
        return self.previous_elapsed + time.monotonic() - self.t0

    def progress(self) -> float:
        """The share of the run done once the coming optimizer step is taken, 0..1 (the ``poly`` schedule's).

        With ``max_minutes``, the share of it elapsed (:meth:`elapsed`, the most of any process, so that all step
        at one rate), which reaches 1 when the time runs out; else the share of the ``epochs``' optimizer steps.
        """
        c, d = self.config, self.dist_info
        if c.max_minutes is None:
            return min(1.0, (self.optimizer_steps + 1) / (c.epochs * self.steps))
        elapsed = torch.tensor([self.elapsed()], dtype=torch.float64, device=d.reduce_on(self.device))
        return min(1.0, float(_reduce(elapsed, d, "max")) / (60.0 * c.max_minutes))

    # ---------------------------------------------------------------------------------------- batches
    def _epoch_plan(self, epoch: int) -> tuple[np.ndarray | None, list[int]]:
        """Tile order of the epoch (all processes; None for fresh patches) and the global indices of this
        process's batches."""
        c, d = self.config, self.dist_info
        n_train = len(self.parts["train"])
        total = self.steps * c.accumulate * d.world
        order = None
        if self.regions is None:
            rng = np.random.default_rng([c.seed, 0, epoch])
            passes = math.ceil(total * c.batch_size / n_train)
            order = np.concatenate([rng.permutation(n_train) for _ in range(passes)])
        # Optimizer step s takes batches s*W*A ... (s+1)*W*A - 1 of all processes; process r the r-th run of A.
        mine = [s * d.world * c.accumulate + d.rank * c.accumulate + j
                for s in range(self.steps) for j in range(c.accumulate)]
        return order, mine

    def _batch(self, epoch: int, order: np.ndarray | None, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``g`` of the epoch: normalised, augmented (its own seeded generator), as tensors (N, 1, *S), (N, *S).

        Fresh patches from the training regions when there are some, else the stored tiles in ``order``.
        """
        c = self.config
        if self.regions is not None:
            return _region_batch(self.regions, c.batch_size, augment=self.augment,
                                 rng=np.random.default_rng([c.seed, 2, epoch, g]), pin=self.pin)
        idx = np.sort(order[g * c.batch_size : (g + 1) * c.batch_size])
        return _load_batch(self.parts["train"], idx, augment=self.augment,
                           rng=np.random.default_rng([c.seed, 1, epoch, g]), pin=self.pin)

    # ---------------------------------------------------------------------------------------- epochs
    def fit(self, *, progress: bool, log: Callable[[str], Any] | None) -> None:
        """Run epochs until ``epochs`` or the deadline; rank 0 writes the log and a checkpoint after each."""
        c, main = self.config, self.dist_info.main
        with contextlib.ExitStack() as stack:
            jsonl = self._open_log(stack) if main else None
            bar = _EpochBar(stack, self.steps) if progress else None
            while self.epoch < c.epochs:
                if self.best["state"] is not None and self._out_of_time():
                    self.stopped = "time"
                    break
                record, stop = self._epoch(self.epoch + 1, bar)
                if main:
                    self._report(record, jsonl, log)
                if stop:
                    self.stopped = "time"
                    break

    def _open_log(self, stack: contextlib.ExitStack) -> IO[str]:
        """The JSON-lines log, opened for writing, holding the records a resumed run's checkpoint knows."""
        jsonl = stack.enter_context(open(self.log_path, "w"))
        for record in self.history:  # a resumed run rewrites what its checkpoint knows, nothing more
            jsonl.write(json.dumps(record) + "\n")
        jsonl.flush()
        return jsonl

    def _epoch(self, epoch: int, bar: _EpochBar | None) -> tuple[dict[str, Any], bool]:
        """Train and validate one epoch, keep the best weights; returns its log record and whether time ran out."""
        c = self.config
        t_epoch = time.monotonic()
        if bar:
            bar.start(epoch, c.epochs, self.steps)
        loss_sum, batches, done, lr, stop = self._train_epoch(epoch, bar.show if bar else None)
        t_train = time.monotonic() - t_epoch
        mean_iou, score, per_phase = self._validate()
        _step_schedule(self.scheduler, c.schedule, mean_iou)
        self.epoch, self.train_seconds = epoch, self.train_seconds + t_train
        if round(score, 6) > self.best.get("score", self.best["mean_iou"]):
            self.best = {"epoch": epoch, "mean_iou": round(mean_iou, 6), "score": round(score, 6),
                         "per_phase": per_phase,
                         "state": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}}
        now = time.monotonic()
        record = {"epoch": epoch, "loss": loss_sum / max(batches, 1), "val_mean_iou": round(mean_iou, 6),
                  "val_score": round(score, 6), "val_iou": per_phase, "lr": lr, "steps": done, "partial": done < self.steps,
                  "seconds": round(now - t_epoch, 3), "train_seconds": round(t_train, 3),
                  "elapsed": round(self.elapsed(), 3), "world_size": self.dist_info.world}
        self.history.append(record)
        return record, stop

    def _report(self, record: Mapping[str, Any], jsonl: IO[str], log: Callable[[str], Any] | None) -> None:
        """After an epoch, on rank 0: the checkpoint, the log's line and the line of text for ``log``."""
        _write_checkpoint(self)
        jsonl.write(json.dumps(record) + "\n")
        jsonl.flush()
        if log is not None:
            log(_epoch_line(record, self.config.epochs, self.best["epoch"] == record["epoch"]))

    def _out_of_time(self) -> bool:
        """Past the deadline, as all processes agree (else one would wait for the others forever)."""
        d = self.dist_info
        flag = torch.tensor([time.monotonic() >= self.deadline], dtype=torch.int32, device=d.reduce_on(self.device))
        return bool(_reduce(flag, d, "max").item())

    # ---------------------------------------------------------------------------------------- steps
    def _train_epoch(
        self, epoch: int, show: Callable[[int, float], Any] | None,
    ) -> tuple[float, int, int, float, bool]:
        """One epoch of optimizer steps; returns (loss sum, batches, steps done, last lr, stop for time)."""
        c, d = self.config, self.dist_info
        self.model.train()
        self._freeze(epoch)
        order, mine = self._epoch_plan(epoch)
        scheduled = [g["lr"] for g in self.optimizer.param_groups]
        running = torch.zeros((), dtype=torch.float64, device=self.device)
        batches, done, stop = 0, 0, False
        # A CPU costs nothing to synchronise; a GPU would stall on every .item(), so check every few steps there.
        every = 1 if self.device.type == "cpu" else 8
        with _Prefetcher(lambda g: self._batch(epoch, order, g), mine, threads=c.loader_threads,
                         depth=2 * c.loader_threads + c.accumulate) as loader:
            for _ in range(self.steps):
                self._accumulate(loader, running)
                if self.drop_encoder_grads:
                    for param in (p for m in self.encoder for p in m.parameters()):
                        param.grad = None  # skipped by the optimizer: the encoder stays as it is
                batches += c.accumulate
                rates = self.scheduler.rates(self.progress()) if isinstance(self.scheduler, PolySchedule) else scheduled
                _set_rates(self.optimizer, rates, self.optimizer_steps, self.warmup_steps)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.optimizer_steps += 1
                done += 1
                if (done % every == 0 or done == self.steps) and self._check(running, batches, epoch, done, show):
                    stop = True
                    break
        lr = float(self.optimizer.param_groups[0]["lr"])
        for group, base in zip(self.optimizer.param_groups, scheduled):
            group["lr"] = base  # the schedule continues from the rate it set, not from the warm-up ramp
        totals = _reduce(torch.tensor([float(running), batches], dtype=torch.float64,
                                      device=d.reduce_on(self.device)), d)
        return float(totals[0]), int(totals[1]), done, lr, stop

    def _freeze(self, epoch: int) -> None:
        """Freeze the encoder (weights and normalisation statistics) in ``epoch`` if it is one of the first
        ``freeze_encoder_epochs`` (or always, with ``freeze_encoder``); train it again after them.

        One process sets ``requires_grad`` (no encoder gradients are computed); under torchrun, whose
        DistributedDataParallel expects every gradient it was built with, the encoder's gradients are dropped
        before each optimizer step instead.
        """
        c = self.config
        frozen = c.freeze_encoder or epoch <= c.freeze_encoder_epochs
        if c.freeze_encoder_epochs and not c.freeze_encoder:
            if self.dist_info.world == 1:
                set_trainable(self.encoder, not frozen)
            else:
                self.drop_encoder_grads = frozen
        if frozen:
            for module in self.encoder:
                module.eval()  # a frozen encoder keeps its normalisation statistics too

    def _accumulate(self, loader: Iterator[tuple[torch.Tensor, torch.Tensor]], running: torch.Tensor) -> None:
        """The forward and backward passes of one optimizer step: ``accumulate`` batches, their gradients summed.

        Under torchrun the processes synchronise gradients at the last of them only. Each batch's loss is added to
        ``running``.
        """
        c, d = self.config, self.dist_info
        for j in range(c.accumulate):
            x, y = next(loader)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            sync = j == c.accumulate - 1 or d.world == 1
            with contextlib.nullcontext() if sync else self.model.no_sync():
                with _autocast(self.device, self.bf16):
                    logits = self.model(x)
                loss = self.criterion(logits.float(), y)
                if self.adversary is not None:
                    loss = loss + self.adversary.generator_term(x, logits.float())
                (loss / c.accumulate if c.accumulate > 1 else loss).backward()
            if self.adversary is not None:
                self.adversary.discriminator_step(x, logits, y)
            running += loss.detach()

    def _check(
        self, running: torch.Tensor, batches: int, epoch: int, done: int, show: Callable[[int, float], Any] | None,
    ) -> bool:
        """After step ``done``: stop on a diverged loss (on any process), show progress; True when time is up."""
        d = self.dist_info
        value = float(running)
        flags = torch.tensor([time.monotonic() >= self.deadline, not math.isfinite(value)],
                             dtype=torch.int32, device=d.reduce_on(self.device))
        stop_now, diverged = (bool(f) for f in _reduce(flags, d, "max").tolist())
        if diverged:
            raise InputError(
                f"training diverged (loss {value / batches if math.isfinite(value) else value}) at epoch "
                f"{epoch}, step {done}: lower --lr (now {self.config.lr})"
            )
        if show is not None:
            show(done, value / batches)
        return stop_now

    def _validate(self) -> tuple[float, float, list[dict[str, Any]]]:
        """Validation mean IoU, the selection score and per-phase IoU and Euler error; each process scores its
        share of the tiles, and the counts are summed."""
        d, val = self.dist_info, self.parts["val"]
        _broadcast_buffers(self.net, d)  # score the weights rank 0 will save
        indices = np.arange(d.rank, len(val), d.world)
        confusion, euler_sums = _validation_counts(self.net, val, classes=self.classes, device=self.device,
                                                   batch_size=max(self.config.batch_size, 8), bf16=self.bf16,
                                                   indices=indices, ignore=self.ignore)
        on = d.reduce_on(self.device)
        confusion = _reduce(torch.from_numpy(confusion).to(on), d).cpu().numpy()
        euler_sums = _reduce(torch.from_numpy(euler_sums).to(on), d).cpu().numpy()
        iou, errors = iou_from_confusion(confusion), euler_error(euler_sums)
        mean_iou = float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0
        per_phase = [{"label": k, "name": self.phases.get(k, f"phase{k}"),
                      "iou": None if math.isnan(v) else round(float(v), 6),
                      "euler_error": None if math.isnan(e) else round(float(e), 6)}
                     for k, (v, e) in enumerate(zip(iou, errors))]
        return mean_iou, selection_score(iou, errors), per_phase


# --------------------------------------------------------------------------------------------- what a run shows
class _EpochBar:
    """The progress bar on stderr (rich): the steps of the current epoch and the running mean loss."""

    def __init__(self, stack: contextlib.ExitStack, steps: int) -> None:
        self.bar = stack.enter_context(_progress_bar())
        self.task = self.bar.add_task("epoch", total=steps, loss=float("nan"))

    def start(self, epoch: int, epochs: int, steps: int) -> None:
        self.bar.reset(self.task, total=steps, description=_epoch_of(epoch, epochs))

    def show(self, done: int, loss: float) -> None:
        self.bar.update(self.task, completed=done, loss=loss)


def _epoch_line(record: Mapping[str, Any], epochs: int, is_best: bool) -> str:
    phases = ", ".join(f"{p['name']} {p['iou']:.3f}" + _euler_text(p) for p in record["val_iou"]
                       if p["iou"] is not None)
    note = " (cut short by --max-minutes)" if record["partial"] else ""
    return (
        f"{_epoch_of(record['epoch'], epochs)}  loss {record['loss']:.4f}  val mean IoU {record['val_mean_iou']:.4f}"
        f"{' *' if is_best else ''}  [{phases}]  lr {record['lr']:.2e}  {record['seconds']:.1f} s{note}"
    )


def _epoch_of(epoch: int, epochs: int) -> str:
    """``epoch 3/50``, or ``epoch 3`` when the time budget, not the epochs, ends the run."""
    return f"epoch {epoch}" if epochs >= UNLIMITED_EPOCHS else f"epoch {epoch}/{epochs}"


def _euler_text(phase: Mapping[str, Any]) -> str:
    error = phase.get("euler_error")
    return "" if error is None else f" (Euler {100 * error:.0f}% off)"


def _progress_bar() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from rockseg.progress import stderr_progress

    return stderr_progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn())
