"""Block-wise scoring: reading one block of the volumes (with its one-voxel halo and the mask) and tallying it.

:func:`score_block` is the task run once per block: it counts the confusion of the block's voxels and the Euler
contributions of the windows it owns, reading one voxel below its lower faces to see them. :func:`block_grid`
cuts the scored region into blocks aligned with the chunks of the store, grown to about
``_TARGET_BLOCK_VOXELS`` voxels by :func:`grow_block`.

The objects handed to the block tasks (:class:`Volume`, :class:`Mask`, :class:`Plan`) are plain classes with
``__slots__``, not dataclasses: Dask unpacks dataclass arguments of a task field by field.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rockseg.errors import InputError
from rockseg.metrics.confusion import histogram, spread
from rockseg.metrics.euler import block_euler
from rockseg.metrics.tally import NLABELS, Slices, Tally
from rockseg.vocabulary import MAX_LABEL

__all__ = ["Mask", "Plan", "Volume", "block_grid", "chunks_of", "grow_block", "score_block"]

# Blocks are grown from whole chunks to about this many voxels: large enough that task overhead and the one-voxel
# halo (which makes the store decode the neighbouring chunks) stay small, small enough that a few blocks in flight
# per worker cost tens of MB.
_TARGET_BLOCK_VOXELS = 1 << 22


def _region_text(origin: Sequence[int], lo: Sequence[int], hi: Sequence[int]) -> str:
    return ",".join(f"{o + a}:{o + b}" for o, a, b in zip(origin, lo, hi))


class Volume:
    """A label volume to read regions of: a Zarr array, a NumPy array, or anything indexable like them.

    A plain class rather than a dataclass: Dask unpacks dataclass arguments of a task field by field.
    """

    __slots__ = ("array", "name", "origin", "checked")

    def __init__(self, array: Any, name: str, origin: tuple[int, ...], checked: bool) -> None:
        self.array = array
        self.name = name
        self.origin = origin  # crop start, in array coordinates
        self.checked = checked  # whether the dtype already guarantees labels 0..255

    def read(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        """Labels of crop region [lo, hi) as uint8, after checking their range."""
        region = tuple(slice(o + a, o + b) for o, a, b in zip(self.origin, lo, hi))
        block = np.asarray(self.array[region])
        if block.dtype == np.bool_:
            return block.view(np.uint8)
        if not self.checked and block.size:
            low, high = block.min(), block.max()
            if low < 0 or high > MAX_LABEL:
                bad = int(low) if low < 0 else int(high)
                raise InputError(
                    f"{self.name} has label {bad} (in region {_region_text(self.origin, lo, hi)}): labels must be "
                    f"integers 0-{MAX_LABEL}; relabel the phases to 0..{MAX_LABEL} (uint8)"
                )
        return block.astype(np.uint8, copy=False)


class Mask:
    """A mask volume to read regions of: nonzero voxels are scored, zero voxels are left out."""

    __slots__ = ("array", "origin")

    def __init__(self, array: Any, origin: tuple[int, ...]) -> None:
        self.array = array
        self.origin = origin

    def read(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        region = tuple(slice(o + a, o + b) for o, a, b in zip(self.origin, lo, hi))
        block = np.asarray(self.array[region])
        return block if block.dtype == np.bool_ else block != 0


class Plan:
    """What every block task needs besides its region (a plain class: Dask unpacks dataclass arguments)."""

    __slots__ = ("shape", "lut", "slice_lut", "axis", "allowed", "mask")

    def __init__(
        self,
        shape: tuple[int, ...],
        lut: np.ndarray,
        slice_lut: np.ndarray | None,
        axis: int | None,
        allowed: frozenset[int] | None,
        mask: Mask | None,
    ) -> None:
        self.shape = shape  # of the scored region
        self.lut = lut  # compact Euler table of the volume's dimension
        self.slice_lut = slice_lut  # compact 2D table, for per-slice Euler numbers
        self.axis = axis  # per-slice axis, or None
        self.allowed = allowed  # labels a volume may hold (strict phase names), or None for any
        self.mask = mask


def _check_allowed(volume: Volume, counts: np.ndarray, lo: Sequence[int], hi: Sequence[int], plan: Plan) -> None:
    if plan.allowed is None:
        return
    extra = sorted(set(np.flatnonzero(counts).tolist()) - plan.allowed)
    if extra:
        named = ", ".join(str(label) for label in sorted(plan.allowed))
        raise InputError(
            f"{volume.name} has label {extra[0]} (in region {_region_text(volume.origin, lo, hi)}) but the phase "
            f"names give only labels {named}: name every phase (e.g. --phases ...,{extra[0]}=NAME) or relabel "
            f"{volume.name}"
        )


def _columns(per_label: Mapping[int, np.ndarray], n: int, k: int) -> np.ndarray:
    out = np.zeros((n, k), np.int64)
    for label, values in per_label.items():
        out[:, label] = values
    return out


def _widen(a: np.ndarray, k: int) -> np.ndarray:
    return np.pad(a, ((0, 0), (0, k - a.shape[1]))) if a.shape[1] < k else a


def score_block(
    pred: Volume, truth: Volume | None, lo: tuple[int, ...], hi: tuple[int, ...], plan: Plan
) -> Tally:
    """Tally of crop region [lo, hi): confusion and counts of its voxels, Euler sums of the windows it owns.

    A block owns the windows whose upper corner voxel lies in it, plus, on the upper faces of the volume, the
    windows that stick out into the padding. It reads one voxel below ``lo`` on each axis (background at the
    volume's lower faces) to see them. Voxels outside the mask count nowhere and are background for the Euler
    numbers.
    """
    read_lo = tuple(max(a - 1, 0) for a in lo)
    pad_lo = tuple(a == 0 for a in lo)
    pad_hi = tuple(b == n for b, n in zip(hi, plan.shape))
    inner = tuple(slice(a - r, None) for a, r in zip(lo, read_lo))
    axis = plan.axis
    n_slices = 0 if axis is None else hi[axis] - lo[axis]

    raw_in = None if plan.mask is None else plan.mask.read(read_lo, hi)
    inside = None if raw_in is None else raw_in[inner]
    raw_pred = pred.read(read_lo, hi)
    raw_true = None if truth is None else truth.read(read_lo, hi)
    hist, labels = histogram(raw_pred[inner], None if raw_true is None else raw_true[inner], inside, axis)
    k = int(labels[-1]) + 1
    if raw_true is None:
        slice_pred, slice_true, tp, confusion = spread(hist, labels, k), None, None, None
    else:
        slice_pred, slice_true = spread(hist.sum(axis=1), labels, k), spread(hist.sum(axis=2), labels, k)
        tp = spread(np.diagonal(hist, axis1=1, axis2=2), labels, k)
        confusion = np.zeros((k, k), np.int64)
        confusion[np.ix_(labels, labels)] = hist.sum(axis=0)
    counts_pred = np.pad(slice_pred.sum(axis=0), (0, NLABELS - k))
    counts_true = None if slice_true is None else np.pad(slice_true.sum(axis=0), (0, NLABELS - k))
    _check_allowed(pred, counts_pred, lo, hi, plan)
    euler_pred, slices_pred = block_euler(raw_pred, raw_in, counts_pred, pad_lo, pad_hi, n_slices, plan)
    euler_true: dict[int, int] = {}
    slices_true: dict[int, np.ndarray] = {}
    if truth is not None:
        _check_allowed(truth, counts_true, lo, hi, plan)
        euler_true, slices_true = block_euler(raw_true, raw_in, counts_true, pad_lo, pad_hi, n_slices, plan)
    slices = None
    if axis is not None:
        # Labels seen only in the halo can have Euler contributions: widen every array to hold them.
        width = max([k, *(label + 1 for label in slices_pred), *(label + 1 for label in slices_true)])
        slices = Slices(
            start=lo[axis],
            voxels=slice_pred.sum(axis=1),
            counts_pred=_widen(slice_pred, width),
            euler_pred=_columns(slices_pred, n_slices, width),
            counts_true=None if slice_true is None else _widen(slice_true, width),
            tp=None if tp is None else _widen(tp, width),
            euler_true=None if truth is None else _columns(slices_true, n_slices, width),
        )
    return Tally(counts_pred, counts_true, confusion, euler_pred, euler_true, slices)


def chunks_of(array: Any, ndim: int) -> tuple[int, ...] | None:
    """The chunk shape of a Zarr array of ``ndim`` dimensions; None for a NumPy array or anything else."""
    chunks = getattr(array, "chunks", None)
    if isinstance(chunks, tuple) and len(chunks) == ndim and all(isinstance(c, int) and c > 0 for c in chunks):
        return chunks
    return None


def grow_block(base: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """Grow a block of whole chunks (doubling its shortest axis) until it holds ~_TARGET_BLOCK_VOXELS voxels."""
    block = list(base)
    while math.prod(block) < _TARGET_BLOCK_VOXELS:
        growable = [i for i in range(len(block)) if block[i] < shape[i]]
        if not growable:
            break
        axis = min(growable, key=lambda i: block[i])
        block[axis] *= 2
    return tuple(block)


def block_grid(
    shape: Sequence[int], origin: Sequence[int], block_shape: Sequence[int]
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Blocks ``(lo, hi)`` in crop coordinates, aligned with ``block_shape`` in array coordinates."""
    edges = []
    for n, o, b in zip(shape, origin, block_shape):
        cuts = [o] + list(range((o // b + 1) * b, o + n, b)) + [o + n]
        edges.append([(lo - o, hi - o) for lo, hi in zip(cuts[:-1], cuts[1:])])
    return [tuple(zip(*axes)) for axes in itertools.product(*edges)]  # type: ignore[misc]
