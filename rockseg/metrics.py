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

__all__ = ["CONNECTIVITIES", "MAX_LABEL", "euler_lut", "euler_number", "score_volumes"]

#: Connectivity values of the command contract: 1 = neighbours across faces only (6 in 3D, 4 in 2D),
#: 3 = full neighbourhood (26 in 3D, 8 in 2D).
CONNECTIVITIES = (1, 3)
#: Labels are integers 0..MAX_LABEL (uint8 phases).
MAX_LABEL = 255

_NLABELS = MAX_LABEL + 1
# Blocks are grown from whole chunks to about this many voxels: large enough that task overhead and the one-voxel
# halo (which makes the store decode the neighbouring chunks) stay small, small enough that a few blocks in flight
# per worker cost tens of MB.
_TARGET_BLOCK_VOXELS = 1 << 22
_NUMPY_BASE_BLOCK = 64
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


def _window_configs(mask: np.ndarray) -> np.ndarray:
    """Index (see :func:`euler_lut`) of every 2x2x2 / 2x2 window of a boolean volume, shape ``mask.shape - 1``."""
    config = mask.view(np.uint8)
    nbits = 1
    # One axis at a time (last first), so 3 shift-and-or passes build the 8-bit index instead of 8.
    for axis in range(mask.ndim - 1, -1, -1):
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
class _Tally:
    """What one block (or a sum of blocks) contributes; every field is additive."""

    counts_pred: np.ndarray  # (256,) int64: voxels per pred label
    counts_true: np.ndarray | None  # (256,) int64
    confusion: np.ndarray | None  # (k, k) int64, rows truth, columns prediction, k <= 256
    euler_pred: dict[int, int] = field(default_factory=dict)  # label -> 2**d times the Euler contribution
    euler_true: dict[int, int] = field(default_factory=dict)


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
    return _Tally(counts_pred, counts_true, confusion, euler_pred, euler_true)


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
                where = ",".join(f"{s.start}:{s.stop}" for s in region)
                raise InputError(
                    f"{self.name} has label {bad} (in region {where}): labels must be integers 0-{MAX_LABEL}; "
                    f"relabel the phases to 0..{MAX_LABEL} (uint8)"
                )
        return block.astype(np.uint8, copy=False)


def _block_euler(
    raw: np.ndarray, counts: np.ndarray, pad_lo: Sequence[bool], pad_hi: Sequence[bool], lut8: np.ndarray
) -> dict[int, int]:
    """Scaled Euler sums, per label, of the windows of a block read with its lower halo.

    ``counts`` are the label counts of the block without its halo; the labels seen only in the halo are found
    from the halo planes, which are small.
    """
    present = set(np.flatnonzero(counts).tolist())
    for axis, padded in enumerate(pad_lo):
        if not padded:
            present.update(np.unique(np.take(raw, 0, axis=axis)).tolist())
    padded_shape = tuple(n + lo + hi for n, lo, hi in zip(raw.shape, pad_lo, pad_hi))
    place = tuple(slice(int(lo), int(lo) + n) for n, lo in zip(raw.shape, pad_lo))
    mask = np.zeros(padded_shape, np.bool_)
    out = {}
    for label in sorted(present):
        # The halo voxels count (windows straddling the block's lower faces belong to it); the padding is
        # background for every phase, the one labelled 0 included.
        np.equal(raw, label, out=mask[place])
        value = _scaled_euler(mask, lut8)
        if value:
            out[label] = value
    return out


def _score_block(
    pred: _Volume,
    truth: _Volume | None,
    lo: tuple[int, ...],
    hi: tuple[int, ...],
    shape: tuple[int, ...],
    lut8: np.ndarray,
) -> _Tally:
    """Tally of crop region [lo, hi): confusion and counts of its voxels, Euler sums of the windows it owns.

    A block owns the windows whose upper corner voxel lies in it, plus, on the upper faces of the volume, the
    windows that stick out into the padding. It reads one voxel below ``lo`` on each axis (background at the
    volume's lower faces) to see them.
    """
    read_lo = tuple(max(a - 1, 0) for a in lo)
    pad_lo = tuple(a == 0 for a in lo)
    pad_hi = tuple(b == n for b, n in zip(hi, shape))
    inner = tuple(slice(a - r, None) for a, r in zip(lo, read_lo))

    raw_pred = pred.read(read_lo, hi)
    block_pred = raw_pred[inner]
    if truth is None:
        counts_pred = np.bincount(block_pred.ravel(), minlength=_NLABELS).astype(np.int64)
        return _Tally(counts_pred, None, None, _block_euler(raw_pred, counts_pred, pad_lo, pad_hi, lut8))
    raw_true = truth.read(read_lo, hi)
    block_true = raw_true[inner]
    k = int(max(block_pred.max(), block_true.max())) + 1
    # k <= 256, so the index truth * k + pred fits 16 bits (8 when k <= 16).
    index = block_true.astype(np.uint8 if k <= 16 else np.uint16)
    index *= k
    index += block_pred
    confusion = np.bincount(index.ravel(), minlength=k * k).astype(np.int64).reshape(k, k)
    del index
    counts_pred = np.pad(confusion.sum(axis=0), (0, _NLABELS - k))
    counts_true = np.pad(confusion.sum(axis=1), (0, _NLABELS - k))
    return _Tally(
        counts_pred,
        counts_true,
        confusion,
        _block_euler(raw_pred, counts_pred, pad_lo, pad_hi, lut8),
        _block_euler(raw_true, counts_true, pad_lo, pad_hi, lut8),
    )


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


def _check_crop(
    crop: Sequence[slice] | None, shape: tuple[int, ...], name: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Crop start and size, checked against ``shape``; the whole volume when ``crop`` is None."""
    if crop is None:
        return (0,) * len(shape), shape
    crop = tuple(crop)
    if len(crop) != len(shape) or not all(isinstance(s, slice) for s in crop):
        raise InputError(f"crop {crop!r} does not give one slice per axis of {name} {shape}")
    origin, size = [], []
    for s, n in zip(crop, shape):
        lo, hi, step = s.indices(n)
        if step != 1 or hi <= lo:
            raise InputError(f"crop {crop!r} is empty or strided for {name} {shape}: give START:STOP ranges")
        origin.append(lo)
        size.append(hi - lo)
    return tuple(origin), tuple(size)


def _ratio(num: int, den: int) -> float | None:
    return float(num / den) if den else None


def score_volumes(
    pred: Any,
    truth: Any = None,
    *,
    connectivity: int = 3,
    phases: Mapping[int, str] | None = None,
    crop: tuple[slice, ...] | None = None,
    num_workers: int | None = None,
    pred_name: str = "prediction",
    truth_name: str = "truth",
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
    crop : tuple of slices, one per axis, optional
        Score only this region (see :func:`rockseg.stores.parse_crop`). It is scored as a volume of its own: its
        faces are padded with background for the Euler number.
    num_workers : int, optional
        Threads reading and counting blocks; default: one per CPU core.
    pred_name, truth_name : str
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
        are not ``None``.

    Raises
    ------
    InputError
        Before any block is read: volumes of different shapes, not 2D or 3D, empty, of a non-integer dtype, a bad
        connectivity, crop, phase label or block shape. While reading: a label below 0 or above 255.

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
    d = len(shape)
    connectivity = check_connectivity(connectivity, spatial_dims=d)
    pred_checked = _check_labels_dtype(pred, pred_name)
    truth_checked = _check_labels_dtype(truth, truth_name) if truth is not None else True
    origin, size = _check_crop(crop, shape, pred_name)
    if num_workers is not None and (isinstance(num_workers, bool) or int(num_workers) < 1):
        raise InputError(f"num_workers {num_workers!r} must be a positive number of threads")
    if phases is None:
        phases = _stored_phases(pred) or (_stored_phases(truth) if truth is not None else {})
    names: dict[int, str] = {}
    for label, name in phases.items():
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label <= MAX_LABEL:
            raise InputError(f"phase label {label!r} ({name!r}) is not an integer 0-{MAX_LABEL}: fix the phase names")
        names[int(label)] = str(name)
    if block_shape is None:
        base = _chunks_of(pred, d) or (_chunks_of(truth, d) if truth is not None else None)
        block_shape = _grow_block(base or (_NUMPY_BASE_BLOCK,) * d, shape)
    else:
        block_shape = tuple(block_shape)
        if len(block_shape) != d or not all(isinstance(b, (int, np.integer)) and b > 0 for b in block_shape):
            raise InputError(f"block shape {block_shape!r} must give one positive size per axis of {shape}")

    # --- the lazy graph: one task per block, summed by a tree of small reductions ---
    lut8 = _compact_lut(d, connectivity)
    pred_vol = _Volume(pred, pred_name, origin, pred_checked)
    truth_vol = None if truth is None else _Volume(truth, truth_name, origin, truth_checked)
    score = dask.delayed(_score_block, pure=False)
    parts = [score(pred_vol, truth_vol, lo, hi, size, lut8) for lo, hi in _block_grid(size, origin, block_shape)]
    merge = dask.delayed(_merge, pure=False)
    while len(parts) > 1:
        parts = [merge(*parts[i : i + _REDUCE_FANIN]) for i in range(0, len(parts), _REDUCE_FANIN)]
    (total,) = dask.compute(parts[0], scheduler="threads", num_workers=num_workers)
    return _document(total, names, connectivity, d, with_truth=truth is not None)


def _stored_phases(array: Any) -> dict[int, str]:
    attrs = getattr(array, "attrs", None)
    if attrs is None:
        return {}
    raw = dict(attrs).get("phases") or {}
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except (AttributeError, TypeError, ValueError):
        return {}


def _document(total: _Tally, names: Mapping[int, str], connectivity: int, d: int, *, with_truth: bool) -> dict:
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
        ious = [r["iou"] for r in rows if r["iou"] is not None]
        k = total.confusion.shape[0]
        full = np.zeros((_NLABELS, _NLABELS), np.int64)
        full[:k, :k] = total.confusion
        doc["mean_iou"] = float(sum(ious) / len(ious)) if ious else None
        doc["accuracy"] = float(np.trace(total.confusion) / voxels)
        doc["confusion"] = full[np.ix_(labels, labels)].tolist()
    doc["connectivity"] = connectivity
    doc["voxels"] = voxels
    return doc
