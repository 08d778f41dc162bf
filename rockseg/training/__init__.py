"""Training: from image/label pairs to a tile set, and from a tile set to a model file.

The pipeline, one module per step:

tile set (``rockseg tile``; NumPy, SciPy and Zarr only, no torch)
    :mod:`~rockseg.training.pairs` (the options and the image/label pairs, checked and read patch by patch),
    :mod:`~rockseg.training.sampling` (the spatially disjoint train/val split and the patch corners, uniform or
    class-balanced), :mod:`~rockseg.training.tileset` (:func:`make_tiles` writes a tile set with each pair's
    training region, :func:`read_tiles` reads its patches and :func:`read_regions` its regions; format versions 1
    to 3).
training (``rockseg train``)
    :mod:`~rockseg.training.settings` (:class:`TrainConfig` and its checks), :mod:`~rockseg.training.trainer`
    (:func:`train`: check -> plan -> run), :mod:`~rockseg.training.loop` (the epoch loop),
    :mod:`~rockseg.training.data` (tiles in memory, normalisation, batches), :mod:`~rockseg.training.regions`
    (fresh random patches from the training regions, every batch), :mod:`~rockseg.training.augment`,
    :mod:`~rockseg.training.losses`, :mod:`~rockseg.training.network` (the network, pretrained encoder, freezing),
    :mod:`~rockseg.training.optimizers` (optimizer, schedule (``poly`` step by step), warm-up),
    :mod:`~rockseg.training.validation` (confusion matrix, IoU), :mod:`~rockseg.training.checkpoints` (resume),
    :mod:`~rockseg.training.curve`, :mod:`~rockseg.training.hardware` (device, threads, bf16) and
    :mod:`~rockseg.training.distributed` (torchrun).

This package may import :mod:`rockseg.io`, :mod:`rockseg.models`, :mod:`rockseg.metrics` (Euler numbers of the
validation tiles), :mod:`rockseg.errors`, :mod:`rockseg.devices`,
:mod:`rockseg.progress` and :mod:`rockseg.vocabulary`; of rockseg, only the command line and the demo import it.

The names below are re-exported lazily (a module ``__getattr__``), so that importing the tile-set modules, as
``rockseg tile`` does, does not import torch.
"""

from __future__ import annotations

from rockseg.lazy import lazy_exports

#: Public name -> the module of this package that defines it.
_EXPORTS = {
    "AugmentConfig": "augment",
    "augment_batch": "augment",
    "PRESETS": "augment",
    "preset": "augment",
    "checkpoint_path_for": "settings",
    "curve_path_for": "settings",
    "halo_for": "settings",
    "log_path_for": "settings",
    "tile_for": "settings",
    "TrainConfig": "settings",
    "normalize_tiles": "data",
    "tile_normalization": "data",
    "focal_loss": "losses",
    "loss_function": "losses",
    "parse_class_weights": "losses",
    "parse_loss": "losses",
    "soft_dice_loss": "losses",
    "soft_iou": "losses",
    "training_memory_format": "hardware",
    "use_bf16": "hardware",
    "evaluate": "validation",
    "choose_speck_size": "validation",
    "iou_from_confusion": "validation",
    "write_curve": "curve",
    "train": "trainer",
    "make_tiles": "tileset",
    "read_tiles": "tileset",
    "read_regions": "tileset",
    "split_pairs": "pairs",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, {name: f"{__name__}.{module}" for name, module in _EXPORTS.items()})
