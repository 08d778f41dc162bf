"""The settings of a training run (:class:`TrainConfig`) and their checks, and what follows from them.

:class:`TrainConfig` is a frozen dataclass written into the model file; :meth:`TrainConfig.check` rejects a bad
setting before any work starts, naming the option and the fix. :func:`tile_for` and :func:`halo_for` recommend the
prediction tile and halo the model file records; :func:`log_path_for`, :func:`checkpoint_path_for` and
:func:`curve_path_for` name the files written beside a model file.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rockseg import models
from rockseg.devices import resolve_device
from rockseg.errors import InputError, did_you_mean
from rockseg.models import ARCHITECTURES
from rockseg.training.losses import parse_class_weights, parse_loss
from rockseg.vocabulary import ACTIVATIONS, AUGMENTS, NORMS, OPTIMIZERS, PRECISIONS, SAMPLINGS, SCHEDULES


def _choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise InputError(f"--{name} {value!r} is unknown{did_you_mean(value, choices)}: choose one of {', '.join(choices)}")


#: Epochs of a run without ``--epochs`` or ``--max-minutes``.
DEFAULT_EPOCHS = 50
#: Epochs of a run with ``--max-minutes`` and without ``--epochs``: in effect no limit, the time budget decides.
UNLIMITED_EPOCHS = 1_000_000
#: ``--arch`` values training takes beyond :data:`rockseg.models.ARCHITECTURES`: ``pix2pix`` trains a ``unet``
#: generator against a PatchGAN discriminator (:mod:`rockseg.training.adversarial`) and writes the generator.
TRAINING_ONLY_ARCHS = {"pix2pix": "unet"}
#: The network settings an ``init`` model file decides when they are left None, and their defaults without one.
NETWORK_DEFAULTS = {"arch": "unet", "base_channels": 16, "depth": None, "norm": "batch", "act": "relu"}


def network_arch(arch: str) -> str:
    """The architecture of :data:`rockseg.models.ARCHITECTURES` a training ``--arch`` builds (pix2pix: unet)."""
    return TRAINING_ONLY_ARCHS.get(arch, arch)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run; written into the model file's ``training`` summary.

    Attributes
    ----------
    arch : architecture name, a key of :data:`rockseg.models.ARCHITECTURES`, or ``"pix2pix"`` (a ``unet``
        generator trained against a PatchGAN discriminator; the model file holds the generator as a ``unet``).
    base_channels : channels of the first level of the network.
    depth : down-sampling steps; the tile size must be a multiple of the network's divisor (``2**depth`` for a
        UNet). None (the default): planned from the tile size, see :mod:`rockseg.training.planning`.
    norm : ``"batch"``, ``"instance"`` or ``"none"``.
    act : ``"relu"`` or ``"elu"``. These five network settings (:data:`NETWORK_DEFAULTS`) may be left None: the
        ``init`` model's, or the defaults without one. Given with ``init``, each must equal the init model's.
    init : a rockseg model file (or a shipped model's name, ``"default"`` the shipped default) whose weights start
        the run instead of random ones (fine-tuning); its network settings are used. For a tile set with another
        number of phases the output layer is new, the rest kept (:mod:`rockseg.training.finetune`).
    freeze_encoder_epochs : train only the decoder for this many first epochs (any network: a backbone encoder,
        or the contracting path of a plain one), then everything; 0 = never.
    gan_weight : for ``arch="pix2pix"``, the weight of the adversarial term added to ``loss``.
    encoder : backbone of the encoder (a key of ``rockseg.models.ENCODERS``, e.g. ``"resnet34"``), or None for the
        architecture's own.
    encoder_weights : local file of pretrained encoder weights (never downloaded).
    freeze_encoder : train only the decoder; the encoder's weights and normalisation statistics stay as loaded.
    epochs : maximum number of epochs; default :data:`DEFAULT_EPOCHS`, or no limit (:data:`UNLIMITED_EPOCHS`) when
        ``max_minutes`` is given, so that the time budget decides and ``poly`` reaches ``min_lr`` at its end.
    max_minutes : stop after this much wall time, minutes (checked between steps), keeping the best model so far.
        The validation pass of the interrupted epoch and writing the model come on top: leave a margin under a
        job's wall-time limit. A resumed run gets it afresh, while ``poly`` decays over the run's whole elapsed time
        (resumed parts included, as the checkpoint recorded it): a resumed run past it trains at ``min_lr``.
    batch_size : tiles per forward pass (per process under torchrun).
    accumulate : forward passes whose gradients are summed before each optimizer step.
    fraction : share of one pass over the training tiles done per epoch, 0 < fraction <= 1 (for huge tile sets).
    steps_per_epoch : optimizer steps per epoch; default one pass over the training tiles (times ``fraction``).
    sampling : ``"random"`` (fresh patches drawn from the tile set's training regions for every batch; a tile set
        without regions falls back to ``"fixed"``) or ``"fixed"`` (the tile set's stored patches, reshuffled each
        epoch). See :mod:`rockseg.training.regions`.
    lr : (initial) learning rate.
    optimizer : ``"adam"``, ``"adamw"`` or ``"sgd"`` (momentum 0.9, Nesterov).
    weight_decay : L2 (adam, sgd) or decoupled (adamw) weight decay; default 0, and 0.01 for adamw.
    schedule : ``"poly"`` (``lr * (1 - progress)**0.9`` floored at ``min_lr``, set before every optimizer step;
        progress is the share of ``max_minutes`` elapsed when it is given, else the share of the ``epochs``'
        steps done); ``"none"`` (a constant rate); ``"plateau"`` (halve the rate when the validation mean IoU has
        not improved for ``patience`` epochs); ``"exp"`` (multiply by a constant each epoch, reaching ``min_lr``
        at the last epoch); ``"cosine"`` (cosine annealing to ``min_lr`` with a warm restart every
        ``cosine_epochs`` epochs).
    min_lr : floor of the schedules (the rate ``poly`` ends at).
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
        scale/shift, gamma, noise and blur); see :mod:`rockseg.training.augment`.
    precision : ``"auto"`` (bf16 autocast on a CUDA GPU with bf16 support, else float32),
        ``"float32"`` or ``"bf16"``.
    device : ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    seed : seed of weight initialisation, batch order and augmentation (>= 0); runs on one CPU are reproducible.
    num_threads : CPU threads for torch; default all cores available to the process (shared among the processes
        of a node under torchrun).
    loader_threads : background threads preparing batches (read, normalise, augment).
    """

    arch: str | None = None
    base_channels: int | None = None
    depth: int | None = None
    norm: str | None = None
    act: str | None = None
    encoder: str | None = None
    encoder_weights: str | None = None
    freeze_encoder: bool = False
    epochs: int | None = None
    max_minutes: float | None = None
    batch_size: int = 4
    accumulate: int = 1
    fraction: float = 1.0
    steps_per_epoch: int | None = None
    sampling: str = "random"
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float | None = None
    schedule: str = "poly"
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
    init: str | None = None
    freeze_encoder_epochs: int = 0
    gan_weight: float = 0.01

    def __post_init__(self) -> None:
        if self.init is None:  # without an init model the network settings are the defaults
            for name, default in NETWORK_DEFAULTS.items():
                if getattr(self, name) is None:
                    object.__setattr__(self, name, default)
        elif isinstance(self.init, os.PathLike):
            object.__setattr__(self, "init", os.fspath(self.init))
        if self.epochs is None:
            object.__setattr__(self, "epochs", DEFAULT_EPOCHS if self.max_minutes is None else UNLIMITED_EPOCHS)
        # Older callers passed augment=True/False; paths and weight lists are kept as plain strings (JSON, model file).
        if isinstance(self.augment, bool):
            object.__setattr__(self, "augment", "basic" if self.augment else "none")
        if isinstance(self.encoder_weights, os.PathLike):
            object.__setattr__(self, "encoder_weights", os.fspath(self.encoder_weights))
        if isinstance(self.class_weights, (list, tuple)):
            object.__setattr__(self, "class_weights", ",".join(repr(float(w)) for w in self.class_weights))

    def check(self) -> None:
        """Raise :class:`InputError` for the first bad setting, naming the option and the fix."""
        if self.arch is not None:
            _choice("arch", self.arch, [*ARCHITECTURES, *TRAINING_ONLY_ARCHS])
        parse_loss(self.loss)
        for name, value, choices in (("norm", self.norm, NORMS), ("act", self.act, ACTIVATIONS),
                                     ("optimizer", self.optimizer, OPTIMIZERS), ("schedule", self.schedule, SCHEDULES),
                                     ("precision", self.precision, PRECISIONS), ("augment", self.augment, AUGMENTS),
                                     ("sampling", self.sampling, SAMPLINGS)):
            if value is not None:  # network settings left to the init model
                _choice(name, value, choices)
        if self.encoder is not None:
            encoders = list(getattr(models, "ENCODERS", ()))
            if not encoders:
                raise InputError(f"--encoder {self.encoder!r}: this rockseg has no encoder backbones: leave --encoder out")
            _choice("encoder", self.encoder, encoders)
        for name, value in (("epochs", self.epochs), ("batch-size", self.batch_size), ("accumulate", self.accumulate),
                            ("cosine-epochs", self.cosine_epochs), ("loader-threads", self.loader_threads)):
            _check_int(name, value, 1)
        for name, value in (("steps-per-epoch", self.steps_per_epoch), ("num-threads", self.num_threads),
                            ("base-channels", self.base_channels), ("depth", self.depth)):
            if value is not None:
                _check_int(name, value, 1)
        for name, value in (("warmup-epochs", self.warmup_epochs), ("patience", self.patience), ("seed", self.seed),
                            ("freeze-encoder-epochs", self.freeze_encoder_epochs)):
            _check_int(name, value, 0)
        if self.init is not None and not str(self.init).strip():
            raise InputError("--init is empty: give a rockseg model file or a shipped model's name, or leave it out")
        _check_number("lr", self.lr, positive=True, example="1e-3")
        _check_number("min-lr", self.min_lr, positive=False, example="1e-5")
        if self.schedule == "exp" and not 0 < self.min_lr <= self.lr:
            raise InputError(
                f"--min-lr {self.min_lr!r} must be above 0 and at most --lr {self.lr!r} for --schedule exp, e.g. 1e-5"
            )
        if self.schedule == "poly" and self.min_lr > self.lr:
            raise InputError(
                f"--min-lr {self.min_lr!r} must be at most --lr {self.lr!r} for --schedule poly, e.g. 1e-5"
            )
        if self.weight_decay is not None:
            _check_number("weight-decay", self.weight_decay, positive=False, example="1e-4")
        _check_number("focal-gamma", self.focal_gamma, positive=False, example="2")
        _check_number("iou-alpha", self.iou_alpha, positive=True, example="1")
        _check_number("gan-weight", self.gan_weight, positive=False, example="0.01")
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
            if given and self.encoder is None and self.init is None:  # an init model may bring its encoder
                raise InputError(
                    f"--{name} needs a backbone encoder: add --encoder (one of "
                    f"{', '.join(getattr(models, 'ENCODERS', ())) or 'none in this rockseg'}), or leave --{name} out"
                )
        if self.encoder is not None and self.arch is not None and \
                "encoder" not in inspect.signature(ARCHITECTURES[network_arch(self.arch)]).parameters:
            takes = [a for a, f in ARCHITECTURES.items() if "encoder" in inspect.signature(f).parameters]
            raise InputError(
                f"--arch {self.arch} takes no --encoder: leave --encoder out, or use one of {', '.join(takes)}"
            )
        if self.init is not None and self.encoder_weights is not None:
            raise InputError(
                f"--init {self.init} and --encoder-weights {self.encoder_weights} both give the starting weights: "
                f"give only one of them"
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


# --------------------------------------------------------------------------------------------- what follows
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
