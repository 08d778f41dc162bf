"""Train a segmentation network on a tile set and write a rockseg model file.

:func:`train` reads a tile set made by :func:`rockseg.tiling.make_tiles` into memory, trains a network from
:mod:`rockseg.models` with Adam and on-the-fly augmentation (random flips along every axis and 90° rotations in the
(Y, X) plane), measures the validation mean IoU after every epoch and keeps the best weights. ``max_minutes`` stops
the run after that much wall time (checked between steps) and still writes the best model so far, so a job under
an HPC wall-time limit always ends with a usable model.

Inputs are normalised with the tile set's *global* intensity statistics, the same ones written into the model file
and used by prediction, never per tile.

Besides the model file, one JSON line per epoch goes to ``MODEL.log.jsonl`` beside it (``model.pt`` ->
``model.log.jsonl``): ``epoch``, ``loss`` (mean training loss), ``val_mean_iou``, ``val_iou`` (per phase),
``steps``, ``partial`` (the epoch was cut short by ``max_minutes``), ``seconds`` (this epoch) and ``elapsed``.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rockseg import stores
from rockseg.devices import resolve_device
from rockseg.errors import InputError
from rockseg.models import ARCHITECTURES, build_model, save_model_file
from rockseg.normalization import normalize
from rockseg.tiling import read_tiles

LOSSES = ("ce", "dice", "ce+dice")
NORMS = ("batch", "instance", "none")
ACTS = ("relu", "elu")


def _did_you_mean(value: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run; written into the model file's ``training`` summary.

    Attributes
    ----------
    arch : architecture name, a key of :data:`rockseg.models.ARCHITECTURES`.
    base_channels : channels of the first level of the network.
    depth : down-sampling steps; the tile size must be a multiple of ``2**depth``.
    norm : ``"batch"``, ``"instance"`` or ``"none"``.
    act : ``"relu"`` or ``"elu"``.
    epochs : maximum number of epochs.
    max_minutes : stop after this much wall time, minutes (checked between steps), keeping the best model so far.
        The validation pass of the interrupted epoch and writing the model come on top: leave a margin under a
        job's wall-time limit.
    batch_size : tiles per step.
    lr : Adam learning rate.
    loss : ``"ce"`` (cross-entropy), ``"dice"`` (soft Dice) or ``"ce+dice"``.
    device : ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    seed : seed of weight initialisation, batch order and augmentation; runs on CPU are reproducible.
    steps_per_epoch : steps per epoch; default one pass over the training tiles.
    augment : random flips and 90° in-plane rotations of the training tiles.
    num_threads : CPU threads for torch; default all cores available to the process.
    """

    arch: str = "unet"
    base_channels: int = 16
    depth: int = 3
    norm: str = "batch"
    act: str = "relu"
    epochs: int = 50
    max_minutes: float | None = None
    batch_size: int = 4
    lr: float = 1e-3
    loss: str = "ce"
    device: str = "auto"
    seed: int = 0
    steps_per_epoch: int | None = None
    augment: bool = True
    num_threads: int | None = None

    def check(self) -> None:
        """Raise :class:`InputError` for the first bad setting, naming the option and the fix."""
        if self.arch not in ARCHITECTURES:
            raise InputError(
                f"--arch {self.arch!r} is unknown{_did_you_mean(self.arch, list(ARCHITECTURES))}: "
                f"choose one of {', '.join(ARCHITECTURES)}"
            )
        for name, value, choices in (("loss", self.loss, LOSSES), ("norm", self.norm, NORMS),
                                     ("act", self.act, ACTS)):
            if value not in choices:
                raise InputError(
                    f"--{name} {value!r} is unknown{_did_you_mean(value, choices)}: choose one of {', '.join(choices)}"
                )
        for name, value in (("base-channels", self.base_channels), ("depth", self.depth),
                            ("epochs", self.epochs), ("batch-size", self.batch_size)):
            _check_positive_int(name, value)
        for name, value in (("steps-per-epoch", self.steps_per_epoch), ("num-threads", self.num_threads)):
            if value is not None:
                _check_positive_int(name, value)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"--lr {self.lr!r} must be a positive number, e.g. 1e-3")
        if self.max_minutes is not None and not (
            isinstance(self.max_minutes, (int, float)) and self.max_minutes > 0
        ):
            raise InputError(f"--max-minutes {self.max_minutes!r} must be a positive number of minutes, or left out")
        resolve_device(self.device)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"--{name} {value!r} must be a whole number of at least 1")


def tile_for(size: int, dims: int) -> int:
    """Recommended prediction tile edge for networks trained on patches of edge ``size``.

    The networks are fully convolutional, so prediction may use larger tiles than training: at least 64 voxels in
    3D and 256 in 2D, where the halo cut off each side wastes far less work than on a small training patch.
    """
    return max(size, 64 if dims == 3 else 256)


def halo_for(size: int) -> int:
    """Recommended prediction halo for a tile edge: about a sixth of it, even, at least 2 voxels."""
    return max(2, 2 * round(size / 12))


def log_path_for(out: str | os.PathLike[str]) -> Path:
    """The JSON-lines training log beside a model file: ``model.pt`` -> ``model.log.jsonl``."""
    p = Path(out)
    return p.with_name(f"{p.stem if p.suffix else p.name}.log.jsonl")


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-phase IoU from a (classes, classes) confusion matrix (rows truth, columns prediction).

    A phase that is neither in the truth nor in the prediction gets NaN.
    """
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean over classes of the soft Dice coefficient, summed over the batch and space (smoothing 1)."""
    prob = logits.softmax(1)
    onehot = F.one_hot(target, prob.shape[1]).movedim(-1, 1).to(prob.dtype)
    axes = (0, *range(2, prob.ndim))
    inter = (prob * onehot).sum(axes)
    denom = prob.sum(axes) + onehot.sum(axes)
    return 1.0 - ((2.0 * inter + 1.0) / (denom + 1.0)).mean()


def loss_function(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss ``f(logits (N, C, *S) float, target (N, *S) int64) -> scalar`` for ``kind``."""
    if kind == "ce":
        return F.cross_entropy
    if kind == "dice":
        return _soft_dice_loss
    if kind == "ce+dice":
        return lambda logits, target: F.cross_entropy(logits, target) + _soft_dice_loss(logits, target)
    raise InputError(f"--loss {kind!r} is unknown{_did_you_mean(kind, LOSSES)}: choose one of {', '.join(LOSSES)}")


def augment_batch(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random flips along every spatial axis and a random 90° rotation in the last two axes, per tile.

    Parameters
    ----------
    images, labels : (N, *patch) arrays with square last two axes; transformed identically.
    rng : the generator the transforms are drawn from.
    """
    n, spatial = images.shape[0], images.ndim - 1
    flips = rng.random((n, spatial)) < 0.5
    turns = rng.integers(0, 4, n)
    out_img, out_lab = np.empty_like(images), np.empty_like(labels)
    for i in range(n):
        img, lab = images[i], labels[i]
        axes = tuple(np.flatnonzero(flips[i]))
        if axes:
            img, lab = np.flip(img, axes), np.flip(lab, axes)
        if turns[i]:
            img, lab = np.rot90(img, turns[i], axes=(-2, -1)), np.rot90(lab, turns[i], axes=(-2, -1))
        out_img[i], out_lab[i] = img, lab
    return out_img, out_lab


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects Slurm/cgroup CPU sets, unlike os.cpu_count()
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _to_input(images: np.ndarray, stats: Mapping[str, Any], device: torch.device) -> torch.Tensor:
    return torch.from_numpy(normalize(images, stats)).unsqueeze(1).to(device, non_blocking=True)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, *, stats: Mapping[str, Any], classes: int,
    device: torch.device, batch_size: int = 8,
) -> np.ndarray:
    """Confusion matrix (classes, classes) int64 of ``model`` on tiles (rows truth, columns prediction).

    Parameters
    ----------
    images : (N, *patch) raw grey values; normalised here with ``stats``.
    labels : (N, *patch) integer labels 0..classes-1.
    """
    model.eval()
    confusion = torch.zeros(classes * classes, dtype=torch.int64, device=device)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = _to_input(images[start : start + batch_size], stats, device)
            y = torch.from_numpy(labels[start : start + batch_size].astype(np.int64)).to(device)
            with _autocast(device):
                pred = model(x).argmax(1)
            confusion += torch.bincount((y * classes + pred).ravel(), minlength=classes * classes)
    return confusion.reshape(classes, classes).cpu().numpy()


def train(
    tiles: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    config: TrainConfig,
    dims: int | None = None,
    progress: bool = False,
    log: Callable[[str], Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a network on a tile set and write the best model (by validation mean IoU) as one model file.

    Parameters
    ----------
    tiles : path of a tile set written by :func:`rockseg.tiling.make_tiles`.
    out : path of the model file to write (``.pt``); the log goes beside it as ``<stem>.log.jsonl``.
    config : the training settings.
    dims : 2 or 3, the model's spatial dimensions; checked against the tile set (default: the tile set's).
    progress : show a progress bar (rich) on stderr.
    log : called with one line of text per epoch (e.g. ``print``).
    overwrite : replace an existing model file.

    Returns
    -------
    dict : the training summary also stored in the model file (``config``, ``epochs_run``, ``best_epoch``,
        ``best_val_mean_iou``, ``val_iou``, ``stopped`` ("epochs" or "time"), ``seconds``, ``tiles``...), plus
        ``epochs`` (same as ``epochs_run``), ``model`` and ``log`` (the paths written).

    Raises
    ------
    InputError
        for a bad setting, a tile set that does not match (``dims``, a tile size the network cannot halve
        ``depth`` times) or a CUDA device that is not there; checked before training starts.
    OutputExistsError
        if ``out`` exists and ``overwrite`` is false.
    """
    t0 = time.monotonic()
    config.check()
    device = resolve_device(config.device)
    out_path = stores.check_new_output(out, overwrite=overwrite)
    attrs, arrays = read_tiles(tiles)
    tile_dims, size, classes = int(attrs["dims"]), int(attrs["size"]), int(attrs["classes"])
    if dims is not None and dims != tile_dims:
        raise InputError(
            f"--dims {dims} does not match tile set {tiles}, which holds {tile_dims}D tiles: "
            f"drop --dims or re-make the tiles with 'rockseg tile --dims {dims}'"
        )
    if size % 2**config.depth:
        raise InputError(
            f"tile set {tiles} has tiles of {size} voxels but --depth {config.depth} needs a multiple of "
            f"{2**config.depth}: lower --depth or re-make the tiles with a --size that is a multiple of it"
        )
    stats = attrs[stores.ATTR_INTENSITY]
    phases = {int(k): str(v) for k, v in attrs[stores.ATTR_PHASES].items()}
    arch_args = dict(spatial_dims=tile_dims, in_channels=1, classes=classes, base_channels=config.base_channels,
                     depth=config.depth, norm=config.norm, act=config.act)
    threads = config.num_threads or (_available_cpus() if device.type == "cpu" else torch.get_num_threads())
    log_file = log_path_for(out_path)
    deadline = t0 + 60.0 * config.max_minutes if config.max_minutes is not None else math.inf

    # fork_rng keeps the caller's global torch RNG state untouched while the seed fixes weight initialisation.
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with _torch_threads(threads), torch.random.fork_rng(devices=fork_devices), open(log_file, "w") as jsonl:
        torch.manual_seed(config.seed)
        model = build_model(config.arch, **arch_args).to(device)
        history = _fit(
            model, arrays, config=config, stats=stats, classes=classes, phases=phases, device=device,
            deadline=deadline, t0=t0, progress=progress, log=log, jsonl=jsonl,
        )
    best = history["best"]
    model.load_state_dict(best["state"])
    training = {
        "config": asdict(config),
        "epochs_run": history["epochs_run"],
        "steps": history["steps"],
        "stopped": history["stopped"],
        "best_epoch": best["epoch"],
        "best_val_mean_iou": best["mean_iou"],
        "val_iou": best["per_phase"],
        "seconds": round(time.monotonic() - t0, 3),
        "tiles": str(Path(tiles).resolve()),
        "train_tiles": int(len(arrays["train/image"])),
        "val_tiles": int(len(arrays["val/image"])),
        "tile_split": attrs.get("split"),
        "device": str(device),
        "threads": int(threads),
    }
    save_model_file(
        out_path, model.cpu(), arch=config.arch, arch_args=arch_args, spatial_dims=tile_dims, in_channels=1,
        phases=phases, normalization=dict(stats), tile=tile_for(size, dims), halo=halo_for(tile_for(size, dims)),
        training=training,
    )
    return {**training, "epochs": history["epochs_run"], "model": str(out_path), "log": str(log_file)}


def _fit(
    model: nn.Module, arrays: Mapping[str, np.ndarray], *, config: TrainConfig, stats: Mapping[str, Any],
    classes: int, phases: Mapping[int, str], device: torch.device, deadline: float, t0: float, progress: bool,
    log: Callable[[str], Any] | None, jsonl: Any,
) -> dict[str, Any]:
    """The epoch loop; returns the best state and what happened."""
    train_img, train_lab = arrays["train/image"], arrays["train/labels"]
    val_img, val_lab = arrays["val/image"], arrays["val/labels"]
    n_train, batch = len(train_img), config.batch_size
    steps = config.steps_per_epoch or max(1, math.ceil(n_train / batch))
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    criterion = loss_function(config.loss)
    best: dict[str, Any] = {"epoch": 0, "mean_iou": -1.0, "per_phase": [], "state": None}
    stopped, total_steps, epoch = "epochs", 0, 0

    bar = _progress_bar() if progress else None
    with bar or contextlib.nullcontext():
        task = bar.add_task("epoch", total=steps, loss=float("nan")) if bar else None
        for epoch in range(1, config.epochs + 1):
            if time.monotonic() >= deadline and best["state"] is not None:
                stopped, epoch = "time", epoch - 1
                break
            t_epoch = time.monotonic()
            if bar:
                bar.reset(task, total=steps, description=f"epoch {epoch}/{config.epochs}")
            model.train()
            # Enough shuffled passes for every batch to be full, whatever steps_per_epoch is.
            passes = math.ceil(steps * batch / n_train)
            order = np.concatenate([rng.permutation(n_train) for _ in range(passes)])
            loss_sum, done = 0.0, 0
            for step in range(steps):
                idx = np.sort(order[step * batch : (step + 1) * batch])
                img, lab = train_img[idx], train_lab[idx]
                if config.augment:
                    img, lab = augment_batch(img, lab, rng)
                x = _to_input(img, stats, device)
                y = torch.from_numpy(lab.astype(np.int64)).to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with _autocast(device):
                    logits = model(x)
                loss = criterion(logits.float(), y)
                loss.backward()
                optimizer.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise InputError(
                        f"training diverged (loss {value}) at epoch {epoch}, step {step + 1}: "
                        f"lower --lr (now {config.lr})"
                    )
                loss_sum, done = loss_sum + value, done + 1
                if bar:
                    bar.update(task, advance=1, loss=loss_sum / done)
                if time.monotonic() >= deadline:
                    stopped = "time"
                    break
            total_steps += done
            confusion = evaluate(model, val_img, val_lab, stats=stats, classes=classes, device=device,
                                 batch_size=max(batch, 8))
            iou = iou_from_confusion(confusion)
            mean_iou = float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0
            per_phase = [{"label": k, "name": phases.get(k, f"phase{k}"),
                          "iou": None if math.isnan(v) else round(float(v), 6)} for k, v in enumerate(iou)]
            if mean_iou > best["mean_iou"]:
                best = {"epoch": epoch, "mean_iou": round(mean_iou, 6), "per_phase": per_phase,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            now = time.monotonic()
            record = {"epoch": epoch, "loss": loss_sum / done, "val_mean_iou": round(mean_iou, 6),
                      "val_iou": per_phase, "steps": done, "partial": done < steps,
                      "seconds": round(now - t_epoch, 3), "elapsed": round(now - t0, 3)}
            jsonl.write(json.dumps(record) + "\n")
            jsonl.flush()
            if log is not None:
                log(_epoch_line(record, config.epochs, best["epoch"] == epoch))
            if stopped == "time":
                break
    return {"best": best, "epochs_run": epoch, "steps": total_steps, "stopped": stopped}


def _epoch_line(record: Mapping[str, Any], epochs: int, is_best: bool) -> str:
    phases = ", ".join(f"{p['name']} {p['iou']:.3f}" for p in record["val_iou"] if p["iou"] is not None)
    note = " (cut short by --max-minutes)" if record["partial"] else ""
    return (
        f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f}  val mean IoU {record['val_mean_iou']:.4f}"
        f"{' *' if is_best else ''}  [{phases}]  {record['seconds']:.1f} s{note}"
    )


def _progress_bar() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), console=Console(stderr=True),
    )
