"""Exact, lazy scoring of label volumes: confusion matrix, per-phase agreement, fractions and Euler numbers.

:func:`score_volumes` is the library behind ``rockseg score``. It walks the volume block by block (blocks made of
whole chunks of the prediction store), with Dask's threaded scheduler, so memory stays bounded by a few blocks
whatever the volume size, and every number it reports is exact:

* The confusion matrix is a sum of per-block confusion matrices; IoU, Dice, precision, recall, accuracy and the
  phase fractions follow from it exactly.
* The Euler number is additive over 2x2x2 (2x2 in 2D) windows of voxels. With the volume padded by background at
  its faces, each block counts the windows whose origin it owns, reading a one-voxel halo on its lower side, so the
  sum over blocks equals the whole-volume value for any chunking. It equals
  ``skimage.measure.euler_number(volume == label, connectivity=c)`` exactly.
* Per slice (``per_slice="z"``...): each block also counts the confusion of each of its slices, and the 2x2
  windows it owns in each slice (same halo), so per-slice IoU and 2D Euler numbers are exact too.
* A mask leaves voxels out: they are not counted, and they are background of every phase for the Euler numbers,
  as if the volume ended at the mask's boundary.

The Euler lookup table (:func:`euler_lut`) is built from first principles: a phase is turned into a cubical
complex, whose Euler characteristic (vertices - edges + faces - cubes) is split over the windows that share each
cell.

* ``connectivity=1`` (6-neighbourhood in 3D, 4 in 2D): voxels are the vertices of the unit lattice, and an edge,
  square or cube of the lattice belongs to the complex when all its corner voxels are in the phase.
* ``connectivity=3`` (26-neighbourhood in 3D, 8 in 2D): each voxel is a closed unit cube, so cubes that touch at an
  edge or a corner are connected. The cells of their union are dual to the cells of the lattice window: the
  window's centre point, the edges and faces around it, and the voxels' cubes; a dual cell belongs to the union
  when any voxel around it is in the phase.

A cell of dimension ``k`` of the lattice is shared by ``2**(d - k)`` windows (its dual cell by ``2**k``), so the
fractional weights become integers once scaled by ``2**d`` (8 in 3D, 4 in 2D).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np

from rockseg.errors import InputError
from rockseg.io.stores import check_crop, phases_of
from rockseg.vocabulary import AXES, CONNECTIVITIES, MAX_LABEL

__all__ = ["AXES", "CONNECTIVITIES", "MAX_LABEL", "euler_lut", "euler_number", "score_volumes"]

#: Connectivity values of the command contract: 1 = neighbours across faces only (6 in 3D, 4 in 2D),
#: 3 = full neighbourhood (26 in 3D, 8 in 2D).

_NLABELS = MAX_LABEL + 1
# Blocks are grown from whole chunks to about this many voxels: large enough that task overhead and the one-voxel
# halo (which makes the store decode the neighbouring chunks) stay small, small enough that a few blocks in flight
# per worker cost tens of MB.
_TARGET_BLOCK_VOXELS = 1 << 22
_NUMPY_BASE_BLOCK = 64
# Above this many labels (largest label + 1) a block's confusion counts index the labels present densely.
_DENSE_LABELS_ABOVE = 16
# Number of partial results summed by one reduction task: a tree keeps the number of results held at once small.
_REDUCE_FANIN = 16


# --------------------------------------------------------------------------------------------------------------
# Euler number
# --------------------------------------------------------------------------------------------------------------


def check_connectivity(connectivity: int, *, spatial_dims: int = 3) -> int:
    """Return ``connectivity`` if it is one of :data:`CONNECTIVITIES`, else raise :class:`InputError`."""
    if isinstance(connectivity, bool) or connectivity not in CONNECTIVITIES:
        full = 26 if spatial_dims == 3 else 8
        faces = 6 if spatial_dims == 3 else 4
        raise InputError(
            f"connectivity {connectivity!r} is not supported: use 1 ({faces}-neighbourhood) "
            f"or 3 ({full}-neighbourhood, the default)"
        )
    return int(connectivity)


def euler_lut(spatial_dims: int, connectivity: int) -> np.ndarray:
    """Lookup table of the Euler-number contribution of every 2x2x2 (or 2x2) window of a binary volume.

    Parameters
    ----------
    spatial_dims : 2 or 3.
    connectivity : 1 (neighbours across faces: 6 in 3D, 4 in 2D) or 3 (full neighbourhood: 26 in 3D, 8 in 2D).

    Returns
    -------
    lut : (2 ** 2**spatial_dims,) array of int64 (256 entries in 3D, 16 in 2D), read-only
        ``2**spatial_dims`` times the contribution of a window to the Euler number. The voxel at offset
        ``(oz, oy, ox)`` (each 0 or 1) from the window's origin is bit ``4 * oz + 2 * oy + ox`` of the window's
        index (``(oy, ox)`` is bit ``2 * oy + ox`` in 2D), set when the voxel is in the phase.
        Summed over all windows of a volume padded by one voxel of background, the table gives
        ``2**spatial_dims`` times the Euler number.

    Examples
    --------
    >>> lut = euler_lut(3, 3)
    >>> int(lut[0b00000001]), int(lut[0b11111111])  # one voxel in a corner; a full window
    (1, 0)
    """
    if spatial_dims not in (2, 3):
        raise InputError(f"spatial_dims {spatial_dims!r} is not supported: use 2 or 3")
    return _euler_lut(spatial_dims, check_connectivity(connectivity, spatial_dims=spatial_dims) == 3)


@functools.cache
def _euler_lut(d: int, full: bool) -> np.ndarray:
    corners = list(itertools.product((0, 1), repeat=d))  # enumeration order = bit order (first axis most significant)
    # Every cell of the unit cube [0, 1]^d: each axis is fixed at 0, fixed at 1, or free (None).
    cells = []
    for spec in itertools.product((0, 1, None), repeat=d):
        mask = 0
        for bit, corner in enumerate(corners):
            if all(s is None or c == s for s, c in zip(spec, corner)):
                mask |= 1 << bit
        cells.append((sum(s is None for s in spec), mask))
    lut = np.zeros(1 << len(corners), np.int64)
    for config in range(lut.size):
        total = 0
        for k, mask in cells:
            if full:
                # Dual cell of dimension d - k, shared by 2**k windows: present when any voxel around it is set.
                if config & mask:
                    total += (-1) ** (d - k) * 2**k
            elif config & mask == mask:
                # Lattice cell of dimension k, shared by 2**(d - k) windows: present when all its corners are set.
                total += (-1) ** k * 2**k
        lut[config] = total
    lut.flags.writeable = False
    return lut


def _window_configs(mask: np.ndarray, axes: Sequence[int] | None = None) -> np.ndarray:
    """Index (see :func:`euler_lut`) of every window of a boolean volume spanning 2 voxels along ``axes``.

    ``axes`` default to all axes (2x2x2 / 2x2 windows, shape ``mask.shape - 1``); two axes of a 3D volume give the
    2x2 windows of every plane across the third axis (bit order of the 2D table, the first of ``axes`` most
    significant).
    """
    config = mask.view(np.uint8)
    nbits = 1
    # One axis at a time (last first), so 3 shift-and-or passes build the 8-bit index instead of 8.
    for axis in reversed(range(mask.ndim) if axes is None else sorted(axes)):
        lower = tuple(slice(0, -1) if i == axis else slice(None) for i in range(mask.ndim))
        upper = tuple(slice(1, None) if i == axis else slice(None) for i in range(mask.ndim))
        merged = config[upper] << nbits
        merged |= config[lower]
        config, nbits = merged, 2 * nbits
    return config


@functools.cache
def _compact_lut(d: int, connectivity: int) -> np.ndarray:
    # Every entry lies in [-6, 4]: int8 makes the lookup of a whole block cheap.
    return euler_lut(d, connectivity).astype(np.int8)


def _scaled_euler(mask: np.ndarray, lut8: np.ndarray) -> int:
    """``2**d`` times the Euler number of the windows of a boolean volume (padding included in ``mask``)."""
    if min(mask.shape) < 2:
        return 0
    return int(lut8[_window_configs(mask)].sum(dtype=np.int64))


def euler_number(volume: np.ndarray, *, connectivity: int = 3) -> int:
    """Euler number of the nonzero voxels of an in-memory volume, as :func:`skimage.measure.euler_number`.

    In 3D it is the number of objects minus the number of tunnels plus the number of cavities; in 2D the number
    of objects minus the number of holes. The volume is taken as surrounded by background.

    Parameters
    ----------
    volume : (Z, Y, X) or (Y, X) array
        Nonzero voxels are the phase.
    connectivity : 1 (6-neighbourhood in 3D, 4 in 2D) or 3 (26-neighbourhood in 3D, 8 in 2D; the default).
        skimage's 2D ``connectivity=2`` is this function's 3.

    Returns
    -------
    int

    Examples
    --------
    >>> import numpy as np
    >>> cube = np.zeros((5, 5, 5), np.uint8)
    >>> cube[1:4, 1:4, 1:4] = 1
    >>> euler_number(cube)
    1
    >>> cube[2, 2, 2] = 0  # a cavity
    >>> euler_number(cube)
    2
    """
    volume = np.asarray(volume)
    if volume.ndim not in (2, 3):
        raise InputError(f"volume has shape {volume.shape}: the Euler number needs a 2D or 3D volume")
    lut8 = _compact_lut(volume.ndim, check_connectivity(connectivity, spatial_dims=volume.ndim))
    return _unscale(_scaled_euler(np.pad(volume != 0, 1), lut8), volume.ndim)


def _unscale(scaled: int, d: int) -> int:
    value, rest = divmod(scaled, 1 << d)
    if rest:
        raise RuntimeError(f"internal error: Euler sum {scaled} is not a multiple of {1 << d}")
    return value


# --------------------------------------------------------------------------------------------------------------
# Block-wise scoring
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Slices:
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


def _merge_slices(parts: Sequence[_Slices]) -> _Slices:
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
    return _Slices(start, voxels, **arrays)


@dataclass
class _Tally:
    """What one block (or a sum of blocks) contributes; every field is additive."""

    counts_pred: np.ndarray  # (256,) int64: voxels per pred label
    counts_true: np.ndarray | None  # (256,) int64
    confusion: np.ndarray | None  # (k, k) int64, rows truth, columns prediction, k <= 256
    euler_pred: dict[int, int] = field(default_factory=dict)  # label -> 2**d times the Euler contribution
    euler_true: dict[int, int] = field(default_factory=dict)
    slices: _Slices | None = None  # per-slice sums, when asked for


def _merge(*tallies: _Tally) -> _Tally:
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
    return _Tally(counts_pred, counts_true, confusion, euler_pred, euler_true, slices)


def _region_text(origin: Sequence[int], lo: Sequence[int], hi: Sequence[int]) -> str:
    return ",".join(f"{o + a}:{o + b}" for o, a, b in zip(origin, lo, hi))


class _Volume:
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


class _Mask:
    """A mask volume to read regions of: nonzero voxels are scored, zero voxels are left out."""

    __slots__ = ("array", "origin")

    def __init__(self, array: Any, origin: tuple[int, ...]) -> None:
        self.array = array
        self.origin = origin

    def read(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        region = tuple(slice(o + a, o + b) for o, a, b in zip(self.origin, lo, hi))
        block = np.asarray(self.array[region])
        return block if block.dtype == np.bool_ else block != 0


class _Plan:
    """What every block task needs besides its region (a plain class: Dask unpacks dataclass arguments)."""

    __slots__ = ("shape", "lut", "slice_lut", "axis", "allowed", "mask")

    def __init__(
        self,
        shape: tuple[int, ...],
        lut: np.ndarray,
        slice_lut: np.ndarray | None,
        axis: int | None,
        allowed: frozenset[int] | None,
        mask: _Mask | None,
    ) -> None:
        self.shape = shape  # of the scored region
        self.lut = lut  # compact Euler table of the volume's dimension
        self.slice_lut = slice_lut  # compact 2D table, for per-slice Euler numbers
        self.axis = axis  # per-slice axis, or None
        self.allowed = allowed  # labels a volume may hold (strict phase names), or None for any
        self.mask = mask


def _histogram(
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


def _spread(dense: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(n, m) columns of dense label indices to (n, k) columns of labels."""
    out = np.zeros((dense.shape[0], k), np.int64)
    out[:, labels] = dense
    return out


def _slice_euler(phase: np.ndarray, axis: int, n: int, lut2: np.ndarray) -> np.ndarray:
    """4 times the 2D Euler contributions, per owned slice across ``axis``, of a padded block mask (n,)."""
    owned = phase[tuple(slice(1, 1 + n) if i == axis else slice(None) for i in range(phase.ndim))]
    plane = tuple(i for i in range(phase.ndim) if i != axis)
    if min(owned.shape[i] for i in plane) < 2:
        return np.zeros(n, np.int64)
    return lut2[_window_configs(owned, plane)].sum(axis=plane, dtype=np.int64)


def _block_euler(
    raw: np.ndarray,
    raw_in: np.ndarray | None,
    counts: np.ndarray,
    pad_lo: Sequence[bool],
    pad_hi: Sequence[bool],
    n_slices: int,
    plan: _Plan,
) -> tuple[dict[int, int], dict[int, np.ndarray]]:
    """Scaled Euler sums, per label, of the windows of a block read with its lower halo; per slice too if asked.

    ``counts`` are the label counts of the block without its halo; the labels seen only in the halo are found
    from the halo planes, which are small. Voxels outside the mask (``raw_in`` False) are background for every
    phase.
    """
    present = set(np.flatnonzero(counts).tolist())
    for axis, padded in enumerate(pad_lo):
        if not padded:
            plane = np.take(raw, 0, axis=axis)
            if raw_in is not None:
                plane = plane[np.take(raw_in, 0, axis=axis)]
            present.update(np.unique(plane).tolist())
    padded_shape = tuple(n + lo + hi for n, lo, hi in zip(raw.shape, pad_lo, pad_hi))
    place = tuple(slice(int(lo), int(lo) + n) for n, lo in zip(raw.shape, pad_lo))
    phase = np.zeros(padded_shape, np.bool_)
    inner = phase[place]
    whole: dict[int, int] = {}
    per_slice: dict[int, np.ndarray] = {}
    for label in sorted(present):
        # The halo voxels count (windows straddling the block's lower faces belong to it); the padding is
        # background for every phase, the one labelled 0 included.
        np.equal(raw, label, out=inner)
        if raw_in is not None:
            inner &= raw_in
        value = _scaled_euler(phase, plan.lut)
        if value:
            whole[label] = value
        if plan.axis is not None:
            values = _slice_euler(phase, plan.axis, n_slices, plan.slice_lut)
            if values.any():
                per_slice[label] = values
    return whole, per_slice


def _check_allowed(volume: _Volume, counts: np.ndarray, lo: Sequence[int], hi: Sequence[int], plan: _Plan) -> None:
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


def _score_block(
    pred: _Volume, truth: _Volume | None, lo: tuple[int, ...], hi: tuple[int, ...], plan: _Plan
) -> _Tally:
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
    hist, labels = _histogram(raw_pred[inner], None if raw_true is None else raw_true[inner], inside, axis)
    k = int(labels[-1]) + 1
    if raw_true is None:
        slice_pred, slice_true, tp, confusion = _spread(hist, labels, k), None, None, None
    else:
        slice_pred, slice_true = _spread(hist.sum(axis=1), labels, k), _spread(hist.sum(axis=2), labels, k)
        tp = _spread(np.diagonal(hist, axis1=1, axis2=2), labels, k)
        confusion = np.zeros((k, k), np.int64)
        confusion[np.ix_(labels, labels)] = hist.sum(axis=0)
    counts_pred = np.pad(slice_pred.sum(axis=0), (0, _NLABELS - k))
    counts_true = None if slice_true is None else np.pad(slice_true.sum(axis=0), (0, _NLABELS - k))
    _check_allowed(pred, counts_pred, lo, hi, plan)
    euler_pred, slices_pred = _block_euler(raw_pred, raw_in, counts_pred, pad_lo, pad_hi, n_slices, plan)
    euler_true: dict[int, int] = {}
    slices_true: dict[int, np.ndarray] = {}
    if truth is not None:
        _check_allowed(truth, counts_true, lo, hi, plan)
        euler_true, slices_true = _block_euler(raw_true, raw_in, counts_true, pad_lo, pad_hi, n_slices, plan)
    slices = None
    if axis is not None:
        # Labels seen only in the halo can have Euler contributions: widen every array to hold them.
        width = max([k, *(label + 1 for label in slices_pred), *(label + 1 for label in slices_true)])
        slices = _Slices(
            start=lo[axis],
            voxels=slice_pred.sum(axis=1),
            counts_pred=_widen(slice_pred, width),
            euler_pred=_columns(slices_pred, n_slices, width),
            counts_true=None if slice_true is None else _widen(slice_true, width),
            tp=None if tp is None else _widen(tp, width),
            euler_true=None if truth is None else _columns(slices_true, n_slices, width),
        )
    return _Tally(counts_pred, counts_true, confusion, euler_pred, euler_true, slices)


def _chunks_of(array: Any, ndim: int) -> tuple[int, ...] | None:
    chunks = getattr(array, "chunks", None)
    if isinstance(chunks, tuple) and len(chunks) == ndim and all(isinstance(c, int) and c > 0 for c in chunks):
        return chunks
    return None


def _grow_block(base: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """Grow a block of whole chunks (doubling its shortest axis) until it holds ~_TARGET_BLOCK_VOXELS voxels."""
    block = list(base)
    while math.prod(block) < _TARGET_BLOCK_VOXELS:
        growable = [i for i in range(len(block)) if block[i] < shape[i]]
        if not growable:
            break
        axis = min(growable, key=lambda i: block[i])
        block[axis] *= 2
    return tuple(block)


def _block_grid(
    shape: Sequence[int], origin: Sequence[int], block_shape: Sequence[int]
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Blocks ``(lo, hi)`` in crop coordinates, aligned with ``block_shape`` in array coordinates."""
    edges = []
    for n, o, b in zip(shape, origin, block_shape):
        cuts = [o] + list(range((o // b + 1) * b, o + n, b)) + [o + n]
        edges.append([(lo - o, hi - o) for lo, hi in zip(cuts[:-1], cuts[1:])])
    return [tuple(zip(*axes)) for axes in itertools.product(*edges)]  # type: ignore[misc]


def _check_labels_dtype(array: Any, name: str) -> bool:
    """Check the dtype of a label volume; return whether it already guarantees labels 0..255."""
    dtype = np.dtype(array.dtype)
    if dtype == np.bool_ or dtype == np.uint8:
        return True
    if dtype.kind not in "ui":
        raise InputError(
            f"{name} has dtype {dtype} but labels must be integers: give a label volume (phases 0..{MAX_LABEL}, "
            f"uint8), e.g. round and convert it with 'rockseg convert', or score the output of 'rockseg predict'"
        )
    return False


def _check_mask(mask: Any, shape: tuple[int, ...], mask_name: str, pred_name: str) -> None:
    if not (hasattr(mask, "shape") and hasattr(mask, "dtype")):
        raise InputError(f"{mask_name} is a {type(mask).__name__}, not an array: give a Zarr or NumPy array")
    mask_shape = tuple(int(n) for n in mask.shape)
    if mask_shape != shape:
        raise InputError(
            f"{mask_name} has shape {mask_shape} but {pred_name} has {shape}: the mask must have the shape of the "
            f"volume it masks (nonzero = scored, 0 = left out)"
        )
    if np.dtype(mask.dtype).kind not in "biuf":
        raise InputError(
            f"{mask_name} has dtype {np.dtype(mask.dtype)}: a mask holds numbers, nonzero where voxels are scored"
        )


def _check_axis(per_slice: str | int | None, shape: tuple[int, ...], pred_name: str) -> int | None:
    if per_slice is None:
        return None
    if len(shape) != 3:
        raise InputError(
            f"per-slice scores need a 3D (Z, Y, X) volume but {pred_name} has shape {shape}: drop --per-slice"
        )
    if isinstance(per_slice, str) and per_slice.lower() in AXES:
        return AXES.index(per_slice.lower())
    if isinstance(per_slice, (int, np.integer)) and not isinstance(per_slice, bool) and 0 <= per_slice < 3:
        return int(per_slice)
    raise InputError(f"per-slice axis {per_slice!r} is not one of {', '.join(AXES)}: choose the axis slices cut")


def _check_label(label: Any, what: str, fix: str) -> int:
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label <= MAX_LABEL:
        raise InputError(f"{what} is not an integer 0-{MAX_LABEL}: {fix}")
    return int(label)


def _ratio(num: int, den: int) -> float | None:
    return float(num / den) if den else None


def score_volumes(
    pred: Any,
    truth: Any = None,
    *,
    connectivity: int = 3,
    phases: Mapping[int, str] | None = None,
    strict_phases: bool = False,
    ignore: Sequence[int] = (),
    mask: Any = None,
    per_slice: str | int | None = None,
    crop: tuple[slice, ...] | None = None,
    num_workers: int | None = None,
    pred_name: str = "prediction",
    truth_name: str = "truth",
    mask_name: str = "mask",
    block_shape: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Score a label volume, against a true one when given, exactly and chunk by chunk.

    Parameters
    ----------
    pred : (Z, Y, X) or (Y, X) zarr.Array (v2 or v3) or NumPy array of integer labels 0..255
        The predicted labels. Read block by block, never whole.
    truth : same shape as ``pred``, optional
        The true labels. Without it only the phase fractions and Euler numbers of ``pred`` are reported.
    connectivity : 1 or 3
        Neighbourhood of a phase for the Euler number: 3 (the default) is the 26-neighbourhood in 3D (8 in 2D),
        1 the 6-neighbourhood (4 in 2D), as ``skimage.measure.euler_number`` with connectivity 3 / 1 (2 / 1 in 2D).
    phases : {label: name}, optional
        Phase names. Every label named here is reported, even if absent from both volumes. ``None``: the names in
        the ``phases`` attribute of ``pred``, else of ``truth``, when they are Zarr arrays. Unnamed phases are
        called ``"phase<N>"``.
    strict_phases : bool
        Refuse (:class:`InputError`) a volume holding a label, among its scored voxels, that ``phases`` does not
        name (the CLI's ``--phases``: a label nobody named is usually a wrong volume or a wrong label map).
    ignore : sequence of int
        Labels left out of ``mean_iou`` (and of the per-slice ``mean_iou``); they are still reported.
    mask : array of the shape of ``pred`` (any number dtype), optional
        Voxels where it is 0 count for nothing: not in the confusion matrix, the fractions, ``voxels``, nor the
        Euler numbers, for which they are background of every phase (so a phase cut by the mask's boundary is
        counted as it looks inside the mask, like a volume whose outside is background).
    per_slice : "z", "y", "x" (or 0, 1, 2), optional
        Also score every slice across this axis of a 3D volume: per-slice IoU, fractions and 2D Euler numbers
        (``connectivity`` 1 gives the 4-neighbourhood in the plane, 3 the 8-neighbourhood, matching
        ``skimage.measure.euler_number`` on the slice with connectivity 1 / 2), summarised per phase.
    crop : tuple of slices, one per axis, optional
        Score only this region (see :func:`rockseg.io.stores.parse_crop`). It is scored as a volume of its own: its
        faces are padded with background for the Euler number.
    num_workers : int, optional
        Threads reading and counting blocks; default: one per CPU core.
    pred_name, truth_name, mask_name : str
        How to call the volumes in error messages (the CLI passes their paths).
    block_shape : sequence of int, optional
        Shape of the blocks, in voxels. Default: whole chunks of ``pred`` (64-voxel cubes for a NumPy array),
        grown along their shortest axis to about 4 M voxels. Blocks are aligned with multiples of this shape.

    Returns
    -------
    dict
        The document ``rockseg score --json`` prints, plain Python ints, floats and ``None``:
        ``phases``: a list, sorted by label, of ``{"label", "name", "iou", "dice", "precision", "recall",
        "fraction_pred", "fraction_true", "euler_pred", "euler_true"}``; then ``mean_iou``, ``accuracy``,
        ``confusion`` (rows = truth, columns = prediction, phases in the order of ``phases``), ``connectivity``
        and ``voxels`` (voxels scored). Without ``truth``, each phase has only ``label``, ``name``,
        ``fraction_pred`` and ``euler_pred``, and the document only ``phases``, ``connectivity`` and ``voxels``.
        A ratio whose denominator is zero is ``None``: IoU and Dice of a phase absent from both volumes, precision
        of a phase never predicted, recall of a phase absent from the truth. ``mean_iou`` averages the IoUs that
        are not ``None``, of the labels not in ``ignore``.

        Keys added only when their option is used: ``ignore`` (sorted labels), ``voxels_outside_mask`` (voxels of
        the scored region left out by ``mask``), and ``per_slice``: ``{"axis": "z", "neighbourhood": 4 or 8,
        "index": [slice indices in the volume], "voxels": [scored voxels per slice], "mean_iou": [per slice],
        "phases": [...]}``, each phase ``{"label", "name", "iou_mean", "iou_min", "iou_max", "euler_pred_mean",
        "euler_pred_min", "euler_pred_max", "euler_true_mean", "euler_true_min", "euler_true_max", "iou",
        "fraction_pred", "fraction_true", "euler_pred", "euler_true"}`` where the last five are lists with one
        value per slice (``None`` where undefined); the IoU summaries are over the slices where the IoU is
        defined, the Euler summaries over the slices with a scored voxel. Without ``truth`` the keys about truth
        and agreement are absent.

    Raises
    ------
    InputError
        Before any block is read: volumes (or a mask) of different shapes, not 2D or 3D, empty, of a non-integer
        dtype, a bad connectivity, crop, phase label, ignored label, per-slice axis or block shape. While
        reading: a label below 0 or above 255, or one that ``phases`` does not name with ``strict_phases``.
        After: a mask that leaves out every voxel.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.zeros((4, 4, 4), np.uint8); truth[1:3, 1:3, 1:3] = 1
    >>> pred = truth.copy(); pred[1, 1, 1] = 0
    >>> doc = score_volumes(pred, truth, phases={0: "pore", 1: "grain"})
    >>> # the pore phase wraps the grain cube: one object with one cavity, Euler number 2
    >>> [(p["name"], round(p["iou"], 3), p["euler_pred"]) for p in doc["phases"]]
    [('pore', 0.982, 2), ('grain', 0.875, 1)]
    >>> doc["confusion"]
    [[56, 0], [1, 7]]
    >>> doc = score_volumes(pred, truth, per_slice="z")
    >>> doc["per_slice"]["phases"][1]["euler_pred"]  # the grain cube seen slice by slice
    [0, 1, 1, 0]
    """
    # --- checks, all before any graph is built ---
    for array, name in ((pred, pred_name), (truth, truth_name)):
        if array is not None and not (hasattr(array, "shape") and hasattr(array, "dtype")):
            raise InputError(f"{name} is a {type(array).__name__}, not an array: give a Zarr or NumPy array")
    shape = tuple(int(n) for n in pred.shape)
    if len(shape) not in (2, 3):
        raise InputError(
            f"{pred_name} has shape {shape}: score needs a 3D (Z, Y, X) or 2D (Y, X) label volume"
        )
    if truth is not None and tuple(truth.shape) != shape:
        raise InputError(
            f"{truth_name} has shape {tuple(int(n) for n in truth.shape)} but {pred_name} has {shape}: "
            f"score needs volumes of the same shape"
        )
    if 0 in shape:
        raise InputError(f"{pred_name} has shape {shape}: there is nothing to score")
    if mask is not None:
        _check_mask(mask, shape, mask_name, pred_name)
    d = len(shape)
    connectivity = check_connectivity(connectivity, spatial_dims=d)
    axis = _check_axis(per_slice, shape, pred_name)
    pred_checked = _check_labels_dtype(pred, pred_name)
    truth_checked = _check_labels_dtype(truth, truth_name) if truth is not None else True
    region = check_crop(crop, shape, name=pred_name)
    origin = tuple(r.start for r in region)
    size = tuple(r.stop - r.start for r in region)
    if num_workers is not None and (isinstance(num_workers, bool) or int(num_workers) < 1):
        raise InputError(f"num_workers {num_workers!r} must be a positive number of threads")
    if phases is None:
        phases = phases_of(pred) or (phases_of(truth) if truth is not None else {})
    names = {
        _check_label(label, f"phase label {label!r} ({name!r})", "fix the phase names"): str(name)
        for label, name in phases.items()
    }
    ignored = frozenset(
        _check_label(label, f"ignored label {label!r}", "give a label of the volumes") for label in ignore
    )
    if block_shape is None:
        base = _chunks_of(pred, d) or (_chunks_of(truth, d) if truth is not None else None)
        block_shape = _grow_block(base or (_NUMPY_BASE_BLOCK,) * d, shape)
    else:
        block_shape = tuple(block_shape)
        if len(block_shape) != d or not all(isinstance(b, (int, np.integer)) and b > 0 for b in block_shape):
            raise InputError(f"block shape {block_shape!r} must give one positive size per axis of {shape}")

    # --- the lazy graph: one task per block, summed by a tree of small reductions ---
    plan = _Plan(
        shape=size,
        lut=_compact_lut(d, connectivity),
        slice_lut=None if axis is None else _compact_lut(2, connectivity),
        axis=axis,
        allowed=frozenset(names) if strict_phases else None,
        mask=None if mask is None else _Mask(mask, origin),
    )
    pred_vol = _Volume(pred, pred_name, origin, pred_checked)
    truth_vol = None if truth is None else _Volume(truth, truth_name, origin, truth_checked)
    score = dask.delayed(_score_block, pure=False)
    parts = [score(pred_vol, truth_vol, lo, hi, plan) for lo, hi in _block_grid(size, origin, block_shape)]
    merge = dask.delayed(_merge, pure=False)
    while len(parts) > 1:
        parts = [merge(*parts[i : i + _REDUCE_FANIN]) for i in range(0, len(parts), _REDUCE_FANIN)]
    (total,) = dask.compute(parts[0], scheduler="threads", num_workers=num_workers)
    if not total.counts_pred.any():
        raise InputError(
            f"{mask_name} leaves out every voxel of the scored region: nothing to score; check the mask "
            f"(0 = left out, nonzero = scored) and --crop"
        )
    doc = _document(total, names, connectivity, d, with_truth=truth is not None, ignored=ignored)
    if ignore:
        doc["ignore"] = sorted(ignored)
    if mask is not None:
        doc["voxels_outside_mask"] = math.prod(size) - doc["voxels"]
    if axis is not None:
        doc["per_slice"] = _per_slice_document(
            total.slices, doc, names, connectivity, axis=axis, first=origin[axis], ignored=ignored
        )
    return doc


def _mean_iou(ious: Sequence[float | None]) -> float | None:
    defined = [v for v in ious if v is not None]
    return float(sum(defined) / len(defined)) if defined else None


def _document(
    total: _Tally, names: Mapping[int, str], connectivity: int, d: int, *, with_truth: bool, ignored: frozenset[int]
) -> dict:
    """The ``score --json`` document from the summed tally."""
    voxels = int(total.counts_pred.sum())
    present = set(np.flatnonzero(total.counts_pred).tolist())
    if with_truth:
        present |= set(np.flatnonzero(total.counts_true).tolist())
    labels = sorted(present | set(names))
    rows = []
    for label in labels:
        row: dict[str, Any] = {"label": label, "name": names.get(label, f"phase{label}")}
        n_pred = int(total.counts_pred[label])
        if with_truth:
            n_true = int(total.counts_true[label])
            k = total.confusion.shape[0]
            tp = int(total.confusion[label, label]) if label < k else 0
            fp, fn = n_pred - tp, n_true - tp
            row.update(
                iou=_ratio(tp, tp + fp + fn),
                dice=_ratio(2 * tp, 2 * tp + fp + fn),
                precision=_ratio(tp, tp + fp),
                recall=_ratio(tp, tp + fn),
                fraction_pred=n_pred / voxels,
                fraction_true=n_true / voxels,
                euler_pred=_unscale(total.euler_pred.get(label, 0), d),
                euler_true=_unscale(total.euler_true.get(label, 0), d),
            )
        else:
            row.update(fraction_pred=n_pred / voxels, euler_pred=_unscale(total.euler_pred.get(label, 0), d))
        rows.append(row)
    doc: dict[str, Any] = {"phases": rows}
    if with_truth:
        k = total.confusion.shape[0]
        full = np.zeros((_NLABELS, _NLABELS), np.int64)
        full[:k, :k] = total.confusion
        doc["mean_iou"] = _mean_iou([r["iou"] for r in rows if r["label"] not in ignored])
        doc["accuracy"] = float(np.trace(total.confusion) / voxels)
        doc["confusion"] = full[np.ix_(labels, labels)].tolist()
    doc["connectivity"] = connectivity
    doc["voxels"] = voxels
    return doc


def _summary(values: Sequence[Any]) -> tuple[Any, Any, Any]:
    """Mean (float), min and max of the values that are not None; Nones when there are none."""
    defined = [v for v in values if v is not None]
    if not defined:
        return None, None, None
    return float(sum(defined) / len(defined)), min(defined), max(defined)


def _per_slice_document(
    slices: _Slices,
    doc: Mapping[str, Any],
    names: Mapping[int, str],
    connectivity: int,
    *,
    axis: int,
    first: int,
    ignored: frozenset[int],
) -> dict[str, Any]:
    """The ``per_slice`` entry of the document: per-slice lists and their summaries, per phase."""
    n = slices.voxels.shape[0]
    with_truth = slices.counts_true is not None
    voxels = slices.voxels.tolist()
    has_voxels = [v > 0 for v in voxels]

    def column(a: np.ndarray | None, label: int) -> list[int]:
        return a[:, label].tolist() if a is not None and label < a.shape[1] else [0] * n

    phases = []
    ious_by_label = {}
    for row in doc["phases"]:
        label = row["label"]
        n_pred = column(slices.counts_pred, label)
        euler_pred = [_unscale(v, 2) for v in column(slices.euler_pred, label)]
        entry: dict[str, Any] = {"label": label, "name": names.get(label, f"phase{label}")}
        lists: dict[str, list[Any]] = {}
        if with_truth:
            n_true, tp = column(slices.counts_true, label), column(slices.tp, label)
            euler_true = [_unscale(v, 2) for v in column(slices.euler_true, label)]
            iou = [_ratio(t, p + q - t) for t, p, q in zip(tp, n_pred, n_true)]
            ious_by_label[label] = iou
            entry.update(zip(("iou_mean", "iou_min", "iou_max"), _summary(iou)))
            lists["iou"] = iou
        scored_pred = [e for e, ok in zip(euler_pred, has_voxels) if ok]
        entry.update(zip(("euler_pred_mean", "euler_pred_min", "euler_pred_max"), _summary(scored_pred)))
        lists["fraction_pred"] = [_ratio(p, v) for p, v in zip(n_pred, voxels)]
        if with_truth:
            scored_true = [e for e, ok in zip(euler_true, has_voxels) if ok]
            entry.update(zip(("euler_true_mean", "euler_true_min", "euler_true_max"), _summary(scored_true)))
            lists["fraction_true"] = [_ratio(t, v) for t, v in zip(n_true, voxels)]
        lists["euler_pred"] = euler_pred
        if with_truth:
            lists["euler_true"] = euler_true
        entry.update(lists)
        phases.append(entry)
    out: dict[str, Any] = {
        "axis": AXES[axis],
        "neighbourhood": 8 if connectivity == 3 else 4,
        "index": list(range(first + slices.start, first + slices.start + n)),
        "voxels": voxels,
    }
    if with_truth:
        kept = [ious for label, ious in ious_by_label.items() if label not in ignored]
        out["mean_iou"] = [_mean_iou([ious[s] for ious in kept]) for s in range(n)]
    out["phases"] = phases
    return out
