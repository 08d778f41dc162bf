"""What a block contributes to a score, and how contributions add up: every field of a tally is additive.

A tally holds the voxel counts per label, the confusion matrix and the scaled Euler sums per label of a block (or
of a sum of blocks), and, when per-slice scores are asked for, the same per slice (:class:`Slices`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rockseg.vocabulary import MAX_LABEL

__all__ = ["NLABELS", "Slices", "Tally", "merge"]

#: Length of the per-label count arrays: one entry per possible label 0..MAX_LABEL.
NLABELS = MAX_LABEL + 1


@dataclass
class Slices:
    """Per-slice sums over the slices [start, start + n) across the per-slice axis.

    The (n, k) arrays have one column per label 0..k-1, k one more than the largest label a block met, so blocks
    with few phases carry small arrays; the Euler arrays hold 4 times the 2D Euler contributions.
    """

    start: int
    voxels: np.ndarray  # (n,) int64: voxels scored per slice
    counts_pred: np.ndarray  # (n, k) int64
    euler_pred: np.ndarray  # (n, k) int64
    counts_true: np.ndarray | None = None  # (n, k) int64
    tp: np.ndarray | None = None  # (n, k) int64: voxels with the label in both volumes
    euler_true: np.ndarray | None = None  # (n, k) int64


_SLICE_ARRAYS = ("counts_pred", "euler_pred", "counts_true", "tp", "euler_true")


def _merge_slices(parts: Sequence[Slices]) -> Slices:
    start = min(p.start for p in parts)
    stop = max(p.start + p.voxels.shape[0] for p in parts)
    k = max(p.counts_pred.shape[1] for p in parts)
    voxels = np.zeros(stop - start, np.int64)
    for p in parts:
        voxels[p.start - start : p.start - start + p.voxels.shape[0]] += p.voxels
    arrays: dict[str, np.ndarray | None] = {}
    for name in _SLICE_ARRAYS:
        if getattr(parts[0], name) is None:
            arrays[name] = None
            continue
        total = np.zeros((stop - start, k), np.int64)
        for p in parts:
            a = getattr(p, name)
            total[p.start - start : p.start - start + a.shape[0], : a.shape[1]] += a
        arrays[name] = total
    return Slices(start, voxels, **arrays)


@dataclass
class Tally:
    """What one block (or a sum of blocks) contributes; every field is additive."""

    counts_pred: np.ndarray  # (256,) int64: voxels per pred label
    counts_true: np.ndarray | None  # (256,) int64
    confusion: np.ndarray | None  # (k, k) int64, rows truth, columns prediction, k <= 256
    euler_pred: dict[int, int] = field(default_factory=dict)  # label -> 2**d times the Euler contribution
    euler_true: dict[int, int] = field(default_factory=dict)
    slices: Slices | None = None  # per-slice sums, when asked for


def merge(*tallies: Tally) -> Tally:
    """The sum of tallies (of blocks, or of sums of blocks)."""
    first = tallies[0]
    counts_pred = np.sum([t.counts_pred for t in tallies], axis=0)
    counts_true = None if first.counts_true is None else np.sum([t.counts_true for t in tallies], axis=0)
    confusion = None
    if first.confusion is not None:
        k = max(t.confusion.shape[0] for t in tallies)
        confusion = np.zeros((k, k), np.int64)
        for t in tallies:
            n = t.confusion.shape[0]
            confusion[:n, :n] += t.confusion
    euler_pred: dict[int, int] = {}
    euler_true: dict[int, int] = {}
    for t in tallies:
        for label, value in t.euler_pred.items():
            euler_pred[label] = euler_pred.get(label, 0) + value
        for label, value in t.euler_true.items():
            euler_true[label] = euler_true.get(label, 0) + value
    slices = None if first.slices is None else _merge_slices([t.slices for t in tallies])
    return Tally(counts_pred, counts_true, confusion, euler_pred, euler_true, slices)
