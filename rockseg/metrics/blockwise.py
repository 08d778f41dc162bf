"""Block-wise scoring: reading one block of the volumes (exactly its voxels, and the mask's) and tallying it.

:func:`score_block` is run once per block: it counts the confusion of the block's voxels and the Euler
contributions of the windows inside it, and returns its faces for the windows that straddle blocks
(:mod:`rockseg.metrics.seams`). It reads no halo, so a block made of whole chunks decodes each of them once.
:func:`block_grid` cuts the scored region into blocks aligned with the chunks of the store (and never straddling
a shard), grown to about ``_TARGET_BLOCK_VOXELS`` voxels by :func:`grow_block`.

The objects handed to the block tasks (:class:`Volume`, :class:`Mask`, :class:`Plan`) are plain classes with
``__slots__``, not dataclasses: Dask unpacks dataclass arguments of a task field by field.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from rockseg.errors import InputError
from rockseg.metrics.confusion import histogram, spread
from rockseg.metrics.euler import block_euler
from rockseg.metrics.seams import Faces, block_faces
from rockseg.metrics.tally import NLABELS, Slices, Tally
from rockseg.vocabulary import MAX_LABEL

__all__ = [
    "Mask", "Plan", "Volume", "axis_edges", "block_base", "block_grid", "chunks_of", "grow_block", "score_block", "shards_of",
]

# Blocks are grown from whole chunks to about this many voxels: large enough that per-block overhead and the seams
# (faces returned and counted apart) stay small, small enough that a few blocks in flight per worker cost tens of MB.
_TARGET_BLOCK_VOXELS = 1 << 22
# Blocks are made of whole chunks of every volume scored together while such a block has at most this many voxels.
_MAX_COMMON_VOXELS = 1 << 23


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


def score_block(
    pred: Volume, truth: Volume | None, lo: tuple[int, ...], hi: tuple[int, ...], plan: Plan
) -> tuple[Tally, Faces]:
    """Tally of crop region [lo, hi), read exactly (no halo): confusion, counts, Euler sums of its inner windows.

    The windows inside the block, padded with background at the volume's faces, are counted here; the block's
    faces are returned for :class:`~rockseg.metrics.seams.SeamCounter` to count the windows straddling blocks.
    Voxels outside the mask count nowhere and are background for the Euler numbers.
    """
    pad_lo = tuple(a == 0 for a in lo)
    pad_hi = tuple(b == n for b, n in zip(hi, plan.shape))
    axis = plan.axis
    n_slices = 0 if axis is None else hi[axis] - lo[axis]

    inside = None if plan.mask is None else plan.mask.read(lo, hi)
    raw_pred = pred.read(lo, hi)
    raw_true = None if truth is None else truth.read(lo, hi)
    hist, labels = histogram(raw_pred, raw_true, inside, axis)
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
    euler_pred, slices_pred = block_euler(raw_pred, inside, counts_pred, pad_lo, pad_hi, n_slices, plan)
    euler_true: dict[int, int] = {}
    slices_true: dict[int, np.ndarray] = {}
    if truth is not None:
        _check_allowed(truth, counts_true, lo, hi, plan)
        euler_true, slices_true = block_euler(raw_true, inside, counts_true, pad_lo, pad_hi, n_slices, plan)
    slices = None
    if axis is not None:
        slices = Slices(
            start=lo[axis],
            voxels=slice_pred.sum(axis=1),
            counts_pred=slice_pred,
            euler_pred=_columns(slices_pred, n_slices, k),
            counts_true=slice_true,
            tp=tp,
            euler_true=None if truth is None else _columns(slices_true, n_slices, k),
        )
    faces = Faces(
        block_faces(raw_pred, inside, lo, hi, plan.shape),
        None if raw_true is None else block_faces(raw_true, inside, lo, hi, plan.shape),
    )
    return Tally(counts_pred, counts_true, confusion, euler_pred, euler_true, slices), faces


def chunks_of(array: Any, ndim: int) -> tuple[int, ...] | None:
    """The chunk shape of a Zarr array of ``ndim`` dimensions (the inner chunks of a sharded one); None for NumPy."""
    return _shape_attribute(array, "chunks", ndim)


def shards_of(array: Any, ndim: int) -> tuple[int, ...] | None:
    """The shard shape of a sharded Zarr v3 array of ``ndim`` dimensions; None for any other array."""
    return _shape_attribute(array, "shards", ndim)


def block_base(arrays: Sequence[Any], ndim: int) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """The chunk shape blocks are made of and the shard shape they should not straddle, for volumes read together.

    The blocks are made of whole chunks of every volume (the least common multiple of their chunk shapes) when
    that stays small, so each volume decodes each of its chunks once; else of the first volumes' chunks that allow
    it. The shard shape is the first volume's (None when it is not sharded, or for NumPy arrays).
    """
    grids = [c for c in (chunks_of(a, ndim) for a in arrays if a is not None) if c is not None]
    if not grids:
        return None, None
    shard = shards_of(next(a for a in arrays if a is not None and chunks_of(a, ndim)), ndim)
    for n in range(len(grids), 0, -1):
        common = tuple(math.lcm(*axis) for axis in zip(*grids[:n]))
        if n == 1 or math.prod(common) <= _MAX_COMMON_VOXELS:
            return common, shard
    raise AssertionError("unreachable")


def _shape_attribute(array: Any, name: str, ndim: int) -> tuple[int, ...] | None:
    try:
        value = getattr(array, name, None)
    except Exception:  # zarr v2 arrays have no shards; some wrappers raise instead of returning None
        return None
    if isinstance(value, tuple) and len(value) == ndim and all(isinstance(c, int) and c > 0 for c in value):
        return value
    return None


def _sizes(base: int, shard: int | None) -> Iterator[int]:
    """Block sizes along an axis, ascending: whole chunks dividing the shard, then whole shards."""
    if shard is None or shard % base:
        yield from itertools.count(base, base)
        return
    per_shard = shard // base
    yield from (m * base for m in range(1, per_shard + 1) if per_shard % m == 0)
    yield from itertools.count(2 * shard, shard)


def grow_block(base: Sequence[int], shape: Sequence[int], shard: Sequence[int] | None = None) -> tuple[int, ...]:
    """Grow a block of whole chunks (about doubling its shortest axis) until it holds ~_TARGET_BLOCK_VOXELS voxels.

    With ``shard`` (the shard shape of a sharded store) a block never straddles a shard: along each axis it is a
    number of chunks that divides the shard, or a number of whole shards.
    """
    block = list(base)
    while math.prod(block) < _TARGET_BLOCK_VOXELS:
        growable = [i for i in range(len(block)) if block[i] < shape[i]]
        if not growable:
            break
        axis = min(growable, key=lambda i: block[i])
        sizes = _sizes(base[axis], None if shard is None else shard[axis])
        block[axis] = next(n for n in sizes if n >= 2 * block[axis])
    return tuple(block)


def axis_edges(lo: int, hi: int, origin: int, step: int) -> list[tuple[int, int]]:
    """Cuts of crop range [lo, hi) at the multiples of ``step`` in array coordinates (crop start ``origin``)."""
    a = origin + lo
    cuts = [a, *range((a // step + 1) * step, origin + hi, step), origin + hi]
    return [(x - origin, y - origin) for x, y in zip(cuts[:-1], cuts[1:])]


def block_grid(
    shape: Sequence[int], origin: Sequence[int], block_shape: Sequence[int]
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Blocks ``(lo, hi)`` in crop coordinates, aligned with ``block_shape`` in array coordinates."""
    edges = [axis_edges(0, n, o, b) for n, o, b in zip(shape, origin, block_shape)]
    return [tuple(zip(*axes)) for axes in itertools.product(*edges)]  # type: ignore[misc]
