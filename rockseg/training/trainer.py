"""Train a segmentation network on a tile set and write a rockseg model file: :func:`train`.

:func:`train` reads a tile set made by :func:`rockseg.training.tileset.make_tiles` into memory and trains a network
from :mod:`rockseg.models`: a "+"-sum of losses (cross-entropy, soft Dice, focal, log soft IoU; optional class
weights), Adam / AdamW / SGD with a learning-rate schedule (by default ``poly``, decaying step by step over
``max_minutes`` or the epochs) and warm-up, gradient accumulation, bf16 autocast where the hardware has it, and
on-the-fly augmentation (:mod:`rockseg.training.augment`) prepared in a background thread while the network steps.
Each training batch is drawn afresh from the tile set's training regions (:mod:`rockseg.training.regions`;
``sampling="fixed"``, or a tile set without regions, reuses its stored patches); validation always scores the
stored validation patches. After every epoch it measures the validation mean IoU, keeps the best
weights and writes a checkpoint, so a killed run continues with ``resume=True``. ``max_minutes`` stops the run after
that much wall time (checked between steps) and still writes the best model so far, so a job under an HPC
wall-time limit always ends with a usable model.

The first image's intensity statistics are written into the model file and used by prediction (training
normalises each tile with those of its own image: :mod:`rockseg.training.data`).

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the same call trains with DistributedDataParallel: each
process takes its share of every epoch's batches, validation counts are summed over the processes, and only rank 0
writes files (:mod:`rockseg.training.distributed`).

:func:`train` reads as check -> plan -> run: :func:`_plan` checks every setting and input before any process
group starts and reads the tiles; :func:`_fit` builds the network and drives a run of the epoch loop
(:class:`rockseg.training.loop._Run`); :func:`_choose_specks` picks, on the validation tiles, the speck size
``rockseg predict`` will remove with the kept weights; :func:`_summary` and :func:`_write_model` write the best
weights, that choice and what happened.

Files written beside the model file ``MODEL.pt``:

``MODEL.log.jsonl``
    one JSON line per epoch: ``epoch``, ``loss`` (mean training loss), ``val_mean_iou``, ``val_iou`` (per phase),
    ``lr`` (learning rate of the epoch's last step), ``steps``, ``partial`` (cut short by ``max_minutes``),
    ``seconds`` (this epoch), ``train_seconds`` (its training steps, without validation), ``elapsed`` (since the
    first start, resumed runs included) and ``world_size``.
``MODEL.ckpt``
    the state after the last epoch (weights, optimizer, scheduler, random state, best weights, history), written
    atomically every epoch and loadable with ``torch.load(..., weights_only=True)``
    (:mod:`rockseg.training.checkpoints`).
``MODEL.curve.png``
    the training curve: loss, and validation mean and per-phase IoU, per epoch (:mod:`rockseg.training.curve`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rockseg import models
from rockseg.devices import resolve_device
from rockseg.errors import InputError, MissingInputError
from rockseg.io import stores
from rockseg.models import save_model_file
from rockseg.training.adversarial import _Adversary
from rockseg.training.augment import preset
from rockseg.training.checkpoints import _check_outputs, _fingerprint, _load_checkpoint, _restore
from rockseg.training.curve import write_curve
from rockseg.training.data import _Part, _read_parts
from rockseg.training.finetune import _Init, init_arch_args, resolve_init
from rockseg.training.distributed import _barrier, _Dist, _start_distributed, _stop_distributed
from rockseg.training.hardware import _Placement, _placement, _torch_threads, training_memory_format
from rockseg.training.loop import _Run
from rockseg.training.losses import parse_class_weights, parse_loss
from rockseg.training.validation import choose_speck_size
from rockseg.training.network import _build, _plain
from rockseg.training.planning import MIN_INIT_BOTTLENECK, plan_depth
from rockseg.training.regions import _load_regions, _Regions
from rockseg.training.settings import (
    TrainConfig, curve_path_for, halo_for, log_path_for, network_arch, tile_for,
)
from rockseg.training.tileset import ignored_label, read_tiles


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
    tiles : path of a tile set written by :func:`rockseg.training.tileset.make_tiles`.
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
    plan = _plan(tiles, out, config=config, dims=dims, overwrite=overwrite, resume=resume)
    dist_info = _start_distributed(plan.device)
    try:
        place = _placement(plan.device, config, dist_info)
        run, setup, checkpoint = _fit(plan, dist_info, place, t0=t0, progress=progress, log=log)
        run.net.load_state_dict(run.best["state"])
        postprocess = _choose_specks(plan, run, place, log) if dist_info.main else None
        training = _summary(plan, run, setup, checkpoint, place, dist_info, t0=t0)
        paths = {"model": str(plan.out_path), "log": str(log_path_for(plan.out_path)),
                 "checkpoint": str(plan.ckpt_path), "curve": str(curve_path_for(plan.out_path))}
        if dist_info.main:
            _write_model(plan, run, training, postprocess)
            training["specks"] = postprocess["specks"]
        _barrier(dist_info)  # no process reports success before the model file is there
        return {**training, "epochs": run.epoch, **paths, "rank": dist_info.rank}
    finally:
        _stop_distributed(dist_info)


# --------------------------------------------------------------------------------------------- check and plan
@dataclass(frozen=True)
class _Plan:
    """What :func:`train` has checked and read before any process group starts."""

    config: TrainConfig
    tiles: Any  # the tile set as given: for messages, and resolved in the summary
    out_path: Path
    ckpt_path: Path
    resume: bool
    device: torch.device  # as configured; :func:`_placement` picks each process's GPU under torchrun
    attrs: Mapping[str, Any]
    parts: Mapping[str, _Part]
    source_stats: list[Mapping[str, Any]]
    dims: int
    size: int
    classes: int
    arch_args: dict[str, Any]
    divisor: int
    class_weights: list[float] | None
    weights_file: Path | None
    phases: dict[int, str]
    regions: _Regions | None  # fresh random patches from these; None: the stored tiles
    init: _Init | None = None  # the model file the run starts from (fine-tuning)
    ignore: int | None = None  # the label of unlabelled voxels (sparse labels), when the tile set holds some

    @property
    def sampling(self) -> str:
        """The sampling the run uses: ``"random"`` when the tile set has training regions to draw from."""
        return "fixed" if self.regions is None else "random"


def _plan(
    tiles: Any, out: Any, *, config: TrainConfig, dims: int | None, overwrite: bool, resume: bool,
) -> _Plan:
    """Check the settings, the outputs and the tile set against each other, and read the tiles into memory."""
    config.check()
    device = resolve_device(config.device)
    out_path, ckpt_path = _check_outputs(out, overwrite=overwrite, resume=resume)
    attrs, arrays = read_tiles(tiles)
    tile_dims, size, classes = int(attrs["dims"]), int(attrs["size"]), int(attrs["classes"])
    _check_dims(tiles, dims=dims, tile_dims=tile_dims)
    init = None
    if config.init is not None:
        config, init = resolve_init(config, tiles, dims=tile_dims, classes=classes)
    arch_args, divisor = _network_args(config, tiles, size=size, classes=classes, tile_dims=tile_dims, init=init)
    parts, source_stats = _read_parts(tiles, attrs, arrays)
    counts = (attrs.get("class_counts") or {}).get("train")
    if not (isinstance(counts, list) and len(counts) == classes):
        counts = np.bincount(parts["train"].labels.ravel(), minlength=classes)[:classes].tolist()
    class_weights = parse_class_weights(config.class_weights, classes=classes, counts=counts, tiles=tiles)
    weights_file = _encoder_weights_file(config)
    regions = _load_regions(tiles, attrs, source_stats) if config.sampling == "random" else None
    return _Plan(
        config=config, tiles=tiles, out_path=out_path, ckpt_path=ckpt_path, resume=resume, device=device,
        attrs=attrs, parts=parts, source_stats=source_stats, dims=tile_dims, size=size, classes=classes,
        arch_args=arch_args, divisor=divisor, class_weights=class_weights, weights_file=weights_file,
        phases={int(k): str(v) for k, v in attrs[stores.ATTR_PHASES].items()}, regions=regions, init=init,
        ignore=ignored_label(attrs),
    )


def _check_dims(tiles: Any, *, dims: int | None, tile_dims: int) -> None:
    """``dims``, when given, must be the tile set's."""
    if dims is not None and dims != tile_dims:
        raise InputError(
            f"--dims {dims} does not match tile set {tiles}, which holds {tile_dims}D tiles: "
            f"drop --dims or re-make the tiles with 'rockseg tile --dims {dims}'"
        )


def _network_args(
    config: TrainConfig, tiles: Any, *, tile_dims: int, size: int, classes: int, init: _Init | None,
) -> tuple[dict[str, Any], int]:
    """The network's arguments for the tile set (the init model's, when there is one) and its divisor; the tile
    size must fit it."""
    arch_args: dict[str, Any] = dict(spatial_dims=tile_dims, in_channels=1, classes=classes,
                                     base_channels=config.base_channels, depth=config.depth, norm=config.norm,
                                     act=config.act)
    if config.encoder is not None:
        arch_args["encoder"] = config.encoder  # only when given: architectures without encoders take no such argument
    if init is not None:
        arch_args = init_arch_args(init, classes=classes)
    elif config.depth is None:
        arch_args["depth"] = plan_depth(network_arch(config.arch), arch_args, size)
    divisor = models.tile_multiple(network_arch(config.arch), arch_args)
    if size % divisor:
        raise InputError(
            f"tile set {tiles} has tiles of {size} voxels but --arch {config.arch} with --depth {arch_args['depth']} "
            f"needs a multiple of {divisor}: lower --depth or re-make the tiles with a --size that is a multiple of it"
        )
    if init is not None and size // divisor < MIN_INIT_BOTTLENECK:
        raise InputError(
            f"tile set {tiles} has tiles of {size} voxels, which the network of --init {init.given} (depth "
            f"{arch_args.get('depth')}) pools to {size // divisor} voxel(s) per axis: fine-tuned on tiles that small "
            f"it fails on the larger tiles predict uses; re-make the tiles with 'rockseg tile --size "
            f"{MIN_INIT_BOTTLENECK * divisor}' (or larger)"
        )
    return arch_args, divisor


def _encoder_weights_file(config: TrainConfig) -> Path | None:
    """The local file of pretrained encoder weights, which must exist (nothing is downloaded)."""
    if config.encoder_weights is None:
        return None
    weights_file = Path(config.encoder_weights)
    if not weights_file.is_file():
        raise MissingInputError(
            f"--encoder-weights {weights_file} does not exist: give a local weights file (nothing is downloaded)"
        )
    return weights_file


# --------------------------------------------------------------------------------------------- run and write
def _fit(
    plan: _Plan, dist_info: _Dist, place: _Placement, *, t0: float, progress: bool,
    log: Callable[[str], Any] | None,
) -> tuple[_Run, dict[str, Any], dict[str, Any] | None]:
    """Build the network and train it; returns the run, the network's set-up summary and the checkpoint resumed."""
    config = plan.config
    fingerprint = _fingerprint(config, plan.tiles, plan.parts, dist_info.world)
    checkpoint = _load_checkpoint(plan.ckpt_path, fingerprint) if plan.resume and plan.ckpt_path.exists() else None
    _barrier(dist_info)  # every process has checked its inputs before rank 0 writes anything
    fork_devices = [place.device.index or 0] if place.device.type == "cuda" else []
    # fork_rng keeps the caller's global torch RNG state untouched while the seed fixes weight initialisation.
    with _torch_threads(place.threads), torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)
        net, setup = _build(config, plan.arch_args, plan.weights_file, plan.init)
        run = _Run(
            net.to(place.device, memory_format=training_memory_format(plan.dims)), plan.parts, config=config,
            classes=plan.classes, phases=plan.phases, device=place.device, bf16=place.bf16,
            class_weights=plan.class_weights, dist_info=dist_info, fingerprint=fingerprint,
            ckpt_path=plan.ckpt_path, log_path=log_path_for(plan.out_path), t0=t0, regions=plan.regions,
            ignore=plan.ignore, adversary=_adversary(plan, place, dist_info),
        )
        if checkpoint is not None:
            _restore(run, checkpoint)
        if log is not None and dist_info.main:
            if checkpoint is not None:
                log(f"resuming {plan.ckpt_path} after epoch {checkpoint['epoch']}")
            if config.sampling != plan.sampling:
                log(f"tile set {plan.tiles} holds no training regions (made before rockseg stored them, or over "
                    f"their size bound): training on its stored patches, as --sampling fixed does")
        run.fit(progress=progress and dist_info.main, log=log if dist_info.main else None)
    return run, setup, checkpoint


def _adversary(plan: _Plan, place: _Placement, dist_info: _Dist) -> _Adversary | None:
    """The discriminator of a pix2pix run (built from the seeded RNG after the network), else None."""
    if plan.config.arch != "pix2pix":
        return None
    if dist_info.world > 1:
        raise InputError("--arch pix2pix trains in one process (its discriminator is not synchronised): run it "
                         "without torchrun")
    c = plan.config
    return _Adversary(dims=plan.dims, classes=plan.classes, size=plan.size, device=place.device, bf16=place.bf16,
                      lr=c.lr, weight=c.gan_weight, ignore=plan.ignore)


def _summary(
    plan: _Plan, run: _Run, setup: Mapping[str, Any], checkpoint: Mapping[str, Any] | None, place: _Placement,
    dist_info: _Dist, *, t0: float,
) -> dict[str, Any]:
    """The training summary stored in the model file and returned by :func:`train`."""
    config, best = plan.config, run.best
    return {
        "config": asdict(config),
        "epochs_run": run.epoch,
        "steps": run.optimizer_steps,
        "stopped": run.stopped,
        "best_epoch": best["epoch"],
        "best_val_mean_iou": best["mean_iou"],
        "best_val_score": best.get("score"),
        "val_iou": best["per_phase"],
        "seconds": round(time.monotonic() - t0, 3),
        "elapsed": round(run.elapsed(), 3),
        "train_seconds": round(run.train_seconds, 3),
        "tiles": str(Path(plan.tiles).resolve()),
        "train_tiles": len(plan.parts["train"]),
        "sampling": plan.sampling,
        "val_tiles": len(plan.parts["val"]),
        "unlabelled": plan.ignore,
        "tile_split": plan.attrs.get("split"),
        "tile_sources": len(plan.source_stats),
        "loss_terms": list(parse_loss(config.loss)),
        "class_weights": plan.class_weights,
        "augment": asdict(preset(config.augment)),
        "precision": "bf16" if place.bf16 else "float32",
        "device": str(place.device),
        "threads": int(place.threads),
        "world_size": dist_info.world,
        "effective_batch": config.batch_size * config.accumulate * dist_info.world,
        "resumed_from": None if checkpoint is None else int(checkpoint["epoch"]),
        "divisor": plan.divisor,
        **({"discriminator": {"layers": run.adversary.net.layers, "gan_weight": config.gan_weight,
                              "parameters": sum(p.numel() for p in run.adversary.net.parameters())}}
           if run.adversary is not None else {}),
        **setup,
    }


def _choose_specks(plan: _Plan, run: _Run, place: _Placement, log: Callable[[str], Any] | None) -> dict[str, Any]:
    """The speck size ``rockseg predict`` applies for this model, chosen on the validation tiles with the kept
    weights (:func:`~rockseg.training.validation.choose_speck_size`)."""
    with _torch_threads(place.threads):
        chosen = choose_speck_size(run.net, plan.parts["val"], classes=plan.classes, device=place.device,
                                   batch_size=max(plan.config.batch_size, 8), bf16=place.bf16, ignore=plan.ignore)
    if log is not None:
        scores = ", ".join(f"{row['specks']}: {row['score']:.4f}" for row in chosen["tried"])
        log(f"specks: predict will remove isolated pieces of up to {chosen['specks']} voxels (validation score by "
            f"speck size {scores})")
    return chosen


def _write_model(plan: _Plan, run: _Run, training: Mapping[str, Any], postprocess: Mapping[str, Any]) -> None:
    """Write the model file (the weights in ``run.net``, the best ones by now) and the training curve beside it."""
    config = plan.config
    tile = tile_for(plan.size, plan.dims, multiple=plan.divisor)
    save_model_file(
        plan.out_path, run.net.cpu(), arch=network_arch(config.arch), arch_args=plan.arch_args, spatial_dims=plan.dims,
        in_channels=1, phases=plan.phases, normalization=dict(plan.source_stats[0]), tile=tile, halo=halo_for(tile),
        training=_plain(training), postprocess=_plain(postprocess),
    )
    write_curve(curve_path_for(plan.out_path), run.history, title=f"{plan.out_path.name}: {config.arch}, {config.loss}")
