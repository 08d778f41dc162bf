"""The inputs of a tile set: its options, and the image/label pairs (its *sources*) it is cut from.

:func:`make_tiles <rockseg.training.tileset.make_tiles>` checks everything here before it writes anything:
the options (:func:`_check_options`, :func:`check_size`, :func:`check_dims`, :func:`check_axis`), and each pair,
opened, with its crop (:func:`_open_sources`); the pairs must agree on their number of axes and on phase names
(:func:`_merge_phases`). A :class:`_Source` is one checked pair; a :class:`_PatchReader` reads its patches, from
memory when its slab is small, else straight from the stores.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import zarr

from rockseg.errors import InputError
from rockseg.io import stores
from rockseg.training.sampling import AXIS_NAMES, Region, patch_extent, slab_region
from rockseg.vocabulary import AXES, MAX_LABEL

#: Tiles must be divisible by the UNet's total down-sampling (2**depth with the default depth 3).
SIZE_MULTIPLE = 8
#: At most this many image/label pairs in one tile set (``source`` arrays are uint8).
MAX_SOURCES = 256
#: Read the whole cropped region into memory when image + labels take at most this many bytes; beyond it,
#: each patch is read from the stores (slower, but memory stays bounded whatever the volume size).
REGION_BYTES = 256 * 2**20

PathLike = Union[str, "os.PathLike[str]"]


def _check_options(
    *, dims: int, size: int, axis: str | None, val_fraction: float, count: int | None,
) -> tuple[int, int, str | None]:
    """Check the options of a tile set; returns ``dims``, ``size`` and the slice axis (see :func:`check_axis`)."""
    dims = check_dims(dims)
    size = check_size(size)
    slice_axis = check_axis(axis, dims=dims)
    if not 0.0 < float(val_fraction) < 1.0:
        raise InputError(f"--val-fraction {val_fraction!r} must be between 0 and 1 (exclusive), e.g. 0.2")
    if count is not None and (isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1):
        raise InputError(f"--count {count!r} must be a positive whole number of patches, or left out")
    return dims, size, slice_axis


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


class _PatchReader:
    """Read image and label patches (image coordinates) from arrays whose first voxel is at ``offset``.

    :meth:`for_region` reads a region into memory when it is small, else reads straight from the stores; the
    training regions of a tile set, already in memory, are read through one too
    (:mod:`rockseg.training.regions`).
    """

    def __init__(self, image: Any, labels: Any, offset: Sequence[int], squeeze: int | None) -> None:
        self.image, self.labels = image, labels
        self.offset = np.array(offset, np.int64)
        self.squeeze = squeeze

    @classmethod
    def for_region(cls, image: zarr.Array, labels: zarr.Array, region: Region, squeeze: int | None) -> _PatchReader:
        """A reader of ``region`` of the stores: in memory when image + labels take at most :data:`REGION_BYTES`."""
        voxels = math.prod(s.stop - s.start for s in region)
        if voxels * (image.dtype.itemsize + labels.dtype.itemsize) <= REGION_BYTES:
            return cls(np.asarray(image[region]), np.asarray(labels[region]), [s.start for s in region], squeeze)
        return cls(image, labels, [0] * len(region), squeeze)

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
        crop = stores.parse_crop(crop, img.shape, volume=img_path)
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


def _open_sources(
    image: PathLike | Sequence[PathLike], labels: PathLike | Sequence[PathLike], crop: Any, *, out: Path,
    overwrite: bool, dims: int, size: int, slice_axis: str | None,
) -> list[_Source]:
    """Open and check the image/label pairs and their crops, and check that ``out`` may be written.

    Raises
    ------
    InputError, MissingInputError, OutputExistsError
        for pairs that do not fit the options or each other, a missing store, or an output that exists (without
        ``overwrite``) or is one of the inputs.
    """
    img_paths, lab_paths = _as_paths(image, "image"), _as_paths(labels, "labels")
    if len(img_paths) != len(lab_paths):
        raise InputError(
            f"{len(img_paths)} images but {len(lab_paths)} label stores: give one label store per image"
        )
    if len(img_paths) > MAX_SOURCES:
        raise InputError(f"{len(img_paths)} image/label pairs: a tile set holds at most {MAX_SOURCES}")
    crops = _crops_for(crop, len(img_paths))
    opened = [
        (stores.open_volume(i, name="image"), stores.open_volume(lab, name="labels"))
        for i, lab in zip(img_paths, lab_paths)
    ]
    if out.resolve() in {p.resolve() for p in (*img_paths, *lab_paths)}:
        raise InputError(f"output {out} is one of the inputs: choose another output path")
    stores.check_new_output(out, overwrite=overwrite)
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
    return sources
