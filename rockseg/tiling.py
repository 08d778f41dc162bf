"""Training patches (tiles) from an image/label pair, with a spatially disjoint validation split.

:func:`make_tiles` samples random patches (2D slices or 3D sub-volumes) from an image and its labels and writes a
*tile set*: a Zarr v3 group that :func:`rockseg.training.train` reads.

The validation split is spatial, never random over patches: the (cropped) region is cut along one axis into a
training slab and a validation slab, and patches are sampled only inside their own slab, so no validation patch
overlaps a training patch. Random overlapping patches leak: a published 2D/3D UNet study on sandstones reported
0.999 validation accuracy against 0.84 on a separate test volume for that reason.

Tile set layout
---------------
``train/image``, ``val/image`` : (N, *patch) arrays in the image's dtype; ``patch`` is (size, size) for 2D tiles
    and (size, size, size) for 3D tiles.
``train/labels``, ``val/labels`` : (N, *patch) uint8.
``train/origins``, ``val/origins`` : (N, image.ndim) int64, the corner of each patch in image coordinates (a 2D
    tile taken from a (Z, Y, X) stack covers ``[z, y:y+size, x:x+size]``).
Group attributes: ``format`` (``"rockseg-tiles"``), ``format_version``, ``dims``, ``size``, ``classes``,
``phases`` ({label: name} for labels 0..classes-1), ``intensity`` (global statistics of the whole image, for
normalisation), ``split`` (axis, region, training and validation ranges, in image coordinates), ``counts``,
``class_counts``, ``seed``, ``source`` (image and labels paths), ``voxel_size``/``voxel_unit`` when the image
has them, and ``rockseg`` (provenance).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from rockseg import stores
from rockseg.errors import InputError, MissingInputError
from rockseg.normalization import intensity_stats

TILES_FORMAT = "rockseg-tiles"
TILES_FORMAT_VERSION = 1

#: Tiles must be divisible by the UNet's total down-sampling (2**depth with the default depth 3).
SIZE_MULTIPLE = 8
MIN_COUNT, MAX_COUNT = 16, 2000
MIN_VAL_COUNT = 4
#: Read the whole cropped region into memory when image + labels take at most this many bytes; beyond it,
#: each patch is read from the stores (slower, but memory stays bounded whatever the volume size).
REGION_BYTES = 256 * 2**20
#: Target size of one stored chunk of tiles, bytes.
CHUNK_BYTES = 2 * 2**20
MAX_LABEL = 255
AXIS_NAMES = {3: ("Z", "Y", "X"), 2: ("Y", "X")}


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


def plan_split(
    region: Sequence[slice], extent: Sequence[int], *, dims: int, val_fraction: float, path: str
) -> dict[str, Any]:
    """Choose the split axis and cut ``region`` into a training slab and a validation slab.

    Parameters
    ----------
    region : one slice per image axis, the (cropped) region to sample from, image coordinates.
    extent : the patch extent along each image axis (1 along Z for 2D tiles from a stack).
    dims : 2 or 3.
    val_fraction : share of the split axis given to validation (the slab is at least one patch thick).
    path : the image path, for messages.

    Returns
    -------
    dict with ``axis``, ``axis_name``, ``region`` ([[start, stop], ...]), ``train`` and ``val`` ([start, stop]
    along ``axis``). Validation takes the high end of the axis.
    """
    lengths = [s.stop - s.start for s in region]
    ndim = len(lengths)
    if dims == 3:
        axis = int(np.argmax(lengths))  # the longest axis leaves the thickest slabs
    elif ndim == 3 and lengths[0] >= 2:
        axis = 0  # whole slices go to validation
    else:
        axis = ndim - 2  # a single image: split along Y
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


def slab_region(split: dict[str, Any], part: str) -> tuple[slice, ...]:
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


class _PatchReader:
    """Read image and label patches, from memory when the region is small, else straight from the stores."""

    def __init__(self, image: zarr.Array, labels: zarr.Array, region: tuple[slice, ...], squeeze: bool) -> None:
        self.squeeze = squeeze
        voxels = math.prod(s.stop - s.start for s in region)
        if voxels * (image.dtype.itemsize + labels.dtype.itemsize) <= REGION_BYTES:
            self.offset = np.array([s.start for s in region], np.int64)
            self.image, self.labels = np.asarray(image[region]), np.asarray(labels[region])
        else:
            self.offset = np.zeros(len(region), np.int64)
            self.image, self.labels = image, labels

    def read(self, origin: np.ndarray, extent: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        local = origin - self.offset
        index = tuple(slice(int(o), int(o) + e) for o, e in zip(local, extent))
        img, lab = np.asarray(self.image[index]), np.asarray(self.labels[index])
        if self.squeeze:
            img, lab = img[0], lab[0]
        return img, lab


def make_tiles(
    image: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dims: int = 3,
    size: int = 48,
    count: int | None = None,
    val_fraction: float = 0.2,
    crop: tuple[slice, ...] | None = None,
    seed: int = 0,
    phases: dict[int, str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Sample training and validation patches from an image/label pair and write a tile set.

    Parameters
    ----------
    image : path of a Zarr array, (Z, Y, X) or one 2D (Y, X) image, any numeric dtype.
    labels : path of a Zarr array of the same shape holding integer labels 0..255 (0..classes-1).
    out : path of the tile set to write (a Zarr v3 group, see the module docstring).
    dims : 2 for 2D patches (slices), 3 for 3D patches (needs a (Z, Y, X) image).
    size : patch edge in voxels; a multiple of 8.
    count : number of training patches; default: enough to cover the training slab about twice, within
        [16, 2000]. Validation patches are in proportion to the slab volumes, at least 4.
    val_fraction : share of the split axis given to the validation slab, in (0, 1); the slab is at least one
        patch thick (one slice for 2D tiles split along Z).
    crop : one slice per image axis: sample only from this region (image coordinates); default the whole image.
    seed : seed of the random patch positions.
    phases : {label: name}; default the ``phases`` attribute of the labels store, else ``"phase<N>"``.
    overwrite : replace an existing ``out``.

    Returns
    -------
    dict : a summary: ``path``, ``dims``, ``size``, ``train`` and ``val`` (patch counts), ``classes``,
        ``phases``, ``split``, ``fractions`` ({"train"/"val": {name: share of voxels}}).

    Raises
    ------
    InputError
        for a bad option or inputs that do not fit (shapes differ, labels not integers, size too large...);
        nothing is written then.
    OutputExistsError
        if ``out`` exists and ``overwrite`` is false.
    """
    dims = check_dims(dims)
    size = check_size(size)
    if not 0.0 < float(val_fraction) < 1.0:
        raise InputError(f"--val-fraction {val_fraction!r} must be between 0 and 1 (exclusive), e.g. 0.2")
    if count is not None and (isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1):
        raise InputError(f"--count {count!r} must be a positive whole number of patches, or left out")
    img_path, lab_path, out_path = Path(image), Path(labels), Path(out)
    img = stores.open_volume(img_path, name="image")
    lab = stores.open_volume(lab_path, name="labels")
    if out_path.resolve() in (img_path.resolve(), lab_path.resolve()):
        raise InputError(f"output {out_path} is one of the inputs: choose another output path")
    stores.check_new_output(out_path, overwrite=overwrite)

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
    region = stores.check_crop(crop, img.shape, name=str(img_path))
    extent = (size,) * img.ndim if dims == 3 or img.ndim == 2 else (1, size, size)
    lengths = tuple(s.stop - s.start for s in region)
    for n, e, name in zip(lengths, extent, AXIS_NAMES[img.ndim]):
        if n < e:
            fit = min(n for n, e in zip(lengths, extent) if e > 1)
            raise InputError(
                f"--size {size} does not fit the region {lengths} of {img_path} (axis {name} has {n}): "
                f"use --size {max(SIZE_MULTIPLE, fit - fit % SIZE_MULTIPLE)} or less, or a larger --crop"
            )
    split = plan_split(region, extent, dims=dims, val_fraction=float(val_fraction), path=str(img_path))
    slabs = {part: slab_region(split, part) for part in ("train", "val")}
    slab_voxels = {part: math.prod(s.stop - s.start for s in slabs[part]) for part in slabs}
    n_train, n_val = default_counts(slab_voxels["train"], slab_voxels["val"], math.prod(extent), count)

    given = {int(k): str(v) for k, v in (phases if phases is not None else stores.phases_of(lab)).items()}
    bad = [k for k in given if not 0 <= k <= MAX_LABEL]
    if bad:
        raise InputError(f"phase label {bad[0]} is outside 0..{MAX_LABEL}: labels must fit in uint8")
    img_attrs = dict(img.attrs)
    stats = img_attrs.get(stores.ATTR_INTENSITY)
    if not (isinstance(stats, dict) and {"p_low", "p_high"} <= stats.keys()):
        stats = intensity_stats(img)

    rng = np.random.default_rng(seed)
    origins = {"train": sample_origins(slabs["train"], extent, n_train, rng),
               "val": sample_origins(slabs["val"], extent, n_val, rng)}
    patch = (size,) * dims
    squeeze = dims == 2 and img.ndim == 3
    per_chunk = max(1, CHUNK_BYTES // (math.prod(patch) * max(img.dtype.itemsize, 1)))
    hist = {}
    with stores.atomic_output(out_path, overwrite=overwrite) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for part in ("train", "val"):
            hist[part] = _write_part(
                group, part, img, lab, slabs[part], origins[part], extent, patch, squeeze, per_chunk,
                lab_path=lab_path,
            )
        present = np.flatnonzero(hist["train"] + hist["val"])
        if len(present) < 2:
            raise InputError(
                f"labels {lab_path} hold only label {int(present[0])} in the sampled region: "
                f"training needs at least two phases; check the labels or the --crop"
            )
        classes = int(max(present.max(), max(given, default=0))) + 1
        names = {k: given.get(k, f"phase{k}") for k in range(classes)}
        class_counts = {part: hist[part][:classes].tolist() for part in hist}
        attrs = {
            "format": TILES_FORMAT,
            "format_version": TILES_FORMAT_VERSION,
            "dims": dims,
            "size": size,
            "classes": classes,
            stores.ATTR_PHASES: {str(k): v for k, v in names.items()},
            stores.ATTR_INTENSITY: stats,
            "split": split,
            "counts": {"train": n_train, "val": n_val},
            "class_counts": class_counts,
            "val_fraction": float(val_fraction),
            "seed": int(seed),
            stores.ATTR_SOURCE: {"image": str(img_path.resolve()), "labels": str(lab_path.resolve())},
            stores.ATTR_PROVENANCE: stores.provenance(),
        }
        for key in (stores.ATTR_VOXEL_SIZE, stores.ATTR_VOXEL_UNIT):
            if key in img_attrs:
                attrs[key] = img_attrs[key]
        group.attrs.update(attrs)

    fractions = {
        part: {names[k]: c / max(1, sum(counts)) for k, c in enumerate(counts)}
        for part, counts in class_counts.items()
    }
    return {
        "path": str(out_path), "dims": dims, "size": size, "train": n_train, "val": n_val,
        "classes": classes, "phases": names, "split": split, "fractions": fractions,
    }


def _write_part(
    group: zarr.Group, part: str, image: zarr.Array, labels: zarr.Array, region: tuple[slice, ...],
    origins: np.ndarray, extent: Sequence[int], patch: tuple[int, ...], squeeze: bool, per_chunk: int,
    *, lab_path: Path,
) -> np.ndarray:
    """Write the patches of one part (``train`` or ``val``); return the label histogram (256,) int64."""
    n = len(origins)
    chunks = (min(n, per_chunk), *patch)
    comp = stores.compressors_for()
    img_out = group.create_array(f"{part}/image", shape=(n, *patch), dtype=image.dtype, chunks=chunks,
                                 compressors=comp, fill_value=0)
    lab_out = group.create_array(f"{part}/labels", shape=(n, *patch), dtype=np.uint8, chunks=chunks,
                                 compressors=comp, fill_value=0)
    org_out = group.create_array(f"{part}/origins", shape=origins.shape, dtype=np.int64,
                                 chunks=origins.shape, compressors=None, fill_value=0)
    org_out[...] = origins
    reader = _PatchReader(image, labels, region, squeeze)
    hist = np.zeros(MAX_LABEL + 1, np.int64)
    step = chunks[0]
    for start in range(0, n, step):
        stop = min(n, start + step)
        img_buf = np.empty((stop - start, *patch), image.dtype)
        lab_buf = np.empty((stop - start, *patch), np.uint8)
        for i, origin in enumerate(origins[start:stop]):
            img_buf[i], lab = reader.read(origin, extent)
            if lab.dtype not in (np.uint8, np.bool_) and lab.size:
                lo, hi = int(lab.min()), int(lab.max())
                if lo < 0 or hi > MAX_LABEL:
                    raise InputError(
                        f"labels {lab_path} hold the value {lo if lo < 0 else hi} but labels must be "
                        f"0..{MAX_LABEL} (phase numbers 0..N-1): relabel them"
                    )
            lab_buf[i] = lab
        hist += np.bincount(lab_buf.ravel(), minlength=MAX_LABEL + 1)
        img_out[start:stop] = img_buf
        lab_out[start:stop] = lab_buf
    return hist


def read_tiles(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Open a tile set written by :func:`make_tiles` and load its arrays into memory.

    Returns
    -------
    attrs : the group attributes (``dims``, ``size``, ``classes``, ``phases``, ``intensity``, ``split``...).
    arrays : ``{"train/image": (N, *patch), "train/labels": (N, *patch) uint8, "val/image", "val/labels"}``.

    Raises
    ------
    MissingInputError
        if ``path`` does not exist.
    InputError
        if ``path`` is not a rockseg tile set or its arrays are inconsistent.
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
    if int(attrs.get("format_version", 0)) > TILES_FORMAT_VERSION:
        raise InputError(
            f"tile set {p} has format version {attrs['format_version']}, newer than this rockseg reads "
            f"({TILES_FORMAT_VERSION}): upgrade rockseg"
        )
    dims, size, classes = int(attrs["dims"]), int(attrs["size"]), int(attrs["classes"])
    arrays: dict[str, np.ndarray] = {}
    for part in ("train", "val"):
        try:
            img, lab = group[f"{part}/image"], group[f"{part}/labels"]
        except KeyError:
            raise InputError(f"tile set {p} lacks {part}/image or {part}/labels: re-make it with 'rockseg tile'")
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
    return attrs, arrays
