"""Scoring a network on tiles: the confusion matrix of its predictions, the per-phase IoU and Euler error.

Training keeps the weights of the epoch with the best :func:`selection_score`: the validation mean IoU less a
penalty for wrong connectivity (:data:`EULER_WEIGHT` times the mean per-phase Euler error). A segmentation with
0.99 IoU and a wrong Euler number is useless for flow simulation, and IoU alone barely sees a lost throat.
The same score, with the error of the number of pieces of each phase in place of the Euler error, then
chooses the model's speck size (:func:`choose_speck_size`), which ``rockseg predict`` applies.

The Euler error of a phase over the validation tiles is ``sum |E_pred - E_true| / sum |E_true|`` over the tiles
(each tile's Euler number as :func:`rockseg.metrics.euler_number` counts it, 26-neighbourhood in 3D, 8 in 2D):
errors of opposite sign in two tiles do not cancel. :func:`evaluate` gives the confusion matrix of any model.

Sparse labels: voxels of the ``ignore`` label (unlabelled) count nowhere in the confusion matrix, and only tiles
without unlabelled voxels count for the Euler error (the Euler number of a partly labelled tile means nothing).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rockseg.metrics.euler import euler_number
from rockseg.specks import SPECK_SIZES, count_pieces, remove_specks
from rockseg.training.data import _Part, normalize_tiles, tile_normalization
from rockseg.training.hardware import _autocast

#: Validation IoU given up for each unit of mean Euler error: 0.01 of mean IoU is worth 10 % of Euler error.
EULER_WEIGHT = 0.1


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
    source: np.ndarray | None = None, bf16: bool | None = None, ignore: int | None = None,
) -> np.ndarray:
    """Confusion matrix (classes, classes) int64 of ``model`` on tiles (rows truth, columns prediction).

    Parameters
    ----------
    images : (N, *patch) raw grey values; normalised here with ``stats``.
    labels : (N, *patch) integer labels 0..classes-1.
    stats : intensity statistics of all tiles, or a list of them indexed by ``source``.
    source : (N,) index of each tile's statistics in ``stats`` (when ``stats`` is a list).
    bf16 : run under bf16 autocast; default on CUDA GPUs that support it.
    ignore : a label (unlabelled voxels) left out of the counts.
    """
    lo, inv = tile_normalization(stats, source, len(images))
    return _validation_counts(model, _Part(images, labels, lo, inv), classes=classes, device=device,
                              batch_size=batch_size, bf16=bf16, euler=False, ignore=ignore)[0]


def euler_error(euler_sums: np.ndarray) -> np.ndarray:
    """Per-phase Euler error from (2, classes) sums over tiles of ``|E_pred - E_true|`` and ``|E_true|``.

    0 is a perfect connectivity; a phase with no Euler number in any true tile gets NaN.
    """
    diff, true = np.asarray(euler_sums, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(true > 0, diff / np.maximum(true, 1), np.nan)


def selection_score(iou: np.ndarray, errors: np.ndarray) -> float:
    """What training maximises to keep a checkpoint: mean IoU - :data:`EULER_WEIGHT` x mean Euler error (each
    phase's error capped at 1, phases without a true Euler number left out)."""
    mean_iou = float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0
    capped = np.minimum(errors, 1.0)
    penalty = float(np.nanmean(capped)) if np.isfinite(capped).any() else 0.0
    return mean_iou - EULER_WEIGHT * penalty


def _topology(labels: np.ndarray, classes: int) -> np.ndarray:
    """(2, classes): per phase, its number of pieces (:func:`rockseg.specks.count_pieces`) and its Euler number."""
    return np.array([[count_pieces(labels, k, classes) for k in range(classes)],
                     [euler_number(labels == k) for k in range(classes)]], np.int64)


def _tile_euler(pred: np.ndarray, truth: np.ndarray, classes: int, ignore: int | None = None) -> np.ndarray:
    """(2, classes) sums over the tiles of a batch of ``|E_pred - E_true|`` and ``|E_true|``, per phase; tiles
    holding the ``ignore`` label are skipped."""
    sums = np.zeros((2, classes), np.int64)
    for p, t in zip(pred, truth):
        if ignore is not None and (t == ignore).any():
            continue
        for k in range(classes):
            e_true = euler_number(t == k)
            sums[0, k] += abs(euler_number(p == k) - e_true)
            sums[1, k] += abs(e_true)
    return sums


def _confusion(
    model: nn.Module, part: _Part, *, classes: int, device: torch.device, batch_size: int, bf16: bool | None,
    indices: np.ndarray | None = None,
) -> np.ndarray:
    return _validation_counts(model, part, classes=classes, device=device, batch_size=batch_size, bf16=bf16,
                              indices=indices, euler=False)[0]


def _predicted(
    model: nn.Module, part: _Part, *, device: torch.device, batch_size: int, bf16: bool | None,
    indices: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """The model's labels of the tiles of ``part`` (all, or ``indices``), batch by batch: (tile indices, labels)."""
    model.eval()
    idx_all = np.arange(len(part)) if indices is None else indices
    with torch.no_grad():
        for start in range(0, len(idx_all), batch_size):
            idx = idx_all[start : start + batch_size]
            x = torch.from_numpy(normalize_tiles(part.image[idx], part.lo[idx], part.inv[idx]))
            x = x.unsqueeze(1).to(device, non_blocking=True)
            with _autocast(device, bf16):
                yield idx, model(x).argmax(1)


def _validation_counts(
    model: nn.Module, part: _Part, *, classes: int, device: torch.device, batch_size: int, bf16: bool | None,
    indices: np.ndarray | None = None, euler: bool = True, ignore: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrix (classes, classes) and, with ``euler``, the (2, classes) Euler sums of :func:`_tile_euler`;
    voxels of the ``ignore`` label count in neither."""
    confusion = torch.zeros(classes * classes, dtype=torch.int64, device=device)
    euler_sums = np.zeros((2, classes), np.int64)
    for idx, pred in _predicted(model, part, device=device, batch_size=batch_size, bf16=bf16, indices=indices):
        y = torch.from_numpy(part.labels[idx].astype(np.int64)).to(device)
        codes = (y * classes + pred).ravel()
        if ignore is not None:
            codes = codes[(y != ignore).ravel()]
        confusion += torch.bincount(codes, minlength=classes * classes)
        if euler:
            euler_sums += _tile_euler(pred.cpu().numpy(), part.labels[idx], classes, ignore)
    return confusion.reshape(classes, classes).cpu().numpy(), euler_sums


def choose_speck_size(
    model: nn.Module, part: _Part, *, classes: int, device: torch.device, batch_size: int = 8,
    bf16: bool | None = None, ignore: int | None = None, sizes: Sequence[int] = SPECK_SIZES,
) -> dict[str, Any]:
    """The speck size (:func:`rockseg.specks.remove_specks`) that scores best on the validation tiles.

    Each size in ``sizes`` is applied to the model's labels of every tile (all tile faces open: a tile is a cut
    of a larger volume, as a block of a prediction is) and scored as a checkpoint is (:func:`selection_score`), but
    with the *piece* error in place of the Euler error: per phase, ``sum |n_pred - n_true| / sum n_true`` over the
    tiles of ``n``, the number of pieces of the phase (:func:`rockseg.specks.count_pieces`: its components, and in
    a two-phase segmentation the first phase's cavities). Removing specks changes only those counts; judged by
    the Euler number, it would also "mend" a segmentation that lost tunnels (throats) by deleting as many true
    small pores, errors that cancel in components - tunnels + cavities. The best size wins, the smaller on a tie
    (0 unless removing specks brings the piece counts closer to the truth).

    Returns ``{"specks": size, "tried": [{"specks", "mean_iou", "piece_error", "euler_error", "score"}, ...]}``.
    """
    preds = [p for _, batch in _predicted(model, part, device=device, batch_size=batch_size, bf16=bf16)
             for p in batch.cpu().numpy().astype(np.uint8)]
    labels = part.labels
    # the truth's piece counts and Euler numbers, once (tiles holding unlabelled voxels count for neither)
    truths = {t: _topology(labels[t], classes) for t in range(len(labels))
              if ignore is None or not (labels[t] == ignore).any()}
    open_faces = ((True, True),) * (labels.ndim - 1)  # every face of a tile is a cut of a larger volume
    tried: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for size in sorted(sizes):
        confusion = np.zeros(classes * classes, np.int64)
        sums = np.zeros((2, 2, classes), np.int64)  # (pieces, Euler) x (sum |pred - true|, sum |true|) x phase
        for t, pred in enumerate(preds):
            cleaned = pred.copy()
            remove_specks(cleaned, size, classes=classes, open_faces=open_faces)
            codes = (labels[t].astype(np.int64) * classes + cleaned).ravel()
            if ignore is not None:
                codes = codes[(labels[t] != ignore).ravel()]
            confusion += np.bincount(codes, minlength=classes * classes)
            if t in truths:
                true = truths[t]
                sums[:, 0] += np.abs(_topology(cleaned, classes) - true)
                sums[:, 1] += np.abs(true)
        iou = iou_from_confusion(confusion.reshape(classes, classes))
        pieces, eulers = euler_error(sums[0]), euler_error(sums[1])  # the same ratio for both counts
        mean_iou = float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0
        row = {"specks": int(size), "mean_iou": round(mean_iou, 5),
               "piece_error": [None if not np.isfinite(e) else round(float(e), 5) for e in pieces],
               "euler_error": [None if not np.isfinite(e) else round(float(e), 5) for e in eulers],
               "score": round(selection_score(iou, pieces), 5)}
        tried.append(row)
        if best is None or row["score"] > best["score"]:
            best = row
    assert best is not None
    return {"specks": best["specks"], "tried": tried}
