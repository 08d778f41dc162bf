"""Training patches (tiles) from image/label pairs, with a spatially disjoint validation split.

:func:`make_tiles` samples patches (2D slices along any axis, or 3D sub-volumes) from one or several image/label
pairs and writes a *tile set*: a Zarr v3 group that :func:`rockseg.training.train` reads with :func:`read_tiles`.

The validation split is spatial, never random over patches: the (cropped) region of each pair is cut along one
axis into a training slab and a validation slab, and patches are sampled only inside their own slab, so no
validation patch overlaps a training patch. Random overlapping patches leak: a published 2D/3D UNet study on
sandstones reported 0.999 validation accuracy against 0.84 on a separate test volume for that reason.

Patch positions are, by default, *class-balanced*: half of the patches of each slab are centred on a voxel of a
phase drawn uniformly among the phases present in the slab (the voxel uniform among that phase's voxels), the
other half are uniform over the slab. A phase that fills 2% of a rock is then seen in a good share of the
patches instead of almost never. ``balance=False`` gives uniform positions only.

Tile set layout (format version 2)
----------------------------------
``train/image``, ``val/image`` : (N, *patch) arrays in the images' dtype (float32 when the pairs' dtypes
    differ); ``patch`` is (size, size) for 2D tiles and (size, size, size) for 3D tiles. A 2D tile cut across
    axis ``y`` of a (Z, Y, X) volume holds the (Z, X) plane, across ``x`` the (Z, Y) plane.
``train/labels``, ``val/labels`` : (N, *patch) uint8.
``train/origins``, ``val/origins`` : (N, image.ndim) int64, the corner of each patch in the coordinates of its
    own image (a 2D tile across ``y`` from a (Z, Y, X) stack covers ``[z:z+size, y, x:x+size]``).
``train/source``, ``val/source`` : (N,) uint8, the index in ``sources`` of the pair each patch comes from.

Group attributes: ``format`` (``"rockseg-tiles"``), ``format_version`` (2), ``dims``, ``size``, ``slice_axis``
(``"z"``, ``"y"`` or ``"x"`` for 2D tiles, the axis the slices are cut across; ``"z"`` for a 2D image; ``None``
for 3D tiles), ``classes``, ``phases`` ({label: name} for labels 0..classes-1), ``sources`` (one dict per pair:
``image`` and ``labels`` paths, ``intensity`` statistics of that whole image for normalisation, ``split`` and
``counts``), ``sampling`` (``method`` ``"balanced"`` or ``"uniform"`` and ``balanced_share``), ``counts``,
``class_counts`` (voxels per label in the tiles of each part) and ``class_fractions`` (the same as shares),
``val_fraction``, ``seed``, ``voxel_size``/``voxel_unit`` when the first image has them, and ``rockseg``
(provenance). For readers of version 1, ``intensity``, ``split`` and ``source`` (image and labels paths) repeat
those of the first pair.

A version-1 set (one pair, no ``source`` arrays, 2D tiles only across ``z``) is still read by :func:`read_tiles`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import zarr

from rockseg.io import stores
from rockseg.errors import InputError, MissingInputError
from rockseg.io.intensity import intensity_stats
from rockseg.vocabulary import AXES, MAX_LABEL

TILES_FORMAT = "rockseg-tiles"
TILES_FORMAT_VERSION = 2
#: Format versions :func:`read_tiles` reads.
READABLE_VERSIONS = (1, 2)

#: Tiles must be divisible by the UNet's total down-sampling (2**depth with the default depth 3).
SIZE_MULTIPLE = 8
MIN_COUNT, MAX_COUNT = 16, 2000
MIN_VAL_COUNT = 4
#: Read the whole cropped region into memory when image + labels take at most this many bytes; beyond it,
#: each patch is read from the stores (slower, but memory stays bounded whatever the volume size).
REGION_BYTES = 256 * 2**20
#: Target size of one stored chunk of tiles, bytes.
CHUNK_BYTES = 2 * 2**20
#: At most this many image/label pairs in one tile set (``source`` arrays are uint8).
MAX_SOURCES = 256
AXIS_NAMES = {3: ("Z", "Y", "X"), 2: ("Y", "X")}
#: Share of the patches of each slab centred on a voxel of a randomly drawn phase when sampling is balanced.
BALANCED_SHARE = 0.5
#: Labels are scanned in blocks of about this many voxels (grown from the label chunks) to find where each
#: phase lies; one block is read again for each block that a balanced patch centre falls in.
BLOCK_VOXELS = 2**22

PathLike = Union[str, "os.PathLike[str]"]
Region = tuple[slice, ...]


def check_size(size: int, *, name: str = "--size") -> int:
    """Check a tile edge: a positive multiple of :data:`SIZE_MULTIPLE` (the UNet halves tiles 3 times)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise InputError(f"{name} {size!r} is not a positive whole number of voxels: use e.g. 48 (3D) or 256 (2D)")
    size = int(size)
    if size % SIZE_MULTIPLE:
        lo = max(SIZE_MULTIPLE, size - size % SIZE_MULTIPLE)
        raise InputError(
            f"{name} {size} is not a multiple of {SIZE_MULTIPLE} (the UNet halves a tile 3 times): "
            f"use {lo} or {lo + SIZE_MULTIPLE}"
        )
    return size


def check_dims(dims: int) -> int:
    """Check the tile dimensionality: 2 (slices) or 3 (sub-volumes)."""
    if dims not in (2, 3) or isinstance(dims, bool):
        raise InputError(f"--dims {dims!r} is not valid: use 2 (2D slices) or 3 (3D sub-volumes)")
    return int(dims)


def check_axis(axis: str | None, *, dims: int) -> str | None:
    """Check ``--axis``: ``"z"``, ``"y"`` or ``"x"`` (any case) for 2D tiles, or None (``"z"`` for 2D tiles).

    Returns the lower-case axis name, ``"z"`` for 2D tiles when ``axis`` is None, and None for 3D tiles.
    """
    if axis is None:
        return "z" if dims == 2 else None
    name = str(getattr(axis, "value", axis)).strip().lower()
    if name not in AXES:
        raise InputError(f"--axis {axis!r} is not valid: choose z, y or x (the axis 2D slices are cut across)")
    if dims == 3 and name != "z":
        raise InputError(f"--axis {name} applies to 2D slices only: drop --axis or use --dims 2")
    return name if dims == 2 else None


def split_pairs(paths: Sequence[PathLike]) -> tuple[list[Path], list[Path]]:
    """Split ``IMAGE LABELS [IMAGE2 LABELS2 ...]`` into the list of images and the list of labels.

    Raises
    ------
    InputError
        for an odd number of paths (or none).
    """
    paths = [Path(p) for p in paths]
    if not paths or len(paths) % 2:
        given = " ".join(str(p) for p in paths) or "nothing"
        raise InputError(
            f"tile takes IMAGE LABELS pairs but got {len(paths)} path(s) ({given}): give the label store after "
            f"each image, e.g. 'rockseg tile img.zarr labels.zarr [img2.zarr labels2.zarr ...] -o tiles.zarr'"
        )
    return paths[0::2], paths[1::2]


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
    """

    def __init__(
        self, read: Callable[[Region], np.ndarray], region: Sequence[slice], block: Sequence[int], *, lab_path: Path
    ) -> None:
        self.read = read
        self.lab_path = lab_path
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
        """The labels present in the region, ascending."""
        return np.flatnonzero(self.totals)

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
    classes = present[rng.integers(0, len(present), size=count)]
    centres = index.sample(classes, rng)
    ext = np.array(extent, np.int64)
    lows = np.array([s.start for s in region], np.int64)
    highs = np.array([s.stop for s in region], np.int64) - ext
    return np.clip(centres - ext // 2, lows, highs)


class _PatchReader:
    """Read image and label patches, from memory when the region is small, else straight from the stores."""

    def __init__(
        self, image: zarr.Array, labels: zarr.Array, region: Region, squeeze: int | None
    ) -> None:
        self.squeeze = squeeze
        voxels = math.prod(s.stop - s.start for s in region)
        if voxels * (image.dtype.itemsize + labels.dtype.itemsize) <= REGION_BYTES:
            self.offset = np.array([s.start for s in region], np.int64)
            self.image, self.labels = np.asarray(image[region]), np.asarray(labels[region])
        else:
            self.offset = np.zeros(len(region), np.int64)
            self.image, self.labels = image, labels

    def _local(self, region: Region) -> Region:
        return tuple(slice(s.start - int(o), s.stop - int(o)) for s, o in zip(region, self.offset))

    def read_labels(self, region: Region) -> np.ndarray:
        """The labels of ``region`` (image coordinates, inside the reader's region)."""
        return np.asarray(self.labels[self._local(region)])

    def read(self, origin: np.ndarray, extent: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        local = origin - self.offset
        index = tuple(slice(int(o), int(o) + e) for o, e in zip(local, extent))
        img, lab = np.asarray(self.image[index]), np.asarray(self.labels[index])
        if self.squeeze is not None:
            img, lab = img.squeeze(self.squeeze), lab.squeeze(self.squeeze)
        return img, lab


@dataclass
class _Source:
    """One image/label pair, checked, with its split."""

    img_path: Path
    lab_path: Path
    image: zarr.Array
    labels: zarr.Array
    region: Region
    split: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def slab(self, part: str) -> Region:
        return slab_region(self.split, part)


def _as_paths(value: PathLike | Sequence[PathLike], what: str) -> list[Path]:
    if isinstance(value, (str, os.PathLike)):
        return [Path(value)]
    paths = [Path(v) for v in value]
    if not paths:
        raise InputError(f"no {what} given: give at least one image/label pair")
    return paths


def _crops_for(crop: Any, n: int) -> list[Any]:
    """One crop (None, "Z0:Z1,...", or slices) per pair from ``crop``: one for all pairs, or one per pair."""
    if crop is None or isinstance(crop, str) or all(isinstance(s, slice) for s in crop):
        return [crop] * n
    crops = list(crop)
    if len(crops) == 1:
        return crops * n
    if len(crops) != n:
        raise InputError(
            f"--crop was given {len(crops)} times for {n} image/label pairs: give it once (for every pair) "
            f"or once per pair, in the order of the pairs"
        )
    return crops


def _check_source(
    img_path: Path, lab_path: Path, img: zarr.Array, lab: zarr.Array, crop: Any, *, dims: int, size: int,
    slice_axis: str | None,
) -> _Source:
    """Check one opened pair and its crop."""
    if img.ndim not in (2, 3):
        raise InputError(
            f"image {img_path} has shape {img.shape}: it must be a (Z, Y, X) volume or a 2D (Y, X) image"
        )
    if lab.shape != img.shape:
        raise InputError(
            f"labels {lab_path} have shape {lab.shape} but image {img_path} has {img.shape}: "
            f"tile needs an image and labels of the same shape"
        )
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == np.bool_):
        raise InputError(
            f"labels {lab_path} have dtype {lab.dtype} but labels must be integers: convert the labels to uint8"
        )
    if not (np.issubdtype(img.dtype, np.number) or img.dtype == np.bool_):
        raise InputError(f"image {img_path} has dtype {img.dtype}: give a numeric grey-value image")
    if dims == 3 and img.ndim != 3:
        raise InputError(f"--dims 3 needs a (Z, Y, X) volume but image {img_path} is 2D {img.shape}: use --dims 2")
    if img.ndim == 2 and slice_axis not in (None, "z"):
        raise InputError(
            f"--axis {slice_axis}: image {img_path} is a 2D (Y, X) image, which has only the z direction: "
            f"drop --axis"
        )
    if isinstance(crop, str):
        crop = stores.parse_crop(crop, img.shape)
    region = stores.check_crop(crop, img.shape, name=str(img_path))
    extent = patch_extent(size, dims=dims, ndim=img.ndim, slice_axis=slice_axis)
    lengths = tuple(s.stop - s.start for s in region)
    for n, e, name in zip(lengths, extent, AXIS_NAMES[img.ndim]):
        if n < e:
            fit = min(n for n, e in zip(lengths, extent) if e > 1)
            raise InputError(
                f"--size {size} does not fit the region {lengths} of {img_path} (axis {name} has {n}): "
                f"use --size {max(SIZE_MULTIPLE, fit - fit % SIZE_MULTIPLE)} or less, or a larger --crop"
            )
    return _Source(img_path, lab_path, img, lab, region)


def _merge_phases(sources: Sequence[_Source], phases: dict[int, str] | None) -> dict[int, str]:
    """The phase names given (``phases``, else the label stores' attributes); pairs must agree on each label."""
    if phases is not None:
        given = {int(k): str(v) for k, v in phases.items()}
    else:
        given, named_by = {}, {}
        for src in sources:
            for k, v in stores.phases_of(src.labels).items():
                if k in given and given[k] != v:
                    raise InputError(
                        f"labels {src.lab_path} name label {k} {v!r} but labels {named_by[k]} name it "
                        f"{given[k]!r}: the pairs of a tile set must agree on phase names; fix the 'phases' "
                        f"attribute of one of them or give --phases"
                    )
                given[k], named_by[k] = v, src.lab_path
    bad = [k for k in given if not 0 <= k <= MAX_LABEL]
    if bad:
        raise InputError(f"phase label {bad[0]} is outside 0..{MAX_LABEL}: labels must fit in uint8")
    return given


def make_tiles(
    image: PathLike | Sequence[PathLike],
    labels: PathLike | Sequence[PathLike],
    out: PathLike,
    *,
    dims: int = 3,
    size: int = 48,
    count: int | None = None,
    val_fraction: float = 0.2,
    crop: Any = None,
    seed: int = 0,
    phases: dict[int, str] | None = None,
    axis: str | None = None,
    balance: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Sample training and validation patches from one or several image/label pairs and write a tile set.

    Parameters
    ----------
    image : path of a Zarr array, (Z, Y, X) or one 2D (Y, X) image, any numeric dtype; or a sequence of such
        paths, one per pair (all of the same number of axes).
    labels : path of a Zarr array of the same shape holding integer labels 0..255 (0..classes-1); or a sequence,
        one per image.
    out : path of the tile set to write (a Zarr v3 group, see the module docstring).
    dims : 2 for 2D patches (slices), 3 for 3D patches (needs (Z, Y, X) images).
    size : patch edge in voxels; a multiple of 8.
    count : number of training patches in all; default: enough to cover the training slabs about twice, within
        [16, 2000]. Validation patches are in proportion to the slab volumes, at least 4. Each pair gets a share
        of both in proportion to its slab volumes, at least one patch each.
    val_fraction : share of the split axis given to the validation slab, in (0, 1); the slab is at least one
        patch thick (one slice for 2D tiles split across their slice axis).
    crop : sample only from this region (image coordinates): one slice per image axis, or a string
        ``"Z0:Z1,Y0:Y1,X0:X1"``; the same region for every pair, or a sequence of them, one per pair.
        Default: the whole images.
    seed : seed of the random patch positions.
    phases : {label: name}; default the ``phases`` attributes of the label stores (which must agree), else
        ``"phase<N>"``.
    axis : for 2D tiles from (Z, Y, X) volumes, the axis the slices are cut across: ``"z"`` (default), ``"y"``
        or ``"x"``.
    balance : centre half the patches of each slab on a voxel of a phase drawn uniformly among the phases
        present (so rare phases are seen); False gives uniform random positions. Needs one pass over the labels
        of each slab.
    overwrite : replace an existing ``out``.

    Returns
    -------
    dict : a summary: ``path``, ``dims``, ``size``, ``slice_axis``, ``train`` and ``val`` (patch counts),
        ``classes``, ``phases``, ``split`` (of the first pair), ``sources`` (number of pairs), ``sampling``
        (``"balanced"`` or ``"uniform"``), ``fractions`` ({"train"/"val": {name: share of tile voxels}}).

    Raises
    ------
    InputError
        for a bad option or inputs that do not fit (shapes differ, labels not integers, size too large, pairs
        with different phase names or numbers of axes...); nothing is written then.
    OutputExistsError
        if ``out`` exists and ``overwrite`` is false.
    """
    dims = check_dims(dims)
    size = check_size(size)
    slice_axis = check_axis(axis, dims=dims)
    if not 0.0 < float(val_fraction) < 1.0:
        raise InputError(f"--val-fraction {val_fraction!r} must be between 0 and 1 (exclusive), e.g. 0.2")
    if count is not None and (isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1):
        raise InputError(f"--count {count!r} must be a positive whole number of patches, or left out")
    img_paths, lab_paths = _as_paths(image, "image"), _as_paths(labels, "labels")
    if len(img_paths) != len(lab_paths):
        raise InputError(
            f"{len(img_paths)} images but {len(lab_paths)} label stores: give one label store per image"
        )
    if len(img_paths) > MAX_SOURCES:
        raise InputError(f"{len(img_paths)} image/label pairs: a tile set holds at most {MAX_SOURCES}")
    out_path = Path(out)
    crops = _crops_for(crop, len(img_paths))
    opened = [
        (stores.open_volume(i, name="image"), stores.open_volume(lab, name="labels"))
        for i, lab in zip(img_paths, lab_paths)
    ]
    if out_path.resolve() in {p.resolve() for p in (*img_paths, *lab_paths)}:
        raise InputError(f"output {out_path} is one of the inputs: choose another output path")
    stores.check_new_output(out_path, overwrite=overwrite)
    sources = [
        _check_source(i, lab, img, labs, c, dims=dims, size=size, slice_axis=slice_axis)
        for i, lab, (img, labs), c in zip(img_paths, lab_paths, opened, crops)
    ]
    ndim = sources[0].image.ndim
    for src in sources[1:]:
        if src.image.ndim != ndim:
            raise InputError(
                f"image {src.img_path} has {src.image.ndim} axes but image {sources[0].img_path} has {ndim}: "
                f"the pairs of a tile set must have the same number of axes; store 2D images as (1, Y, X) stacks"
            )
    extent = patch_extent(size, dims=dims, ndim=ndim, slice_axis=slice_axis)
    for src in sources:
        src.split = plan_split(src.region, extent, dims=dims, val_fraction=float(val_fraction),
                               path=str(src.img_path))
    slab_voxels = {
        part: [math.prod(s.stop - s.start for s in src.slab(part)) for src in sources] for part in ("train", "val")
    }
    n_train, n_val = default_counts(sum(slab_voxels["train"]), sum(slab_voxels["val"]), math.prod(extent), count)
    shares = {"train": share_counts(n_train, slab_voxels["train"]), "val": share_counts(n_val, slab_voxels["val"])}
    for i, src in enumerate(sources):
        src.counts = {part: shares[part][i] for part in shares}
    totals = {part: sum(shares[part]) for part in shares}

    given = _merge_phases(sources, phases)
    for src in sources:
        src.attrs = dict(src.image.attrs)
        stats = src.attrs.get(stores.ATTR_INTENSITY)
        if not (isinstance(stats, dict) and {"p_low", "p_high"} <= stats.keys()):
            stats = intensity_stats(src.image)
        src.stats = stats
    dtypes = {np.dtype(src.image.dtype) for src in sources}
    tile_dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)

    rng = np.random.default_rng(seed)
    patch = (size,) * dims
    squeeze = AXES.index(slice_axis) if dims == 2 and ndim == 3 else None
    per_chunk = max(1, CHUNK_BYTES // (math.prod(patch) * max(tile_dtype.itemsize, 1)))
    share = BALANCED_SHARE if balance else 0.0
    hist = {}
    with stores.atomic_output(out_path, overwrite=overwrite) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for part in ("train", "val"):
            hist[part] = _write_part(
                group, part, sources, totals[part], extent, patch, squeeze, per_chunk, tile_dtype, share, rng
            )
        present = np.flatnonzero(hist["train"] + hist["val"])
        if len(present) < 2:
            where = ", ".join(str(src.lab_path) for src in sources)
            raise InputError(
                f"labels {where} hold only label {int(present[0])} in the sampled region: "
                f"training needs at least two phases; check the labels or the --crop"
            )
        classes = int(max(present.max(), max(given, default=0))) + 1
        names = {k: given.get(k, f"phase{k}") for k in range(classes)}
        class_counts = {part: hist[part][:classes].tolist() for part in hist}
        class_fractions = {part: [c / max(1, sum(cc)) for c in cc] for part, cc in class_counts.items()}
        first = sources[0]
        attrs = {
            "format": TILES_FORMAT,
            "format_version": TILES_FORMAT_VERSION,
            "dims": dims,
            "size": size,
            "slice_axis": slice_axis,
            "classes": classes,
            stores.ATTR_PHASES: {str(k): v for k, v in names.items()},
            stores.ATTR_INTENSITY: first.stats,
            "split": first.split,
            "sources": [
                {"image": str(src.img_path.resolve()), "labels": str(src.lab_path.resolve()),
                 "intensity": src.stats, "split": src.split, "counts": src.counts}
                for src in sources
            ],
            "sampling": {"method": "balanced" if balance else "uniform", "balanced_share": share},
            "counts": totals,
            "class_counts": class_counts,
            "class_fractions": class_fractions,
            "val_fraction": float(val_fraction),
            "seed": int(seed),
            stores.ATTR_SOURCE: {"image": str(first.img_path.resolve()), "labels": str(first.lab_path.resolve())},
            stores.ATTR_PROVENANCE: stores.provenance(),
        }
        for key in (stores.ATTR_VOXEL_SIZE, stores.ATTR_VOXEL_UNIT):
            if key in first.attrs:
                attrs[key] = first.attrs[key]
        group.attrs.update(attrs)

    fractions = {part: {names[k]: f for k, f in enumerate(fr)} for part, fr in class_fractions.items()}
    return {
        "path": str(out_path), "dims": dims, "size": size, "slice_axis": slice_axis, "train": totals["train"],
        "val": totals["val"], "classes": classes, "phases": names, "split": first.split, "sources": len(sources),
        "sampling": attrs["sampling"]["method"], "fractions": fractions,
    }


def _write_part(
    group: zarr.Group, part: str, sources: Sequence[_Source], n: int, extent: Sequence[int],
    patch: tuple[int, ...], squeeze: int | None, per_chunk: int, dtype: np.dtype, share: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sample and write the patches of one part (``train`` or ``val``); return the label histogram (256,) int64.

    Sources are taken one after the other, each with its slab read once (into memory when small).
    """
    chunks = (min(n, per_chunk), *patch)
    comp = stores.compressors_for()
    img_out = group.create_array(f"{part}/image", shape=(n, *patch), dtype=dtype, chunks=chunks,
                                 compressors=comp, fill_value=0)
    lab_out = group.create_array(f"{part}/labels", shape=(n, *patch), dtype=np.uint8, chunks=chunks,
                                 compressors=comp, fill_value=0)
    hist = np.zeros(MAX_LABEL + 1, np.int64)
    step = chunks[0]
    img_buf = np.empty((step, *patch), dtype)
    lab_buf = np.empty((step, *patch), np.uint8)
    all_origins, all_sources = [], []
    done = filled = 0
    for s, src in enumerate(sources):
        slab = src.slab(part)
        k = src.counts[part]
        n_bal = int(round(share * k))
        origins = sample_origins(slab, extent, k - n_bal, rng)
        reader = _PatchReader(src.image, src.labels, slab, squeeze)
        if n_bal:
            block = scan_block(src.labels.shards or src.labels.chunks, [b.stop - b.start for b in slab])
            index = ClassIndex(reader.read_labels, slab, block, lab_path=src.lab_path)
            origins = np.concatenate([origins, balanced_origins(index, slab, extent, n_bal, rng)])
            origins = origins[np.lexsort(origins.T[::-1])]
        all_origins.append(origins)
        all_sources.append(np.full(k, s, np.uint8))
        for origin in origins:
            img, lab = reader.read(origin, extent)
            img_buf[filled] = img
            lab_buf[filled] = _check_label_range(lab, src.lab_path)
            filled += 1
            if filled == step:
                hist += np.bincount(lab_buf.ravel(), minlength=MAX_LABEL + 1)
                img_out[done : done + step] = img_buf
                lab_out[done : done + step] = lab_buf
                done, filled = done + step, 0
    if filled:
        hist += np.bincount(lab_buf[:filled].ravel(), minlength=MAX_LABEL + 1)
        img_out[done : done + filled] = img_buf[:filled]
        lab_out[done : done + filled] = lab_buf[:filled]
    origins = np.concatenate(all_origins)
    source = np.concatenate(all_sources)
    group.create_array(f"{part}/origins", shape=origins.shape, dtype=np.int64, chunks=origins.shape,
                       compressors=None, fill_value=0)[...] = origins
    group.create_array(f"{part}/source", shape=source.shape, dtype=np.uint8, chunks=source.shape,
                       compressors=None, fill_value=0)[...] = source
    return hist


def _upgrade_v1(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes of a version-1 tile set with the keys of version 2 added (one source, uniform sampling)."""
    attrs = dict(attrs)
    source = attrs.get(stores.ATTR_SOURCE) or {}
    attrs["sources"] = [{
        "image": source.get("image"), "labels": source.get("labels"),
        "intensity": attrs.get(stores.ATTR_INTENSITY), "split": attrs.get("split"),
        "counts": attrs.get("counts"),
    }]
    # Version 1 cut 2D tiles only across z (or took a 2D image whole).
    attrs.setdefault("slice_axis", "z" if int(attrs["dims"]) == 2 else None)
    attrs.setdefault("sampling", {"method": "uniform", "balanced_share": 0.0})
    return attrs


def read_tiles(path: PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Open a tile set written by :func:`make_tiles` (format version 1 or 2) and load its arrays into memory.

    Returns
    -------
    attrs : the group attributes (``dims``, ``size``, ``slice_axis``, ``classes``, ``phases``, ``sources``,
        ``intensity``, ``split``...); for a version-1 set, ``sources`` (one entry), ``slice_axis`` and
        ``sampling`` are filled in from its other attributes. Normalise a tile from source ``s`` with
        ``attrs["sources"][s]["intensity"]``.
    arrays : ``{"train/image": (N, *patch), "train/labels": (N, *patch) uint8, "train/source": (N,) uint8,
        "val/image", "val/labels", "val/source"}``; ``source`` is all zeros for a version-1 set.

    Raises
    ------
    MissingInputError
        if ``path`` does not exist.
    InputError
        if ``path`` is not a rockseg tile set, is of an unknown version, or its arrays are inconsistent.
    """
    p = Path(path)
    if not p.exists():
        raise MissingInputError(f"tile set {p} does not exist: check the path, or make one with 'rockseg tile'")
    hint = "make one with 'rockseg tile IMAGE LABELS -o TILES'"
    try:
        group = zarr.open_group(str(p), mode="r")
    except Exception:
        raise InputError(f"{p} is not a rockseg tile set (not a Zarr group): {hint}") from None
    attrs = dict(group.attrs)
    if attrs.get("format") != TILES_FORMAT:
        raise InputError(f"{p} is not a rockseg tile set (no format={TILES_FORMAT!r} attribute): {hint}")
    version = attrs.get("format_version", 0)
    if not isinstance(version, int) or version > TILES_FORMAT_VERSION:
        raise InputError(
            f"tile set {p} has format version {version!r}, newer than this rockseg reads "
            f"({TILES_FORMAT_VERSION}): upgrade rockseg"
        )
    if version not in READABLE_VERSIONS:
        raise InputError(f"tile set {p} has unknown format version {version!r}: re-make it with 'rockseg tile'")
    if version == 1:
        attrs = _upgrade_v1(attrs)
    sources = attrs.get("sources")
    if not isinstance(sources, list) or not sources or not all(
        isinstance(s, dict) and isinstance(s.get(stores.ATTR_INTENSITY), dict) for s in sources
    ):
        raise InputError(f"tile set {p} has no valid 'sources' attribute: re-make it with 'rockseg tile'")
    dims, size, classes = int(attrs["dims"]), int(attrs["size"]), int(attrs["classes"])
    arrays: dict[str, np.ndarray] = {}
    for part in ("train", "val"):
        try:
            img, lab = group[f"{part}/image"], group[f"{part}/labels"]
            src = group[f"{part}/source"] if version >= 2 else None
        except KeyError:
            raise InputError(
                f"tile set {p} lacks {part}/image, {part}/labels or {part}/source: re-make it with 'rockseg tile'"
            ) from None
        want = (size,) * dims
        if img.shape[1:] != want or lab.shape != img.shape or img.shape[0] < 1:
            raise InputError(
                f"tile set {p}: {part}/image {img.shape} and {part}/labels {lab.shape} do not hold "
                f"{dims}D tiles of size {size}: re-make it with 'rockseg tile'"
            )
        arrays[f"{part}/image"] = np.asarray(img[...])
        arrays[f"{part}/labels"] = np.asarray(lab[...])
        top = int(arrays[f"{part}/labels"].max())
        if top >= classes:
            raise InputError(f"tile set {p}: {part}/labels hold label {top} but classes is {classes}")
        if src is None:
            arrays[f"{part}/source"] = np.zeros(img.shape[0], np.uint8)
        else:
            source = np.asarray(src[...])
            if source.shape != img.shape[:1] or source.dtype != np.uint8 or int(source.max()) >= len(sources):
                raise InputError(
                    f"tile set {p}: {part}/source {source.shape} {source.dtype} does not index the "
                    f"{len(sources)} source(s) of its {img.shape[0]} tiles: re-make it with 'rockseg tile'"
                )
            arrays[f"{part}/source"] = source
    return attrs, arrays
