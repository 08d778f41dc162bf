"""Scoring a network on tiles: the confusion matrix of its predictions and the per-phase IoU.

Training keeps the weights of the epoch with the best validation mean IoU, computed here (:func:`_confusion`,
:func:`iou_from_confusion`); :func:`evaluate` does the same for any model and tiles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rockseg.training.data import _Part, normalize_tiles, tile_normalization
from rockseg.training.hardware import _autocast


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-phase IoU from a (classes, classes) confusion matrix (rows truth, columns prediction).

    A phase that is neither in the truth nor in the prediction gets NaN.
    """
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


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
