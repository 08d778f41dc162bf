"""The label histogram of a block: counts of (true, predicted) label pairs of its scored voxels, per slice if asked.

Summed over the blocks, the histogram is the confusion matrix, from which IoU, Dice, precision, recall, accuracy
and the phase fractions follow exactly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["histogram", "spread"]

# Above this many labels (largest label + 1) a block's confusion counts index the labels present densely.
_DENSE_LABELS_ABOVE = 16


def histogram(
    pred: np.ndarray, true: np.ndarray | None, inside: np.ndarray | None, axis: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Voxel counts of a block, per slice across ``axis`` (one "slice" when None), of the scored voxels.

    Returns
    -------
    hist : (n, m, m) counts of (true, pred) label pairs with ``true``, else (n, m) counts of pred labels
    labels : (m,) array of int, the label of each row / column of ``hist``
    """
    k = int(max(pred.max(), 0 if true is None else true.max())) + 1
    labels = np.arange(k)
    if true is not None and k > _DENSE_LABELS_ABOVE:
        # A few labels spread over 0..255 (0..3 and 255 for "unlabelled", say): number the labels present
        # densely, so the histogram has m * m bins, not k * k.
        labels = np.flatnonzero(np.bincount(pred.ravel(), minlength=k) + np.bincount(true.ravel(), minlength=k))
        dense = np.zeros(k, np.uint8)
        dense[labels] = np.arange(labels.size)
        pred, true = dense[pred], dense[true]
    m = labels.size
    if true is None:
        codes, ncodes = pred, m
    else:
        # m <= 256, so truth * m + pred fits 16 bits (8 when m * m leaves room for the outside-the-mask bin).
        codes = true.astype(np.uint8 if m * m < 256 else np.uint16)
        codes *= m
        codes += pred
        ncodes = m * m
    if inside is not None:
        # Voxels outside the mask go to one more bin, dropped below: one bincount pass instead of a masked copy.
        if ncodes > np.iinfo(codes.dtype).max:
            codes = codes.astype(np.min_scalar_type(ncodes))
        codes = np.where(inside, codes, codes.dtype.type(ncodes))
    n = 1 if axis is None else codes.shape[axis]
    hist = np.empty((n, ncodes + 1), np.int64)
    if axis is None:
        hist[0] = np.bincount(codes.ravel(), minlength=ncodes + 1)
    else:
        for s in range(n):
            hist[s] = np.bincount(np.take(codes, s, axis=axis).ravel(), minlength=ncodes + 1)
    return hist[:, :ncodes].reshape((n, m, m) if true is not None else (n, m)), labels


def spread(dense: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(n, m) columns of dense label indices to (n, k) columns of labels."""
    out = np.zeros((dense.shape[0], k), np.int64)
    out[:, labels] = dense
    return out
