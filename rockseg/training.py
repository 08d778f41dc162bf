"""Train a segmentation network on a tile set and write a rockseg model file.

:func:`train` reads a tile set made by :func:`rockseg.tiling.make_tiles` into memory and trains a network from
:mod:`rockseg.models`: a "+"-sum of losses (cross-entropy, soft Dice, focal, log soft IoU; optional class weights),
Adam / AdamW / SGD with an optional learning-rate schedule and warm-up, gradient accumulation, bf16 autocast where
the hardware has it, and on-the-fly augmentation (:mod:`rockseg.augment`) prepared in a background thread while
the network steps. After every epoch it measures the validation mean IoU, keeps the best weights and writes a
checkpoint, so a killed run continues with ``resume=True``. ``max_minutes`` stops the run after that much wall time
(checked between steps) and still writes the best model so far, so a job under an HPC wall-time limit always ends
with a usable model.

Inputs are normalised with *global* intensity statistics, never per tile: those of the image each tile was cut from
(a tile set may hold tiles of several images), and the first image's statistics are written into the model file
and used by prediction.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the same call trains with DistributedDataParallel: each
process takes its share of every epoch's batches, validation counts are summed over the processes, and only rank 0
writes files.

Files written beside the model file ``MODEL.pt``:

``MODEL.log.jsonl``
    one JSON line per epoch: ``epoch``, ``loss`` (mean training loss), ``val_mean_iou``, ``val_iou`` (per phase),
    ``lr`` (learning rate of the epoch's last step), ``steps``, ``partial`` (cut short by ``max_minutes``),
    ``seconds`` (this epoch), ``train_seconds`` (its training steps, without validation), ``elapsed`` (since the
    first start, resumed runs included) and ``world_size``.
``MODEL.ckpt``
    the state after the last epoch (weights, optimizer, scheduler, random state, best weights, history), written
    atomically every epoch and loadable with ``torch.load(..., weights_only=True)``.
``MODEL.curve.png``
    the training curve: loss, and validation mean and per-phase IoU, per epoch.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rockseg import models
from rockseg.io import stores
from rockseg.augment import PRESETS as AUGMENT_PRESETS
from rockseg.augment import AugmentConfig, preset
from rockseg.augment import augment_batch as _augment
from rockseg.devices import available_cpus, resolve_device
from rockseg.errors import InputError, MissingInputError, OutputExistsError, did_you_mean
from rockseg.models import ARCHITECTURES, build_model, save_model_file
from rockseg.tiling import read_tiles
from rockseg.vocabulary import ACTIVATIONS, AUGMENTS, LOSS_TERMS, NORMS, OPTIMIZERS, PRECISIONS, SCHEDULES

#: Terms of ``--loss``; a loss is a "+"-sum of them, e.g. ``ce+dice`` or ``focal+dice``.
#: Laplace smoothing of the soft Dice and soft IoU: keeps a phase absent from a batch from dominating the loss.
SMOOTH = 1.0
#: Plateau schedule: the learning rate is multiplied by this when the validation mean IoU stops improving.
PLATEAU_FACTOR = 0.5
SGD_MOMENTUM = 0.9
CHECKPOINT_FORMAT = "rockseg-checkpoint"
CHECKPOINT_VERSION = 1
#: Settings that may change when a run is resumed (the rest must match the checkpoint).
RESUMABLE_CHANGES = ("epochs", "max_minutes", "device", "num_threads", "loader_threads")



def _choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise InputError(f"--{name} {value!r} is unknown{did_you_mean(value, choices)}: choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run; written into the model file's ``training`` summary.

    Attributes
    ----------
    arch : architecture name, a key of :data:`rockseg.models.ARCHITECTURES`.
    base_channels : channels of the first level of the network.
    depth : down-sampling steps; the tile size must be a multiple of the network's divisor (``2**depth`` for a
        UNet).
    norm : ``"batch"``, ``"instance"`` or ``"none"``.
    act : ``"relu"`` or ``"elu"``.
    encoder : backbone of the encoder (a key of ``rockseg.models.ENCODERS``, e.g. ``"resnet34"``), or None for the
        architecture's own.
    encoder_weights : local file of pretrained encoder weights (never downloaded).
    freeze_encoder : train only the decoder; the encoder's weights and normalisation statistics stay as loaded.
    epochs : maximum number of epochs.
    max_minutes : stop after this much wall time, minutes (checked between steps), keeping the best model so far.
        The validation pass of the interrupted epoch and writing the model come on top: leave a margin under a
        job's wall-time limit.
    batch_size : tiles per forward pass (per process under torchrun).
    accumulate : forward passes whose gradients are summed before each optimizer step.
    fraction : share of one pass over the training tiles done per epoch, 0 < fraction <= 1 (for huge tile sets).
    steps_per_epoch : optimizer steps per epoch; default one pass over the training tiles (times ``fraction``).
    lr : (initial) learning rate.
    optimizer : ``"adam"``, ``"adamw"`` or ``"sgd"`` (momentum 0.9, Nesterov).
    weight_decay : L2 (adam, sgd) or decoupled (adamw) weight decay; default 0, and 0.01 for adamw.
    schedule : ``"none"``; ``"plateau"`` (halve the rate when the validation mean IoU has not improved for
        ``patience`` epochs); ``"exp"`` (multiply by a constant each epoch, reaching ``min_lr`` at the last epoch);
        ``"cosine"`` (cosine annealing to ``min_lr`` with a warm restart every ``cosine_epochs`` epochs).
    min_lr : floor of the schedules.
    cosine_epochs : epochs between warm restarts of the cosine schedule.
    warmup_epochs : epochs over which the rate ramps up linearly from almost 0, step by step.
    patience : epochs without improvement before the plateau schedule lowers the rate.
    loss : a "+"-sum of ``ce`` (cross-entropy), ``dice`` (soft Dice), ``focal`` (focal loss) and ``logiou``
        (``-iou_alpha * log`` of the smoothed soft IoU), e.g. ``"ce+dice"`` or ``"ce+logiou"``.
    focal_gamma : focusing exponent of the focal loss (0 gives cross-entropy).
    iou_alpha : weight of the ``logiou`` term.
    class_weights : ``"balanced"`` (inverse class frequency of the training tiles, mean 1) or one weight per class,
        ``"1,2,5,5"``; applied to ``ce`` and ``focal``.
    augment : ``"none"``, ``"basic"`` (flips and 90° rotations) or ``"strong"`` (also small rotations, intensity
        scale/shift, gamma, noise and blur); see :mod:`rockseg.augment`.
    precision : ``"auto"`` (bf16 autocast on a CUDA GPU or a CPU with bf16 instructions, else float32),
        ``"float32"`` or ``"bf16"``.
    device : ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    seed : seed of weight initialisation, batch order and augmentation (>= 0); runs on one CPU are reproducible.
    num_threads : CPU threads for torch; default all cores available to the process (shared among the processes
        of a node under torchrun).
    loader_threads : background threads preparing batches (read, normalise, augment).
    """

    arch: str = "unet"
    base_channels: int = 16
    depth: int = 3
    norm: str = "batch"
    act: str = "relu"
    encoder: str | None = None
    encoder_weights: str | None = None
    freeze_encoder: bool = False
    epochs: int = 50
    max_minutes: float | None = None
    batch_size: int = 4
    accumulate: int = 1
    fraction: float = 1.0
    steps_per_epoch: int | None = None
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float | None = None
    schedule: str = "none"
    min_lr: float = 1e-5
    cosine_epochs: int = 10
    warmup_epochs: int = 0
    patience: int = 5
    loss: str = "ce"
    focal_gamma: float = 2.0
    iou_alpha: float = 1.0
    class_weights: str | None = None
    augment: str = "basic"
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    num_threads: int | None = None
    loader_threads: int = 1

    def __post_init__(self) -> None:
        # Older callers passed augment=True/False; paths and weight lists are kept as plain strings (JSON, model file).
        if isinstance(self.augment, bool):
            object.__setattr__(self, "augment", "basic" if self.augment else "none")
        if isinstance(self.encoder_weights, os.PathLike):
            object.__setattr__(self, "encoder_weights", os.fspath(self.encoder_weights))
        if isinstance(self.class_weights, (list, tuple)):
            object.__setattr__(self, "class_weights", ",".join(repr(float(w)) for w in self.class_weights))

    def check(self) -> None:
        """Raise :class:`InputError` for the first bad setting, naming the option and the fix."""
        _choice("arch", self.arch, list(ARCHITECTURES))
        parse_loss(self.loss)
        for name, value, choices in (("norm", self.norm, NORMS), ("act", self.act, ACTIVATIONS),
                                     ("optimizer", self.optimizer, OPTIMIZERS), ("schedule", self.schedule, SCHEDULES),
                                     ("precision", self.precision, PRECISIONS), ("augment", self.augment, AUGMENTS)):
            _choice(name, value, choices)
        if self.encoder is not None:
            encoders = list(getattr(models, "ENCODERS", ()))
            if not encoders:
                raise InputError(f"--encoder {self.encoder!r}: this rockseg has no encoder backbones: leave --encoder out")
            _choice("encoder", self.encoder, encoders)
        for name, value in (("base-channels", self.base_channels), ("depth", self.depth), ("epochs", self.epochs),
                            ("batch-size", self.batch_size), ("accumulate", self.accumulate),
                            ("cosine-epochs", self.cosine_epochs), ("loader-threads", self.loader_threads)):
            _check_int(name, value, 1)
        for name, value in (("steps-per-epoch", self.steps_per_epoch), ("num-threads", self.num_threads)):
            if value is not None:
                _check_int(name, value, 1)
        for name, value in (("warmup-epochs", self.warmup_epochs), ("patience", self.patience), ("seed", self.seed)):
            _check_int(name, value, 0)
        _check_number("lr", self.lr, positive=True, example="1e-3")
        _check_number("min-lr", self.min_lr, positive=False, example="1e-5")
        if self.schedule == "exp" and not 0 < self.min_lr <= self.lr:
            raise InputError(
                f"--min-lr {self.min_lr!r} must be above 0 and at most --lr {self.lr!r} for --schedule exp, e.g. 1e-5"
            )
        if self.weight_decay is not None:
            _check_number("weight-decay", self.weight_decay, positive=False, example="1e-4")
        _check_number("focal-gamma", self.focal_gamma, positive=False, example="2")
        _check_number("iou-alpha", self.iou_alpha, positive=True, example="1")
        if not (_is_number(self.fraction) and 0 < self.fraction <= 1):
            raise InputError(f"--fraction {self.fraction!r} must be above 0 and at most 1, e.g. 0.2 for a fifth of the tiles")
        if self.fraction != 1 and self.steps_per_epoch is not None:
            raise InputError(
                f"--fraction {self.fraction} and --steps-per-epoch {self.steps_per_epoch} both set the epoch length: "
                f"give only one of them"
            )
        if self.max_minutes is not None and not (_is_number(self.max_minutes) and self.max_minutes > 0):
            raise InputError(f"--max-minutes {self.max_minutes!r} must be a positive number of minutes, or left out")
        if self.encoder_weights is not None and not str(self.encoder_weights).strip():
            raise InputError("--encoder-weights is empty: give the path of a local weights file, or leave it out")
        for name, given in (("encoder-weights", self.encoder_weights is not None),
                            ("freeze-encoder", self.freeze_encoder)):
            if given and self.encoder is None:
                raise InputError(
                    f"--{name} needs a backbone encoder: add --encoder (one of "
                    f"{', '.join(getattr(models, 'ENCODERS', ())) or 'none in this rockseg'}), or leave --{name} out"
                )
        if self.encoder is not None and "encoder" not in inspect.signature(ARCHITECTURES[self.arch]).parameters:
            takes = [a for a, f in ARCHITECTURES.items() if "encoder" in inspect.signature(f).parameters]
            raise InputError(
                f"--arch {self.arch} takes no --encoder: leave --encoder out, or use one of {', '.join(takes)}"
            )
        parse_class_weights(self.class_weights)
        resolve_device(self.device)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(value)


def _check_number(name: str, value: Any, *, positive: bool, example: str) -> None:
    if not (_is_number(value) and (value > 0 if positive else value >= 0)):
        raise InputError(f"--{name} {value!r} must be a {'positive' if positive else 'non-negative'} number, e.g. {example}")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"--{name} {value!r} must be a whole number of at least {low}")


# --------------------------------------------------------------------------------------------- small helpers
def tile_for(size: int, dims: int, *, multiple: int = 1) -> int:
    """Recommended prediction tile edge for networks trained on patches of edge ``size``.

    The networks are fully convolutional, so prediction may use larger tiles than training: at least 64 voxels in
    3D and 256 in 2D, where the halo cut off each side wastes far less work than on a small training patch. The
    edge is rounded up to a ``multiple`` of the network's divisor.
    """
    tile = max(size, 64 if dims == 3 else 256)
    return -(-tile // multiple) * multiple


def halo_for(size: int) -> int:
    """Recommended prediction halo for a tile edge: about a sixth of it, even, at least 2 voxels."""
    return max(2, 2 * round(size / 12))


def _beside(out: str | os.PathLike[str], suffix: str) -> Path:
    p = Path(out)
    return p.with_name(f"{p.stem if p.suffix else p.name}{suffix}")


def log_path_for(out: str | os.PathLike[str]) -> Path:
    """The JSON-lines training log beside a model file: ``model.pt`` -> ``model.log.jsonl``."""
    return _beside(out, ".log.jsonl")


def checkpoint_path_for(out: str | os.PathLike[str]) -> Path:
    """The checkpoint beside a model file: ``model.pt`` -> ``model.ckpt``."""
    return _beside(out, ".ckpt")


def curve_path_for(out: str | os.PathLike[str]) -> Path:
    """The training-curve picture beside a model file: ``model.pt`` -> ``model.curve.png``."""
    return _beside(out, ".curve.png")


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-phase IoU from a (classes, classes) confusion matrix (rows truth, columns prediction).

    A phase that is neither in the truth nor in the prediction gets NaN.
    """
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


# --------------------------------------------------------------------------------------------- losses
def parse_loss(text: str) -> tuple[str, ...]:
    """The terms of a ``--loss`` value: ``"ce+dice"`` -> ``("ce", "dice")``; each of :data:`LOSS_TERMS`, once."""
    terms = tuple(t.strip().lower() for t in str(text).split("+"))
    for t in terms:
        if t not in LOSS_TERMS:
            raise InputError(
                f"--loss {text!r}: {t!r} is not a loss{did_you_mean(t, LOSS_TERMS)}: use one of "
                f"{', '.join(LOSS_TERMS)} or a sum of them such as ce+dice"
            )
    if len(set(terms)) < len(terms):
        raise InputError(f"--loss {text!r} names a term twice: give each of {', '.join(LOSS_TERMS)} at most once")
    return terms


def parse_class_weights(
    value: str | None, *, classes: int | None = None, counts: Sequence[int] | None = None, tiles: Any = "",
) -> list[float] | None:
    """Class weights from ``--class-weights``: None, ``"balanced"`` or ``"w0,w1,..."``.

    Parameters
    ----------
    value : the option's text.
    classes : number of classes; when given, a list must have one weight per class.
    counts : (classes,) voxel counts of each class in the training tiles, for ``"balanced"``: weights are the
        inverse frequencies normalised to mean 1 over the classes present (an absent class gets weight 1, it is
        never a target).
    tiles : the tile set, for messages.

    Returns
    -------
    list of floats (or None for no weighting, and for ``"balanced"`` when ``counts`` is not given).
    """
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    if text.lower() == "balanced":
        if counts is None:
            return None
        c = np.asarray(counts, np.float64)
        present = c > 0
        w = np.ones(len(c))
        w[present] = c[present].sum() / c[present]
        w[present] /= w[present].mean()
        return [float(x) for x in w]
    try:
        weights = [float(t) for t in text.split(",")]
    except ValueError:
        raise InputError(
            f"--class-weights {text!r} is neither 'balanced' nor a comma-separated list of numbers: "
            f"use e.g. balanced or 1,2,5,5"
        ) from None
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise InputError(f"--class-weights {text!r} must be numbers >= 0, not all 0: use e.g. 1,2,5,5")
    if classes is not None and len(weights) != classes:
        raise InputError(
            f"--class-weights {text!r} gives {len(weights)} weights but tile set {tiles} has {classes} classes: "
            f"give one weight per class, or --class-weights balanced"
        )
    return weights


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean over classes of the soft Dice coefficient, summed over the batch and space (smoothing 1).

    ``dice_c = (2 sum(p_c y_c) + 1) / (sum p_c + sum y_c + 1)`` with ``p`` the softmax of the logits
    (N, C, *S) and ``y`` the one-hot target (N, *S).
    """
    prob = logits.softmax(1)
    onehot = F.one_hot(target, prob.shape[1]).movedim(-1, 1).to(prob.dtype)
    axes = (0, *range(2, prob.ndim))
    inter = (prob * onehot).sum(axes)
    denom = prob.sum(axes) + onehot.sum(axes)
    return 1.0 - ((2.0 * inter + SMOOTH) / (denom + SMOOTH)).mean()


_soft_dice_loss = soft_dice_loss


def soft_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Smoothed soft IoU (Jaccard) averaged over classes, summed over the batch and space.

    ``iou_c = (sum(p_c y_c) + 1) / (sum(p_c + y_c - p_c y_c) + 1)``; returns the mean over classes.
    """
    prob = logits.softmax(1)
    onehot = F.one_hot(target, prob.shape[1]).movedim(-1, 1).to(prob.dtype)
    axes = (0, *range(2, prob.ndim))
    inter = (prob * onehot).sum(axes)
    union = prob.sum(axes) + onehot.sum(axes) - inter
    return ((inter + SMOOTH) / (union + SMOOTH)).mean()


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, *, gamma: float = 2.0, weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Focal loss of Lin et al. (2017): the mean of ``-w_y (1 - p_y)**gamma log p_y`` over voxels.

    With class weights ``w`` the mean is weighted like :func:`torch.nn.functional.cross_entropy`'s
    (divided by the sum of the weights of the targets), so ``gamma = 0`` gives exactly the weighted cross-entropy.
    """
    logp = F.log_softmax(logits, 1).gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -((1.0 - logp.exp()) ** gamma) * logp if gamma else -logp
    if weight is None:
        return loss.mean()
    w = weight.to(loss.dtype)[target]
    return (w * loss).sum() / w.sum()


def loss_function(
    kind: str, *, class_weights: Sequence[float] | None = None, focal_gamma: float = 2.0, iou_alpha: float = 1.0,
    device: torch.device | str = "cpu",
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss ``f(logits (N, C, *S) float, target (N, *S) int64) -> scalar`` for ``kind``.

    ``kind`` is a "+"-sum of :data:`LOSS_TERMS`; ``logiou`` contributes ``-iou_alpha * log(soft_iou)``, so
    ``"ce+logiou"`` is the cross-entropy + α·log smoothed IoU loss. Class weights apply to ``ce`` and ``focal``.
    """
    terms = parse_loss(kind)
    weight = torch.tensor(class_weights, dtype=torch.float32, device=device) if class_weights is not None else None

    def one(term: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if term == "ce":
            return F.cross_entropy(logits, target, weight=weight)
        if term == "dice":
            return soft_dice_loss(logits, target)
        if term == "focal":
            return focal_loss(logits, target, gamma=focal_gamma, weight=weight)
        return -iou_alpha * torch.log(soft_iou(logits, target))

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = one(terms[0], logits, target)
        for term in terms[1:]:
            total = total + one(term, logits, target)
        return total

    return loss


# --------------------------------------------------------------------------------------------- data
def augment_batch(
    images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, config: AugmentConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment a batch of tiles (default: random flips along every axis and 90° rotations); see
    :func:`rockseg.augment.augment_batch`."""
    return _augment(images, labels, rng, config=config or AUGMENT_PRESETS["basic"])


def _scale_of(stats: Mapping[str, Any]) -> tuple[np.float32, np.float32]:
    """``(p_low, 1/scale)`` exactly as :func:`rockseg.io.intensity.normalize` computes them, float32."""
    lo = float(stats["p_low"])
    scale = float(stats["p_high"]) - lo
    if scale <= 0:
        scale = float(stats.get("std") or 0.0) or 1.0
    return np.float32(lo), np.float32(1.0 / scale)


def tile_normalization(
    stats: Mapping[str, Any] | Sequence[Mapping[str, Any]], source: np.ndarray | None, n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile ``(p_low, 1/scale)`` (both (n,) float32) from one set of statistics or one per source."""
    if isinstance(stats, Mapping):
        stats, source = [stats], None
    table = np.array([_scale_of(s) for s in stats], np.float32).reshape(-1, 2)
    idx = np.zeros(n, np.intp) if source is None else np.asarray(source, np.intp)
    return table[idx, 0].copy(), table[idx, 1].copy()


def normalize_tiles(images: np.ndarray, lo: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """(N, *S) grey values -> float32 ``(x - lo[i]) * inv[i]`` per tile, equal to ``normalize`` tile by tile."""
    shape = (-1,) + (1,) * (images.ndim - 1)
    out = np.subtract(images, lo.reshape(shape), dtype=np.float32, casting="unsafe")
    out *= inv.reshape(shape)
    return out


@dataclass
class _Part:
    """The tiles of one part (train or val) in memory, with each tile's normalisation."""

    image: np.ndarray
    labels: np.ndarray
    lo: np.ndarray
    inv: np.ndarray

    def __len__(self) -> int:
        return len(self.image)


def _read_parts(path: Any, attrs: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, _Part], list]:
    """The train and val parts, and the list of per-source statistics (the first goes into the model file)."""
    sources = attrs.get("sources")
    parts = {}
    if isinstance(sources, list) and sources and all(isinstance(s, Mapping) and "intensity" in s for s in sources):
        stats = [s["intensity"] for s in sources]
    else:
        stats = [attrs[stores.ATTR_INTENSITY]]
    for part in ("train", "val"):
        image = arrays[f"{part}/image"]
        source = arrays.get(f"{part}/source")
        if source is not None and len(source) and int(np.max(source)) >= len(stats):
            raise InputError(
                f"tile set {path}: {part}/source refers to source {int(np.max(source))} but only {len(stats)} "
                f"sources have intensity statistics: re-make it with 'rockseg tile'"
            )
        lo, inv = tile_normalization(stats, source if len(stats) > 1 else None, len(image))
        parts[part] = _Part(image, arrays[f"{part}/labels"], lo, inv)
    return parts, stats


class _Prefetcher:
    """Prepare items in background threads, in order, at most ``depth`` ahead of the consumer.

    NumPy releases the GIL for the copying, normalising and resampling of a batch, so this overlaps with the
    network's step. Each item is computed from its key alone, so the result does not depend on thread timing.
    """

    def __init__(self, fn: Callable[[Any], Any], keys: Iterable[Any], *, threads: int = 1, depth: int = 2) -> None:
        self._fn, self._keys = fn, iter(keys)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rockseg-batches")
        self._pending: deque[Future[Any]] = deque()
        for _ in range(max(1, depth)):
            self._submit()

    def _submit(self) -> None:
        for key in self._keys:
            self._pending.append(self._pool.submit(self._fn, key))
            return

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if not self._pending:
            raise StopIteration
        item = self._pending.popleft().result()
        self._submit()
        return item

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> _Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- devices, processes
@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _autocast(device: torch.device, bf16: bool | None = None) -> contextlib.AbstractContextManager[Any]:
    if bf16 is None:
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether training runs under bf16 autocast: ``auto`` picks it on CUDA GPUs and CPUs with bf16 instructions."""
    if precision == "float32":
        return False
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            if precision == "bf16":
                raise InputError(f"--precision bf16: GPU {device} has no bf16 support: use --precision float32")
            return False
        return True
    if precision == "bf16":
        return True
    from rockseg.inference import cpu_has_bf16  # bf16 without the instructions is emulated: slower than float32

    return cpu_has_bf16()


@dataclass(frozen=True)
class _Dist:
    """This process's place in a torchrun job (world 1 when not under torchrun)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world: int = 1
    owned: bool = False  # the process group was created here, and is destroyed here

    @property
    def main(self) -> bool:
        return self.rank == 0


def _distributed_env() -> tuple[int, int, int, int]:
    try:
        return tuple(int(os.environ.get(k, d)) for k, d in  # type: ignore[return-value]
                     (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1)))
    except ValueError:
        raise InputError("WORLD_SIZE, RANK, LOCAL_RANK or LOCAL_WORLD_SIZE is not a whole number: launch with torchrun") from None


def _start_distributed(device: torch.device) -> _Dist:
    world, rank, local_rank, local_world = _distributed_env()
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_available():
        raise InputError(f"WORLD_SIZE is {world} but this torch has no torch.distributed: run one process")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(world=dist.get_world_size(), rank=dist.get_rank(), local_rank=local_rank,
                 local_world=max(1, local_world), owned=owned)


def _reduce(tensor: torch.Tensor, dist_info: _Dist, op: str = "sum") -> torch.Tensor:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


# --------------------------------------------------------------------------------------------- evaluation
def evaluate(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, *,
    stats: Mapping[str, Any] | Sequence[Mapping[str, Any]], classes: int, device: torch.device, batch_size: int = 8,
    source: np.ndarray | None = None, bf16: bool | None = None,
) -> np.ndarray:
    """Confusion matrix (classes, classes) int64 of ``model`` on tiles (rows truth, columns prediction).

    Parameters
    ----------
    images : (N, *patch) raw grey values; normalised here with ``stats``.
    labels : (N, *patch) integer labels 0..classes-1.
    stats : intensity statistics of all tiles, or a list of them indexed by ``source``.
    source : (N,) index of each tile's statistics in ``stats`` (when ``stats`` is a list).
    bf16 : run under bf16 autocast; default on CUDA GPUs that support it.
    """
    lo, inv = tile_normalization(stats, source, len(images))
    return _confusion(model, _Part(images, labels, lo, inv), classes=classes, device=device,
                      batch_size=batch_size, bf16=bf16)


def _confusion(
    model: nn.Module, part: _Part, *, classes: int, device: torch.device, batch_size: int, bf16: bool | None,
    indices: np.ndarray | None = None,
) -> np.ndarray:
    model.eval()
    idx_all = np.arange(len(part)) if indices is None else indices
    confusion = torch.zeros(classes * classes, dtype=torch.int64, device=device)
    with torch.no_grad():
        for start in range(0, len(idx_all), batch_size):
            idx = idx_all[start : start + batch_size]
            x = torch.from_numpy(normalize_tiles(part.image[idx], part.lo[idx], part.inv[idx]))
            x = x.unsqueeze(1).to(device, non_blocking=True)
            y = torch.from_numpy(part.labels[idx].astype(np.int64)).to(device)
            with _autocast(device, bf16):
                pred = model(x).argmax(1)
            confusion += torch.bincount((y * classes + pred).ravel(), minlength=classes * classes)
    return confusion.reshape(classes, classes).cpu().numpy()


# --------------------------------------------------------------------------------------------- model set-up
def training_memory_format(dims: int) -> torch.memory_format:
    """Channels-last for 3D networks: a 3D UNet trains 1.5x faster so on an AVX2 CPU (1.2 against 1.8 s per
    step of 4 tiles of 48^3, base 16); 2D gains nothing measurable, so 2D keeps the default layout."""
    return torch.channels_last_3d if dims == 3 else torch.preserve_format


def _build(config: TrainConfig, arch_args: Mapping[str, Any], weights_file: Path | None) -> tuple[nn.Module, dict]:
    """Build the network (weights from the seeded torch RNG), load encoder weights and freeze as asked."""
    model = build_model(config.arch, **arch_args)
    info: dict[str, Any] = {}
    if weights_file is not None:
        loaded = models.load_encoder_weights(model, weights_file)
        info["encoder_weights"] = {"path": str(weights_file.resolve()), "sha256": models.file_sha256(weights_file),
                                   # counts only: a deep file in a shallow model skips ~150 tensor names
                                   **{k: len(v) if isinstance(v, list) else _plain(v) for k, v in loaded.items()}}
    if config.freeze_encoder:
        info["frozen_parameters"] = int(models.freeze_encoder(model))
    return model, info


def _plain(value: Any) -> Any:
    """A JSON/weights_only-safe copy of a small summary (dicts, lists, numbers, strings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


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


# --------------------------------------------------------------------------------------------- the run
def train(
    tiles: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    config: TrainConfig,
    dims: int | None = None,
    progress: bool = False,
    log: Callable[[str], Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Train a network on a tile set and write the best model (by validation mean IoU) as one model file.

    Parameters
    ----------
    tiles : path of a tile set written by :func:`rockseg.tiling.make_tiles`.
    out : path of the model file to write (``.pt``); the log, checkpoint and curve go beside it (module docstring).
    config : the training settings.
    dims : 2 or 3, the model's spatial dimensions; checked against the tile set (default: the tile set's).
    progress : show a progress bar (rich) on stderr.
    log : called with one line of text per epoch (e.g. ``print``).
    overwrite : replace an existing model file and checkpoint (start again).
    resume : continue from the checkpoint beside ``out`` if there is one (else start), with the same settings
        except ``epochs``, ``max_minutes``, ``device`` and the thread counts. A run killed mid-epoch restarts that
        epoch; on one CPU the result equals that of a run never stopped.

    Returns
    -------
    dict : the training summary also stored in the model file (``config``, ``epochs_run``, ``best_epoch``,
        ``best_val_mean_iou``, ``val_iou``, ``stopped`` ("epochs" or "time"), ``seconds``, ``tiles``,
        ``world_size``, ``resumed_from``...), plus ``epochs`` (same as ``epochs_run``), ``model``, ``log``,
        ``checkpoint``, ``curve`` (the paths written) and ``rank``.

    Raises
    ------
    InputError
        for a bad setting, a tile set that does not match (``dims``, a tile size the network cannot divide, a
        class-weight count), a checkpoint written with other settings, or a CUDA device that is not there;
        checked before training starts.
    MissingInputError
        for a missing tile set or encoder-weights file.
    OutputExistsError
        if ``out`` (or a checkpoint of an earlier run) exists and neither ``overwrite`` nor ``resume`` is given.
    """
    t0 = time.monotonic()
    config.check()
    device = resolve_device(config.device)
    out_path, ckpt_path = _check_outputs(out, overwrite=overwrite, resume=resume)
    attrs, arrays = read_tiles(tiles)
    tile_dims, size, classes = int(attrs["dims"]), int(attrs["size"]), int(attrs["classes"])
    if dims is not None and dims != tile_dims:
        raise InputError(
            f"--dims {dims} does not match tile set {tiles}, which holds {tile_dims}D tiles: "
            f"drop --dims or re-make the tiles with 'rockseg tile --dims {dims}'"
        )
    arch_args: dict[str, Any] = dict(spatial_dims=tile_dims, in_channels=1, classes=classes,
                                     base_channels=config.base_channels, depth=config.depth, norm=config.norm,
                                     act=config.act)
    if config.encoder is not None:
        arch_args["encoder"] = config.encoder  # only when given: architectures without encoders take no such argument
    divisor = models.tile_multiple(config.arch, arch_args)
    if size % divisor:
        raise InputError(
            f"tile set {tiles} has tiles of {size} voxels but --arch {config.arch} with --depth {config.depth} "
            f"needs a multiple of {divisor}: lower --depth or re-make the tiles with a --size that is a multiple of it"
        )
    parts, source_stats = _read_parts(tiles, attrs, arrays)
    counts = (attrs.get("class_counts") or {}).get("train")
    if not (isinstance(counts, list) and len(counts) == classes):
        counts = np.bincount(parts["train"].labels.ravel(), minlength=classes)[:classes].tolist()
    class_weights = parse_class_weights(config.class_weights, classes=classes, counts=counts, tiles=tiles)
    weights_file = None
    if config.encoder_weights is not None:
        weights_file = Path(config.encoder_weights)
        if not weights_file.is_file():
            raise MissingInputError(
                f"--encoder-weights {weights_file} does not exist: give a local weights file (nothing is downloaded)"
            )
    phases = {int(k): str(v) for k, v in attrs[stores.ATTR_PHASES].items()}

    dist_info = _start_distributed(device)
    try:
        if dist_info.world > 1 and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", dist_info.local_rank)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        bf16 = use_bf16(config.precision, device)
        if device.type == "cpu":
            threads = config.num_threads or max(1, available_cpus() // dist_info.local_world)
        else:
            threads = config.num_threads or torch.get_num_threads()
        fingerprint = {**{k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES},
                       "tiles": str(Path(tiles).resolve()), "tile_counts": [len(parts["train"]), len(parts["val"])],
                       "world_size": dist_info.world}
        checkpoint = _load_checkpoint(ckpt_path, fingerprint) if resume and ckpt_path.exists() else None
        if dist_info.world > 1:
            import torch.distributed as dist

            dist.barrier()  # every process has checked its inputs before rank 0 writes anything
        fork_devices = [device.index or 0] if device.type == "cuda" else []
        # fork_rng keeps the caller's global torch RNG state untouched while the seed fixes weight initialisation.
        with _torch_threads(threads), torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(config.seed)
            net, setup = _build(config, arch_args, weights_file)
            run = _Run(
                net.to(device, memory_format=training_memory_format(tile_dims)), parts, config=config,
                classes=classes, phases=phases, device=device, bf16=bf16, class_weights=class_weights,
                dist_info=dist_info, fingerprint=fingerprint, ckpt_path=ckpt_path, log_path=log_path_for(out_path),
                t0=t0,
            )
            if checkpoint is not None:
                run.restore(checkpoint)
            if log is not None and checkpoint is not None and dist_info.main:
                log(f"resuming {ckpt_path} after epoch {checkpoint['epoch']}")
            run.fit(progress=progress and dist_info.main, log=log if dist_info.main else None)
        best = run.best
        net.load_state_dict(best["state"])
        tile = tile_for(size, tile_dims, multiple=divisor)
        training = {
            "config": asdict(config),
            "epochs_run": run.epoch,
            "steps": run.optimizer_steps,
            "stopped": run.stopped,
            "best_epoch": best["epoch"],
            "best_val_mean_iou": best["mean_iou"],
            "val_iou": best["per_phase"],
            "seconds": round(time.monotonic() - t0, 3),
            "elapsed": round(run.elapsed(), 3),
            "train_seconds": round(run.train_seconds, 3),
            "tiles": str(Path(tiles).resolve()),
            "train_tiles": len(parts["train"]),
            "val_tiles": len(parts["val"]),
            "tile_split": attrs.get("split"),
            "tile_sources": len(source_stats),
            "loss_terms": list(parse_loss(config.loss)),
            "class_weights": class_weights,
            "augment": asdict(preset(config.augment)),
            "precision": "bf16" if bf16 else "float32",
            "device": str(device),
            "threads": int(threads),
            "world_size": dist_info.world,
            "effective_batch": config.batch_size * config.accumulate * dist_info.world,
            "resumed_from": None if checkpoint is None else int(checkpoint["epoch"]),
            "divisor": divisor,
            **setup,
        }
        paths = {"model": str(out_path), "log": str(log_path_for(out_path)), "checkpoint": str(ckpt_path),
                 "curve": str(curve_path_for(out_path))}
        if dist_info.main:
            save_model_file(
                out_path, net.cpu(), arch=config.arch, arch_args=arch_args, spatial_dims=tile_dims, in_channels=1,
                phases=phases, normalization=dict(source_stats[0]), tile=tile, halo=halo_for(tile),
                training=_plain(training),
            )
            write_curve(curve_path_for(out_path), run.history, title=f"{out_path.name}: {config.arch}, {config.loss}")
        if dist_info.world > 1:
            import torch.distributed as dist

            dist.barrier()  # no process reports success before the model file is there
        return {**training, "epochs": run.epoch, **paths, "rank": dist_info.rank}
    finally:
        if dist_info.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def _check_outputs(out: Any, *, overwrite: bool, resume: bool) -> tuple[Path, Path]:
    ckpt = checkpoint_path_for(out)
    if resume and ckpt.exists():
        return stores.check_new_output(out, overwrite=True), ckpt
    out_path = stores.check_new_output(out, overwrite=overwrite)
    if ckpt.exists() and not overwrite:
        raise OutputExistsError(
            f"checkpoint {ckpt} of an earlier run exists: pass --resume to continue it, or --overwrite to start again"
        )
    return out_path, ckpt


def _load_checkpoint(path: Path, fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """Read a checkpoint safely and check it was written with the same settings."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"checkpoint {path} does not load ({first[:160]}): start again with --overwrite instead of --resume"
        ) from None
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a rockseg checkpoint: move it away, or start again with --overwrite")
    if int(ckpt.get("format_version", 0)) > CHECKPOINT_VERSION:
        raise InputError(f"checkpoint {path} is from a newer rockseg: upgrade rockseg, or start again with --overwrite")
    old = ckpt.get("settings", {})
    coarse = ("tiles", "tile_counts", "world_size")  # the coarsest difference is the one to report
    for key in sorted(set(old) | set(fingerprint), key=lambda k: (k not in coarse, coarse.index(k) if k in coarse else 0, k)):
        if old.get(key) != fingerprint.get(key):
            what = {"tiles": "tile set", "tile_counts": "tile counts", "world_size": "number of processes"}.get(
                key, f"--{key.replace('_', '-')}")
            raise InputError(
                f"checkpoint {path} was written with {what} {old.get(key)!r}, not {fingerprint.get(key)!r}: "
                f"resume with the same settings, or start again with --overwrite"
            )
    return dict(ckpt)


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
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "mean_iou": -1.0, "per_phase": [], "state": None})
    previous_elapsed: float = 0.0
    train_seconds: float = 0.0

    def __post_init__(self) -> None:
        c = self.config
        self.model: nn.Module = self.net
        if self.dist_info.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = _optimizer(c, params)
        self.scheduler = _scheduler(c, self.optimizer)
        self.criterion = loss_function(c.loss, class_weights=self.class_weights, focal_gamma=c.focal_gamma,
                                       iou_alpha=c.iou_alpha, device=self.device)
        self.augment = preset(c.augment)
        n_train = len(self.parts["train"])
        per_step = c.accumulate * self.dist_info.world  # forward passes per optimizer step, all processes
        if c.steps_per_epoch is not None:
            self.steps = c.steps_per_epoch
        else:
            passes = math.ceil(c.fraction * math.ceil(n_train / c.batch_size))
            self.steps = max(1, math.ceil(passes / per_step))
        self.warmup_steps = c.warmup_epochs * self.steps
        self.deadline = self.t0 + 60.0 * c.max_minutes if c.max_minutes is not None else math.inf
        self.pin = self.device.type == "cuda"

    # ---------------------------------------------------------------------------------------- state
    def elapsed(self) -> float:
        return self.previous_elapsed + time.monotonic() - self.t0

    def restore(self, ckpt: Mapping[str, Any]) -> None:
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        rng = ckpt.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and rng.get("cuda"):
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.epoch, self.optimizer_steps = int(ckpt["epoch"]), int(ckpt["optimizer_steps"])
        self.history = [dict(r) for r in ckpt["history"]]
        self.best = dict(ckpt["best"])
        self.previous_elapsed = float(ckpt.get("elapsed", 0.0))
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))

    def _write_checkpoint(self) -> None:
        payload = {
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
            "settings": dict(self.fingerprint), "epoch": self.epoch, "optimizer_steps": self.optimizer_steps,
            "model": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": {"torch": torch.get_rng_state(),
                    **({"cuda": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {})},
            "best": self.best, "history": self.history,
            "elapsed": self.elapsed(), "train_seconds": self.train_seconds,
        }
        tmp = self.ckpt_path.with_name(f".{self.ckpt_path.name}.partial")
        torch.save(payload, tmp)
        os.replace(tmp, self.ckpt_path)

    # ---------------------------------------------------------------------------------------- batches
    def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, list[int]]:
        """Tile order of the epoch (all processes) and the global indices of this process's batches."""
        c, d = self.config, self.dist_info
        n_train = len(self.parts["train"])
        total = self.steps * c.accumulate * d.world
        rng = np.random.default_rng([c.seed, 0, epoch])
        passes = math.ceil(total * c.batch_size / n_train)
        order = np.concatenate([rng.permutation(n_train) for _ in range(passes)])
        # Optimizer step s takes batches s*W*A ... (s+1)*W*A - 1 of all processes; process r the r-th run of A.
        mine = [s * d.world * c.accumulate + d.rank * c.accumulate + j
                for s in range(self.steps) for j in range(c.accumulate)]
        return order, mine

    def _batch(self, epoch: int, order: np.ndarray, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``g`` of the epoch: normalised, augmented (its own seeded generator), as tensors (N, 1, *S), (N, *S)."""
        c, part = self.config, self.parts["train"]
        idx = np.sort(order[g * c.batch_size : (g + 1) * c.batch_size])
        img = normalize_tiles(part.image[idx], part.lo[idx], part.inv[idx])
        lab = part.labels[idx]
        if self.augment.active:
            img, lab = _augment(img, lab, np.random.default_rng([c.seed, 1, epoch, g]), config=self.augment)
        x = torch.from_numpy(np.ascontiguousarray(img)).unsqueeze(1)
        y = torch.from_numpy(lab.astype(np.int64))
        if self.pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    # ---------------------------------------------------------------------------------------- epochs
    def fit(self, *, progress: bool, log: Callable[[str], Any] | None) -> None:
        c, main = self.config, self.dist_info.main
        bar = _progress_bar() if progress else None
        with contextlib.ExitStack() as stack:
            jsonl = None
            if main:
                jsonl = stack.enter_context(open(self.log_path, "w"))
                for record in self.history:  # a resumed run rewrites what its checkpoint knows, nothing more
                    jsonl.write(json.dumps(record) + "\n")
                jsonl.flush()
            if bar:
                stack.enter_context(bar)
                task = bar.add_task("epoch", total=self.steps, loss=float("nan"))
            while self.epoch < c.epochs:
                if self.best["state"] is not None and self._out_of_time():
                    self.stopped = "time"
                    break
                epoch = self.epoch + 1
                t_epoch = time.monotonic()
                if bar:
                    bar.reset(task, total=self.steps, description=f"epoch {epoch}/{c.epochs}")
                loss_sum, batches, done, lr, stop = self._train_epoch(
                    epoch, (lambda n, m: bar.update(task, completed=n, loss=m)) if bar else None)
                t_train = time.monotonic() - t_epoch
                mean_iou, per_phase = self._validate()
                if self.scheduler is not None:
                    if c.schedule == "plateau":
                        self.scheduler.step(mean_iou)
                    else:
                        self.scheduler.step()
                self.epoch, self.train_seconds = epoch, self.train_seconds + t_train
                if round(mean_iou, 6) > self.best["mean_iou"]:
                    self.best = {"epoch": epoch, "mean_iou": round(mean_iou, 6), "per_phase": per_phase,
                                 "state": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}}
                now = time.monotonic()
                record = {"epoch": epoch, "loss": loss_sum / max(batches, 1), "val_mean_iou": round(mean_iou, 6),
                          "val_iou": per_phase, "lr": lr, "steps": done, "partial": done < self.steps,
                          "seconds": round(now - t_epoch, 3), "train_seconds": round(t_train, 3),
                          "elapsed": round(self.elapsed(), 3), "world_size": self.dist_info.world}
                self.history.append(record)
                if main:
                    self._write_checkpoint()
                    jsonl.write(json.dumps(record) + "\n")
                    jsonl.flush()
                    if log is not None:
                        log(_epoch_line(record, c.epochs, self.best["epoch"] == epoch))
                if stop:
                    self.stopped = "time"
                    break

    def _out_of_time(self) -> bool:
        """Past the deadline, as all processes agree (else one would wait for the others forever)."""
        d = self.dist_info
        flag = torch.tensor([time.monotonic() >= self.deadline], dtype=torch.int32,
                            device=self.device if d.world > 1 else "cpu")
        return bool(_reduce(flag, d, "max").item())

    def _train_epoch(
        self, epoch: int, show: Callable[[int, float], Any] | None,
    ) -> tuple[float, int, int, float, bool]:
        """One epoch of optimizer steps; returns (loss sum, batches, steps done, last lr, stop for time)."""
        c, d = self.config, self.dist_info
        self.model.train()
        if c.freeze_encoder:
            self.net.encoder.eval()  # a frozen encoder keeps its normalisation statistics too
        order, mine = self._epoch_plan(epoch)
        scheduled = [g["lr"] for g in self.optimizer.param_groups]
        running = torch.zeros((), dtype=torch.float64, device=self.device)
        batches, done, stop = 0, 0, False
        # A CPU costs nothing to synchronise; a GPU would stall on every .item(), so check every few steps there.
        every = 1 if self.device.type == "cpu" else 8
        with _Prefetcher(lambda g: self._batch(epoch, order, g), mine, threads=c.loader_threads,
                         depth=2 * c.loader_threads + c.accumulate) as loader:
            for step in range(self.steps):
                for j in range(c.accumulate):
                    x, y = next(loader)
                    x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                    sync = j == c.accumulate - 1 or d.world == 1
                    with contextlib.nullcontext() if sync else self.model.no_sync():
                        with _autocast(self.device, self.bf16):
                            logits = self.model(x)
                        loss = self.criterion(logits.float(), y)
                        (loss / c.accumulate if c.accumulate > 1 else loss).backward()
                    running += loss.detach()
                    batches += 1
                if self.optimizer_steps < self.warmup_steps:
                    ramp = (self.optimizer_steps + 1) / self.warmup_steps
                    for group, lr in zip(self.optimizer.param_groups, scheduled):
                        group["lr"] = lr * ramp
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.optimizer_steps += 1
                done += 1
                if done % every == 0 or done == self.steps:
                    value = float(running)
                    flags = torch.tensor([time.monotonic() >= self.deadline, not math.isfinite(value)],
                                         dtype=torch.int32, device=self.device if d.world > 1 else "cpu")
                    stop_now, diverged = (bool(f) for f in _reduce(flags, d, "max").tolist())
                    if diverged:
                        raise InputError(
                            f"training diverged (loss {value / batches if math.isfinite(value) else value}) at epoch "
                            f"{epoch}, step {done}: lower --lr (now {c.lr})"
                        )
                    if show is not None:
                        show(done, value / batches)
                    if stop_now:
                        stop = True
                        break
        lr = float(self.optimizer.param_groups[0]["lr"])
        for group, base in zip(self.optimizer.param_groups, scheduled):
            group["lr"] = base  # the schedule continues from the rate it set, not from the warm-up ramp
        totals = _reduce(torch.tensor([float(running), batches], dtype=torch.float64,
                                      device=self.device if d.world > 1 else "cpu"), d)
        return float(totals[0]), int(totals[1]), done, lr, stop

    def _validate(self) -> tuple[float, list[dict[str, Any]]]:
        d, val = self.dist_info, self.parts["val"]
        if d.world > 1:
            import torch.distributed as dist

            # BatchNorm statistics differ by a step between processes: score the weights rank 0 will save.
            for buffer in self.net.buffers():
                dist.broadcast(buffer, 0)
        indices = np.arange(d.rank, len(val), d.world)
        confusion = _confusion(self.net, val, classes=self.classes, device=self.device,
                               batch_size=max(self.config.batch_size, 8), bf16=self.bf16, indices=indices)
        confusion = _reduce(torch.from_numpy(confusion).to(self.device if d.world > 1 else "cpu"), d).cpu().numpy()
        iou = iou_from_confusion(confusion)
        mean_iou = float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0
        per_phase = [{"label": k, "name": self.phases.get(k, f"phase{k}"),
                      "iou": None if math.isnan(v) else round(float(v), 6)} for k, v in enumerate(iou)]
        return mean_iou, per_phase


def _epoch_line(record: Mapping[str, Any], epochs: int, is_best: bool) -> str:
    phases = ", ".join(f"{p['name']} {p['iou']:.3f}" for p in record["val_iou"] if p["iou"] is not None)
    note = " (cut short by --max-minutes)" if record["partial"] else ""
    return (
        f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f}  val mean IoU {record['val_mean_iou']:.4f}"
        f"{' *' if is_best else ''}  [{phases}]  lr {record['lr']:.2e}  {record['seconds']:.1f} s{note}"
    )


def _progress_bar() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from rockseg.progress import stderr_progress

    return stderr_progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn())


def write_curve(path: str | os.PathLike[str], history: Sequence[Mapping[str, Any]], *, title: str = "") -> Path:
    """Draw the training curve (loss; validation mean and per-phase IoU, per epoch) as a PNG, atomically.

    Parameters
    ----------
    path : the PNG to write.
    history : the epoch records of the training log (``epoch``, ``loss``, ``val_mean_iou``, ``val_iou``).
    title : the figure's title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    p = Path(path)
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)  # a bare Figure with the Agg canvas: no pyplot state, never a window
    ax_loss, ax_iou = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["loss"] for r in history], "o-", color="black", markersize=3)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_iou.plot(epochs, [r["val_mean_iou"] for r in history], "o-", color="black", linewidth=2, markersize=3,
                label="mean")
    names = {p_["label"]: p_["name"] for r in history for p_ in r["val_iou"]}
    for label, name in sorted(names.items()):
        values = [next((q["iou"] for q in r["val_iou"] if q["label"] == label), None) for r in history]
        ax_iou.plot(epochs, [np.nan if v is None else v for v in values], ".-", linewidth=1, label=f"{label} {name}")
    ax_iou.set(xlabel="epoch", ylabel="validation IoU", title="validation IoU", ylim=(0, 1.02))
    ax_iou.legend(fontsize=8, loc="lower right")
    for ax in (ax_loss, ax_iou):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if epochs:
            ax.set_xlim(0.5, max(epochs) + 0.5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.86, wspace=0.22)  # fixed: layout engines are slow
    tmp = p.with_name(f".{p.name}.partial")
    fig.savefig(tmp, format="png")
    os.replace(tmp, p)
    return p
