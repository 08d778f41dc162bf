"""Where training patches are cut: the spatially disjoint train/val split and the patch corners in each slab.

The validation split is spatial, never random over patches: the (cropped) region of each image/label pair is cut
along one axis into a training slab and a validation slab (:func:`plan_split`), and patches are sampled only
inside their own slab, so no validation patch overlaps a training patch. Random overlapping patches leak: a
published 2D/3D UNet study on sandstones reported 0.999 validation accuracy against 0.84 on a separate test volume
for that reason.

Patch positions are, by default, *class-balanced* (:func:`draw_origins`): half of the patches of each slab are
centred on a voxel of a phase drawn uniformly among the phases present in the slab (the voxel uniform among that
phase's voxels, found block by block with a :class:`ClassIndex`), the other half are uniform over the slab
(:func:`sample_origins`). A phase that fills 2% of a rock is then seen in a good share of the patches instead of
almost never. A share of 0 gives uniform positions only.

Sparse labels: a label volume may mark voxels as *unlabelled* (one value, 255 by default). When a slab holds
unlabelled voxels, no patch is placed blindly: the uniform patches are centred on a labelled voxel drawn
uniformly among all labelled voxels (:func:`labelled_origins`), the balanced ones on a voxel of a phase drawn
among the labelled phases, so every patch holds labelled voxels to learn from. A slab without unlabelled voxels
is sampled exactly as before.

:func:`mixed_origins` draws a mix of both kinds from a :class:`ClassIndex` built once: the fixed patches of a tile
set (:func:`draw_origins`) and the fresh patches of every training step (:mod:`rockseg.training.regions`) come
from it.

How many patches: :func:`default_counts` for a tile set, :func:`share_counts` among its pairs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rockseg.errors import InputError
from rockseg.vocabulary import AXES, MAX_LABEL

MIN_COUNT, MAX_COUNT = 16, 2000
MIN_VAL_COUNT = 4
AXIS_NAMES = {3: ("Z", "Y", "X"), 2: ("Y", "X")}
#: Share of the patches of each slab centred on a voxel of a randomly drawn phase when sampling is balanced.
BALANCED_SHARE = 0.5
#: Labels are scanned in blocks of about this many voxels (grown from the label chunks) to find where each
#: phase lies; one block is read again for each block that a balanced patch centre falls in.
BLOCK_VOXELS = 2**22

Region = tuple[slice, ...]
#: Default label of unlabelled voxels (``tile --unlabelled``): never a phase, ignored by training and validation.
UNLABELLED = 255


def default_counts(train_voxels: int, val_voxels: int, patch_voxels: int, count: int | None) -> tuple[int, int]:
    """Numbers of training and validation patches.

    By default enough training patches to cover the training slab about twice, clipped to
    [:data:`MIN_COUNT`, :data:`MAX_COUNT`]; validation patches in proportion to the slab volumes, at least
    :data:`MIN_VAL_COUNT`.
    """
    if count is None:
        count = min(MAX_COUNT, max(MIN_COUNT, math.ceil(2 * train_voxels / patch_voxels)))
    n_val = max(MIN_VAL_COUNT, round(count * val_voxels / train_voxels))
    return int(count), int(n_val)


def share_counts(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` patches among sources in proportion to ``weights`` (slab volumes), each at least one.

    Largest-remainder rounding (ties to the earlier source), so the parts add up to ``total`` whenever
    ``total >= len(weights)``; otherwise every source gets one.

    >>> share_counts(10, [1, 1, 2])
    [3, 2, 5]
    """
    w = np.asarray(weights, np.float64)
    quota = total * w / w.sum()
    parts = np.floor(quota).astype(np.int64)
    rest = int(total - parts.sum())
    order = sorted(range(len(w)), key=lambda i: (-(quota[i] - parts[i]), i))
    for i in order[:rest]:
        parts[i] += 1
    for i in np.flatnonzero(parts == 0):
        parts[i] = 1
        top = int(np.argmax(parts))
        if parts[top] > 1:
            parts[top] -= 1
    return [int(p) for p in parts]


def patch_extent(size: int, *, dims: int, ndim: int, slice_axis: str | None) -> tuple[int, ...]:
    """The extent of one patch along each image axis: 1 across the slice axis of 2D tiles from a volume."""
    if dims == 3 or ndim == 2:
        return (size,) * ndim
    extent = [size] * ndim
    extent[AXES.index(slice_axis or "z")] = 1
    return tuple(extent)


def plan_split(
    region: Sequence[slice], extent: Sequence[int], *, dims: int, val_fraction: float, path: str
) -> dict[str, Any]:
    """Choose the split axis and cut ``region`` into a training slab and a validation slab.

    Parameters
    ----------
    region : one slice per image axis, the (cropped) region to sample from, image coordinates.
    extent : the patch extent along each image axis (1 across the slice axis for 2D tiles from a volume).
    dims : 2 or 3.
    val_fraction : share of the split axis given to validation (the slab is at least one patch thick).
    path : the image path, for messages.

    Returns
    -------
    dict with ``axis``, ``axis_name``, ``region`` ([[start, stop], ...]), ``train`` and ``val`` ([start, stop]
    along ``axis``). Validation takes the high end of the axis.

    Notes
    -----
    3D tiles split along the longest axis (the thickest slabs). 2D tiles from a volume split across their slice
    axis, so whole slices go to validation; when the region is a single slice thick there, and for a 2D image,
    the split takes the longest in-plane axis (the first on a tie).
    """
    lengths = [s.stop - s.start for s in region]
    ndim = len(lengths)
    if dims == 3:
        axis = int(np.argmax(lengths))
    elif ndim == 3 and lengths[list(extent).index(1)] >= 2:
        axis = list(extent).index(1)
    else:
        in_plane = [i for i in range(ndim) if extent[i] > 1]
        axis = max(in_plane, key=lambda i: lengths[i])
    need = extent[axis]
    length = lengths[axis]
    n_val = max(need, round(val_fraction * length))
    n_train = length - n_val
    if n_train < need:
        what = "slices" if need == 1 else "voxels"
        raise InputError(
            f"the region {tuple(lengths)} of {path} is too small for a disjoint validation split with --size "
            f"{max(extent)}: axis {AXIS_NAMES[ndim][axis]} has {length} {what} but needs at least {2 * need} "
            f"({need} for training and {need} for validation); use a smaller --size or a larger image/--crop"
        )
    lo = region[axis].start
    return {
        "axis": axis,
        "axis_name": AXIS_NAMES[ndim][axis],
        "region": [[s.start, s.stop] for s in region],
        "train": [lo, lo + n_train],
        "val": [lo + n_train, region[axis].stop],
    }


def slab_region(split: dict[str, Any], part: str) -> Region:
    """The region (one slice per image axis) of the ``"train"`` or ``"val"`` slab of a split."""
    region = [slice(a, b) for a, b in split["region"]]
    lo, hi = split[part]
    region[split["axis"]] = slice(lo, hi)
    return tuple(region)


def sample_origins(
    region: Sequence[slice], extent: Sequence[int], count: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` random patch corners (count, ndim) int64 with each patch of ``extent`` inside ``region``."""
    lows = np.array([s.start for s in region], np.int64)
    highs = np.array([s.stop - e + 1 for s, e in zip(region, extent)], np.int64)
    origins = rng.integers(lows, highs, size=(count, len(region)), dtype=np.int64)
    # Sorting by position keeps reads from the stores close together when patches are read one by one.
    return origins[np.lexsort(origins.T[::-1])]


def scan_block(chunks: Sequence[int], lengths: Sequence[int], *, voxels: int | None = None) -> tuple[int, ...]:
    """Block shape for scanning labels: the store's chunk shape, doubled along its thinnest axes up to ``voxels``.

    Blocks stay multiples of the chunks, so a block reads whole chunks. ``lengths`` is the region scanned;
    ``voxels`` defaults to :data:`BLOCK_VOXELS`. The balanced draws depend on the blocks, hence on the label
    store's chunks: the same stores and seed give the same tiles.
    """
    voxels = BLOCK_VOXELS if voxels is None else voxels
    block = [max(1, int(c)) for c in chunks]
    while True:
        grow = [i for i in range(len(block)) if block[i] < lengths[i]]
        if not grow or math.prod(min(b, n) for b, n in zip(block, lengths)) >= voxels:
            return tuple(block)
        block[min(grow, key=lambda i: (block[i], i))] *= 2


def _check_label_range(lab: np.ndarray, lab_path: Path) -> np.ndarray:
    """Return ``lab`` as uint8, or raise if it holds values outside 0..:data:`MAX_LABEL`."""
    if lab.dtype in (np.uint8, np.bool_) or not lab.size:
        return lab.view(np.uint8) if lab.dtype == np.bool_ else lab
    lo, hi = int(lab.min()), int(lab.max())
    if lo < 0 or hi > MAX_LABEL:
        raise InputError(
            f"labels {lab_path} hold the value {lo if lo < 0 else hi} but labels must be "
            f"0..{MAX_LABEL} (phase numbers 0..N-1): relabel them"
        )
    return lab.astype(np.uint8)


class ClassIndex:
    """Where each label lies in a region, block by block, to draw voxels of one label uniformly at random.

    One pass over the labels of ``region`` counts each label per block; drawing a voxel of label ``c`` then picks
    a block with probability proportional to its count of ``c`` and the voxel uniformly among those of the
    block, which is exactly uniform over all voxels of ``c`` in the region. Memory holds the counts (a few numbers
    per block) and one block at a time, whatever the region size.

    Parameters
    ----------
    read : function returning the labels of a region (one slice per axis, image coordinates) as an array.
    region : the region to index, one slice per axis.
    block : block shape; blocks sit on a grid aligned at multiples of it in image coordinates.
    lab_path : the label store, for messages.
    unlabelled : the label of unlabelled voxels (never drawn), or None.
    """

    def __init__(
        self, read: Callable[[Region], np.ndarray], region: Sequence[slice], block: Sequence[int], *, lab_path: Path,
        unlabelled: int | None = None,
    ) -> None:
        self.read = read
        self.lab_path = lab_path
        self.unlabelled = unlabelled
        axes = [range((s.start // b) * b, s.stop, b) for s, b in zip(region, block)]
        self.blocks: list[Region] = [
            tuple(slice(max(a, s.start), min(a + b, s.stop)) for a, s, b in zip(corner, region, block))
            for corner in itertools.product(*axes)
        ]
        self.totals = np.zeros(MAX_LABEL + 1, np.int64)
        where: dict[int, list[tuple[int, int]]] = {}
        for b, box in enumerate(self.blocks):
            counts = np.bincount(self._labels(box).ravel(), minlength=1)
            for c in np.flatnonzero(counts):
                where.setdefault(int(c), []).append((b, int(counts[c])))
                self.totals[c] += counts[c]
        #: label -> (block numbers, cumulative voxel counts of that label over those blocks)
        self._where = {
            c: (np.array([b for b, _ in v], np.int64), np.cumsum([n for _, n in v], dtype=np.int64))
            for c, v in where.items()
        }

    def _labels(self, box: Region) -> np.ndarray:
        return _check_label_range(np.asarray(self.read(box)), self.lab_path)

    @property
    def present(self) -> np.ndarray:
        """The labels present in the region, ascending (the unlabelled value left out)."""
        present = np.flatnonzero(self.totals)
        return present if self.unlabelled is None else present[present != self.unlabelled]

    @property
    def sparse(self) -> bool:
        """Whether the region holds unlabelled voxels."""
        return self.unlabelled is not None and bool(self.totals[self.unlabelled])

    def sample(self, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One voxel of each label in ``classes`` (k,), drawn uniformly among its voxels: (k, ndim) int64."""
        classes = np.asarray(classes, np.int64)
        block_of = np.zeros(len(classes), np.int64)
        rank = np.zeros(len(classes), np.int64)
        for c in np.unique(classes):
            pick = np.flatnonzero(classes == c)
            ids, cum = self._where[int(c)]
            r = rng.integers(0, cum[-1], size=len(pick), dtype=np.int64)
            j = np.searchsorted(cum, r, side="right")
            block_of[pick] = ids[j]
            rank[pick] = r - (cum[j] - np.diff(cum, prepend=0)[j])
        out = np.zeros((len(classes), len(self.blocks[0]) if self.blocks else 0), np.int64)
        for b in np.unique(block_of):
            box = self.blocks[int(b)]
            lab = self._labels(box)
            start = np.array([s.start for s in box], np.int64)
            in_block = np.flatnonzero(block_of == b)
            for c in np.unique(classes[in_block]):
                pick = in_block[classes[in_block] == c]
                flat = np.flatnonzero(lab == c)[rank[pick]]
                out[pick] = np.stack(np.unravel_index(flat, lab.shape), axis=-1) + start
        return out


def balanced_origins(
    index: ClassIndex, region: Sequence[slice], extent: Sequence[int], count: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` patch corners (count, ndim) int64 centred on voxels of labels drawn uniformly among those present.

    Each patch is centred on its voxel (voxel at offset ``extent // 2``), shifted as little as needed to stay
    inside ``region``; the voxel is always inside its patch.
    """
    present = index.present
    return _centred(index, present[rng.integers(0, len(present), size=count)], region, extent, rng)


def labelled_origins(
    index: ClassIndex, region: Sequence[slice], extent: Sequence[int], count: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` patch corners (count, ndim) int64 centred on voxels drawn uniformly among all labelled voxels of
    ``region`` (sparse labels: the uniform patches of :func:`mixed_origins`)."""
    present = index.present
    weights = index.totals[present] / index.totals[present].sum()
    return _centred(index, present[rng.choice(len(present), size=count, p=weights)], region, extent, rng)


def _centred(
    index: ClassIndex, classes: np.ndarray, region: Sequence[slice], extent: Sequence[int], rng: np.random.Generator,
) -> np.ndarray:
    """Patch corners centred on one voxel of each label of ``classes``, shifted to stay inside ``region``."""
    centres = index.sample(classes, rng)
    ext = np.array(extent, np.int64)
    lows = np.array([s.start for s in region], np.int64)
    highs = np.array([s.stop for s in region], np.int64) - ext
    return np.clip(centres - ext // 2, lows, highs)


def draw_origins(
    read_labels: Callable[[Region], np.ndarray], slab: Region, chunks: Sequence[int], extent: Sequence[int],
    count: int, share: float, rng: np.random.Generator, *, lab_path: Path, unlabelled: int | None = None,
) -> np.ndarray:
    """``count`` patch corners (count, ndim) int64 in ``slab``, sorted by position.

    ``round(share * count)`` of them are class-balanced (:func:`balanced_origins`, with the labels read by
    ``read_labels`` in blocks grown from the label store's ``chunks``), the rest uniform (:func:`sample_origins`;
    around labelled voxels when the slab holds ``unlabelled`` ones).

    Raises
    ------
    InputError
        if every voxel of ``slab`` is ``unlabelled``.
    """
    n_bal = int(round(share * count))
    index = None
    if n_bal or unlabelled is not None:  # indexing the labels draws nothing from ``rng``
        block = scan_block(chunks, [b.stop - b.start for b in slab])
        index = ClassIndex(read_labels, slab, block, lab_path=lab_path, unlabelled=unlabelled)
        if not len(index.present):
            where = ",".join(f"{b.start}:{b.stop}" for b in slab)
            raise InputError(
                f"labels {lab_path} have no labelled voxel in region {where} (every voxel there is the unlabelled "
                f"value {unlabelled}): label some voxels there (the validation slab is the far end of the split "
                f"axis too), --crop to the labelled part, or give the right --unlabelled value"
            )
    return mixed_origins(index, slab, extent, count, n_bal, rng)


def mixed_origins(
    index: ClassIndex | None, region: Sequence[slice], extent: Sequence[int], count: int, balanced: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``count`` patch corners (count, ndim) int64 in ``region``, sorted by position: ``count - balanced`` uniform
    (:func:`sample_origins`), then ``balanced`` centred on voxels of phases drawn uniformly among those ``index``
    finds in ``region`` (:func:`balanced_origins`).

    Both :func:`draw_origins` (the fixed patches of a tile set) and the fresh patches of each training step
    (:mod:`rockseg.training.regions`) draw their corners here. When ``index`` finds unlabelled voxels in
    ``region``, the uniform corners are :func:`labelled_origins` instead.
    """
    sparse = index is not None and index.sparse
    if sparse:
        origins = labelled_origins(index, region, extent, count - balanced, rng)
    else:
        origins = sample_origins(region, extent, count - balanced, rng)
    if balanced:
        if index is None:
            raise ValueError("balanced patch corners need a ClassIndex of the region")
        origins = np.concatenate([origins, balanced_origins(index, region, extent, balanced, rng)])
    if balanced or sparse:
        origins = origins[np.lexsort(origins.T[::-1])]
    return origins
