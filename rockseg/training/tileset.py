"""The tile set: training and validation patches on disk, written by :func:`make_tiles`, read by :func:`read_tiles`.

:func:`make_tiles` samples patches (2D slices along any axis, or 3D sub-volumes) from one or several image/label
pairs and writes a *tile set*: a Zarr v3 group that :func:`rockseg.training.trainer.train` reads with
:func:`read_tiles`. It reads as check -> plan -> run: the options and pairs are checked
(:mod:`rockseg.training.pairs`), :func:`_plan` splits each pair into a training and a validation slab and shares
out the patches (:mod:`rockseg.training.sampling`), and :func:`_write_tile_set` samples and writes them part by
part (:func:`_write_part`), copies each pair's *training region* (:func:`_write_regions`) and writes the attributes
below (:func:`_tile_set_attrs`). Patch positions are class-balanced by default; ``balance=False`` gives uniform
positions only. ``make_tiles`` is long only by its docstring, the contract of the tile set's options.

The training region of a pair is its training slab: every voxel a training patch may come from, and no voxel of
its validation slab. ``rockseg train`` draws fresh random patches from the regions every step
(:mod:`rockseg.training.regions`); :func:`read_regions` reads them.

Tile set layout (format version 3)
----------------------------------
``train/image``, ``val/image`` : (N, *patch) arrays in the images' dtype (float32 when the pairs' dtypes
    differ); ``patch`` is (size, size) for 2D tiles and (size, size, size) for 3D tiles. A 2D tile cut across
    axis ``y`` of a (Z, Y, X) volume holds the (Z, X) plane, across ``x`` the (Z, Y) plane.
``train/labels``, ``val/labels`` : (N, *patch) uint8; voxels of the ``unlabelled`` value (sparse labels) are kept
    as that value.
``train/origins``, ``val/origins`` : (N, image.ndim) int64, the corner of each patch in the coordinates of its
    own image (a 2D tile across ``y`` from a (Z, Y, X) stack covers ``[z:z+size, y, x:x+size]``).
``train/source``, ``val/source`` : (N,) uint8, the index in ``sources`` of the pair each patch comes from.
``regions/<s>/image``, ``regions/<s>/labels`` : the training region of source ``s``, whole, in that image's dtype
    and uint8; its corner in the image is ``sources[s]["train_region"]``. Stored only when the regions of all
    pairs take at most :data:`REGION_MAX_BYTES` (image and labels together); else none is.

Group attributes: ``format`` (``"rockseg-tiles"``), ``format_version`` (3), ``dims``, ``size``, ``slice_axis``
(``"z"``, ``"y"`` or ``"x"`` for 2D tiles, the axis the slices are cut across; ``"z"`` for a 2D image; ``None`` for
3D tiles), ``classes``, ``phases`` ({label: name} for labels 0..classes-1), ``sources`` (one dict per pair: ``image``
and ``labels`` paths, ``intensity`` statistics of that whole image for normalisation, ``split``, ``counts`` and
``train_region`` ([[start, stop], ...] per image axis)), ``regions`` (``stored``, ``bytes``, ``max_bytes`` and, when
stored, ``class_counts``: voxels per label in all regions), ``sampling`` (``method`` ``"balanced"`` or ``"uniform"``
and ``balanced_share``), ``counts``, ``class_counts`` (voxels per label in the tiles of each part) and
``class_fractions`` (the same as shares), ``unlabelled`` (the label of unlabelled voxels, or None: every value a
phase) and ``unlabelled_voxels`` ({"train", "val", "regions"}: how many the tiles and regions hold; training ignores
them when there are some), ``val_fraction``, ``seed``, ``voxel_size``/``voxel_unit`` when the first
image has them, and ``rockseg`` (provenance). For readers of version 1, ``intensity``, ``split`` and ``source``
(image and labels paths) repeat those of the first pair.

Version-1 (one pair, no ``source`` arrays, 2D tiles only across ``z``) and version-2 sets (no training
regions) are still read by :func:`read_tiles`; training uses their fixed patches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from rockseg.errors import InputError, MissingInputError
from rockseg.io import stores
from rockseg.io.intensity import intensity_stats
from rockseg.training.sampling import (
    BALANCED_SHARE, UNLABELLED, _check_label_range, default_counts, draw_origins, patch_extent, plan_split,
    share_counts,
)
from rockseg.training.pairs import (
    PathLike, _check_options, _merge_phases, _open_sources, _PatchReader, _Source,
)
from rockseg.vocabulary import AXES, MAX_LABEL

TILES_FORMAT = "rockseg-tiles"
TILES_FORMAT_VERSION = 3
#: Format versions :func:`read_tiles` reads.
READABLE_VERSIONS = (1, 2, 3)
#: Target size of one stored chunk of tiles, bytes.
CHUNK_BYTES = 2 * 2**20
#: The training regions are stored when image and labels of all of them take at most this many bytes (training
#: holds them in memory); above it none are, and training uses the fixed patches.
REGION_MAX_BYTES = 2 * 2**30


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
    unlabelled: int | None = UNLABELLED,
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
    unlabelled : the label of unlabelled voxels (sparse labels: a few labelled slices or scribbles), 0..255 and
        not a phase label; None makes every value a phase. Where a slab holds unlabelled voxels every patch is
        centred on a labelled voxel (:mod:`rockseg.training.sampling`); training and validation ignore them.
    overwrite : replace an existing ``out``.

    Returns
    -------
    dict : a summary: ``path``, ``dims``, ``size``, ``slice_axis``, ``train`` and ``val`` (patch counts),
        ``classes``, ``phases``, ``split`` (of the first pair), ``sources`` (number of pairs), ``sampling``
        (``"balanced"`` or ``"uniform"``), ``fractions`` ({"train"/"val": {name: share of tile voxels}}),
        ``regions`` (True when the training regions are stored; False when their ``region_bytes`` exceed
        :data:`REGION_MAX_BYTES`, and training will use the fixed patches), ``unlabelled`` (the value) and
        ``unlabelled_voxels`` (how many the tiles and regions hold).

    Raises
    ------
    InputError
        for a bad option or inputs that do not fit (shapes differ, labels not integers, size too large, pairs
        with different phase names or numbers of axes...); nothing is written then.
    OutputExistsError
        if ``out`` exists and ``overwrite`` is false.
    """
    dims, size, slice_axis = _check_options(dims=dims, size=size, axis=axis, val_fraction=val_fraction, count=count)
    out_path = Path(out)
    sources = _open_sources(image, labels, crop, out=out_path, overwrite=overwrite, dims=dims, size=size,
                            slice_axis=slice_axis)
    unlabelled = _check_unlabelled_option(unlabelled)
    plan = _plan(sources, dims=dims, size=size, slice_axis=slice_axis, count=count, val_fraction=float(val_fraction),
                 seed=seed, phases=phases, balance=balance, unlabelled=unlabelled)
    attrs = _write_tile_set(out_path, sources, plan, overwrite=overwrite)
    names = {int(k): v for k, v in attrs[stores.ATTR_PHASES].items()}
    fractions = {part: {names[k]: f for k, f in enumerate(fr)} for part, fr in attrs["class_fractions"].items()}
    return {
        "path": str(out_path), "dims": dims, "size": size, "slice_axis": slice_axis, "train": plan.totals["train"],
        "val": plan.totals["val"], "classes": attrs["classes"], "phases": names, "split": sources[0].split,
        "sources": len(sources), "sampling": attrs["sampling"]["method"], "fractions": fractions,
        "regions": plan.regions, "region_bytes": int(plan.region_bytes),
        "unlabelled": plan.unlabelled, "unlabelled_voxels": sum(attrs["unlabelled_voxels"].values()),
    }


def _check_unlabelled_option(unlabelled: Any) -> int | None:
    """``unlabelled`` as an int 0..255 (or None)."""
    if unlabelled is None:
        return None
    if isinstance(unlabelled, bool) or not isinstance(unlabelled, (int, np.integer)) or \
            not 0 <= unlabelled <= MAX_LABEL:
        raise InputError(f"--unlabelled {unlabelled!r} must be a label value 0..{MAX_LABEL} (default {UNLABELLED})")
    return int(unlabelled)


@dataclass(frozen=True)
class _TilePlan:
    """What :func:`make_tiles` writes, decided before sampling: shapes, patch counts, phases, dtype, sampling."""

    dims: int
    size: int
    slice_axis: str | None
    extent: tuple[int, ...]  # of a patch along each image axis (1 across the slice axis of 2D tiles)
    patch: tuple[int, ...]  # of a stored tile
    squeeze: int | None  # the image axis a 2D tile from a volume drops
    totals: dict[str, int]  # patches per part, all pairs
    given: dict[int, str]  # phase names given or agreed by the label stores
    dtype: np.dtype  # of the stored image tiles
    per_chunk: int  # tiles per stored chunk
    share: float  # of balanced patches
    val_fraction: float
    seed: int
    region_bytes: int  # image + labels of the training regions of all pairs
    unlabelled: int | None = None  # label of unlabelled voxels

    @property
    def regions(self) -> bool:
        """Whether the training regions are stored (:data:`REGION_MAX_BYTES`)."""
        return self.region_bytes <= REGION_MAX_BYTES


def _plan(
    sources: Sequence[_Source], *, dims: int, size: int, slice_axis: str | None, count: int | None,
    val_fraction: float, seed: int, phases: dict[int, str] | None, balance: bool, unlabelled: int | None,
) -> _TilePlan:
    """Split each pair into slabs and share out the patches (both set on ``sources``); agree on phases and dtype.

    Each source also gets its image attributes and intensity statistics (those of its store, else computed).
    """
    ndim = sources[0].image.ndim
    extent = patch_extent(size, dims=dims, ndim=ndim, slice_axis=slice_axis)
    for src in sources:
        src.split = plan_split(src.region, extent, dims=dims, val_fraction=val_fraction, path=str(src.img_path))
    slab_voxels = {
        part: [math.prod(s.stop - s.start for s in src.slab(part)) for src in sources] for part in ("train", "val")
    }
    n_train, n_val = default_counts(sum(slab_voxels["train"]), sum(slab_voxels["val"]), math.prod(extent), count)
    shares = {"train": share_counts(n_train, slab_voxels["train"]), "val": share_counts(n_val, slab_voxels["val"])}
    for i, src in enumerate(sources):
        src.counts = {part: shares[part][i] for part in shares}

    given = _merge_phases(sources, phases)
    if unlabelled in given:
        raise InputError(
            f"--unlabelled {unlabelled} is also the phase {given[unlabelled]!r} (label {unlabelled}): give the value "
            f"that marks unlabelled voxels, one no phase has (default {UNLABELLED})"
        )
    for src in sources:
        src.attrs = dict(src.image.attrs)
        stats = src.attrs.get(stores.ATTR_INTENSITY)
        if not (isinstance(stats, dict) and {"p_low", "p_high"} <= stats.keys()):
            stats = intensity_stats(src.image)
        src.stats = stats
    dtypes = {np.dtype(src.image.dtype) for src in sources}
    tile_dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)
    patch = (size,) * dims
    region_bytes = sum(v * (np.dtype(src.image.dtype).itemsize + 1) for v, src in zip(slab_voxels["train"], sources))
    return _TilePlan(
        dims=dims, size=size, slice_axis=slice_axis, extent=extent, patch=patch,
        squeeze=AXES.index(slice_axis) if dims == 2 and ndim == 3 else None,
        totals={part: sum(shares[part]) for part in shares}, given=given, dtype=tile_dtype,
        per_chunk=max(1, CHUNK_BYTES // (math.prod(patch) * max(tile_dtype.itemsize, 1))),
        share=BALANCED_SHARE if balance else 0.0, val_fraction=val_fraction, seed=seed, region_bytes=region_bytes,
        unlabelled=unlabelled,
    )


def _write_tile_set(out: Path, sources: Sequence[_Source], plan: _TilePlan, *, overwrite: bool) -> dict[str, Any]:
    """Sample and write both parts and the attributes, atomically; returns the attributes.

    Raises
    ------
    InputError
        if the patches hold fewer than two phases, or the unlabelled value is a phase label (nothing is written
        then).
    """
    rng = np.random.default_rng(plan.seed)
    hist = {}
    unlabelled = plan.unlabelled
    with stores.atomic_output(out, overwrite=overwrite) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for part in ("train", "val"):
            hist[part] = _write_part(group, part, sources, plan, rng)
        missing = {part: int(h[unlabelled]) if unlabelled is not None else 0 for part, h in hist.items()}
        present = _phases_in(hist["train"] + hist["val"], unlabelled)
        if len(present) < 2:
            where = ", ".join(str(src.lab_path) for src in sources)
            raise InputError(
                f"labels {where} hold only label {int(present[0])} in the sampled region: "
                f"training needs at least two phases; check the labels or the --crop"
            )
        top = present.max()
        region_hist = _write_regions(group, sources) if plan.regions else None
        if region_hist is not None:  # a phase no fixed patch caught may still be in a random one
            top = max(top, _phases_in(region_hist, unlabelled).max())
            missing["regions"] = int(region_hist[unlabelled]) if unlabelled is not None else 0
        classes = int(max(top, max(plan.given, default=0))) + 1
        _check_unlabelled(unlabelled, classes, sources)
        attrs = _tile_set_attrs(sources, plan, {part: hist[part][:classes].tolist() for part in hist})
        attrs["unlabelled_voxels"] = missing
        if region_hist is not None:
            attrs["regions"]["class_counts"] = region_hist[:classes].tolist()
        group.attrs.update(attrs)
    return attrs


def _phases_in(hist: np.ndarray, unlabelled: int | None) -> np.ndarray:
    """The labels a histogram holds, the unlabelled value left out."""
    present = np.flatnonzero(hist)
    return present if unlabelled is None else present[present != unlabelled]


def _check_unlabelled(unlabelled: int | None, classes: int, sources: Sequence[_Source]) -> None:
    """The unlabelled value must not be a phase label (labels are 0..classes-1)."""
    if unlabelled is not None and unlabelled < classes:
        where = ", ".join(str(src.lab_path) for src in sources)
        raise InputError(
            f"--unlabelled {unlabelled} is also a phase label of {where} (phases 0..{classes - 1}): give the value "
            f"that marks unlabelled voxels, above the phases (default {UNLABELLED})"
        )


def _region_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    """Chunks of a stored training region: thin along its first axis, so it is copied a few slices at a time."""
    first = 16 if len(shape) == 3 else 256
    return (min(first, shape[0]), *(min(256, n) for n in shape[1:]))


def _write_regions(group: zarr.Group, sources: Sequence[_Source]) -> np.ndarray:
    """Copy the training region (the training slab) of each pair into ``regions/<s>/image`` and ``labels``.

    Returns the label histogram (256,) int64 of all regions. Copied a chunk-thick piece at a time.
    """
    hist = np.zeros(MAX_LABEL + 1, np.int64)
    comp = stores.compressors_for()
    for s, src in enumerate(sources):
        slab = src.slab("train")
        shape = tuple(b.stop - b.start for b in slab)
        chunks = _region_chunks(shape)
        img = group.create_array(f"regions/{s}/image", shape=shape, dtype=np.dtype(src.image.dtype), chunks=chunks,
                                 compressors=comp, fill_value=0)
        lab = group.create_array(f"regions/{s}/labels", shape=shape, dtype=np.uint8, chunks=chunks,
                                 compressors=comp, fill_value=0)
        for a in range(0, shape[0], chunks[0]):
            b = min(a + chunks[0], shape[0])
            piece = (slice(slab[0].start + a, slab[0].start + b), *slab[1:])
            img[a:b] = np.asarray(src.image[piece])
            labels = _check_label_range(np.asarray(src.labels[piece]), src.lab_path)
            lab[a:b] = labels
            hist += np.bincount(labels.ravel(), minlength=MAX_LABEL + 1)
    return hist


def _tile_set_attrs(
    sources: Sequence[_Source], plan: _TilePlan, class_counts: dict[str, list[int]],
) -> dict[str, Any]:
    """The group attributes of a tile set (module docstring), from the labels counted in its tiles."""
    classes = len(class_counts["train"])
    names = {k: plan.given.get(k, f"phase{k}") for k in range(classes)}
    class_fractions = {part: [c / max(1, sum(cc)) for c in cc] for part, cc in class_counts.items()}
    first = sources[0]
    attrs = {
        "format": TILES_FORMAT,
        "format_version": TILES_FORMAT_VERSION,
        "dims": plan.dims,
        "size": plan.size,
        "slice_axis": plan.slice_axis,
        "classes": classes,
        stores.ATTR_PHASES: {str(k): v for k, v in names.items()},
        stores.ATTR_INTENSITY: first.stats,
        "split": first.split,
        "sources": [
            {"image": str(src.img_path.resolve()), "labels": str(src.lab_path.resolve()),
             "intensity": src.stats, "split": src.split, "counts": src.counts,
             "train_region": [[b.start, b.stop] for b in src.slab("train")]}
            for src in sources
        ],
        "regions": {"stored": plan.regions, "bytes": int(plan.region_bytes), "max_bytes": REGION_MAX_BYTES},
        "sampling": {"method": "balanced" if plan.share else "uniform", "balanced_share": plan.share},
        "counts": plan.totals,
        "class_counts": class_counts,
        "class_fractions": class_fractions,
        "unlabelled": plan.unlabelled,
        "val_fraction": plan.val_fraction,
        "seed": int(plan.seed),
        stores.ATTR_SOURCE: {"image": str(first.img_path.resolve()), "labels": str(first.lab_path.resolve())},
        stores.ATTR_PROVENANCE: stores.provenance(),
    }
    for key in (stores.ATTR_VOXEL_SIZE, stores.ATTR_VOXEL_UNIT):
        if key in first.attrs:
            attrs[key] = first.attrs[key]
    return attrs


def _write_part(
    group: zarr.Group, part: str, sources: Sequence[_Source], plan: _TilePlan, rng: np.random.Generator,
) -> np.ndarray:
    """Sample and write the patches of one part (``train`` or ``val``); return the label histogram (256,) int64.

    Sources are taken one after the other, each with its slab read once (into memory when small).
    """
    n, patch, dtype = plan.totals[part], plan.patch, plan.dtype
    chunks = (min(n, plan.per_chunk), *patch)
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
        reader = _PatchReader.for_region(src.image, src.labels, slab, plan.squeeze)
        origins = draw_origins(reader.read_labels, slab, src.labels.shards or src.labels.chunks, plan.extent, k,
                               plan.share, rng, lab_path=src.lab_path, unlabelled=plan.unlabelled)
        all_origins.append(origins)
        all_sources.append(np.full(k, s, np.uint8))
        for origin in origins:
            img, lab = reader.read(origin, plan.extent)
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
    """Open a tile set written by :func:`make_tiles` (format version 1, 2 or 3) and load its patches into memory.

    The training regions of a version-3 set are not read here: :func:`read_regions` reads them.

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
        top = _top_label(arrays[f"{part}/labels"], attrs.get("unlabelled"))
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


def read_regions(path: PathLike, attrs: dict[str, Any]) -> list[tuple[tuple[int, ...], np.ndarray, np.ndarray]] | None:
    """The training regions of a tile set, in memory: one ``(origin, image, labels)`` per source.

    Parameters
    ----------
    path : the tile set.
    attrs : its attributes, as :func:`read_tiles` returns them.

    Returns
    -------
    list or None : per source, the corner of its training region in the source image's coordinates, the image
        (the source's dtype) and the labels (uint8) of the region; None for a set that holds no regions (format
        version 1 or 2, or regions over :data:`REGION_MAX_BYTES`).

    Raises
    ------
    InputError
        if the regions are missing, of the wrong shape, or hold a label of no class.
    """
    regions = attrs.get("regions")
    if not (isinstance(regions, dict) and regions.get("stored")):
        return None
    group = zarr.open_group(str(path), mode="r")
    classes = int(attrs["classes"])
    out = []
    for s, src in enumerate(attrs["sources"]):
        bounds = src.get("train_region") or []
        want = tuple(b - a for a, b in bounds)
        try:
            img, lab = group[f"regions/{s}/image"], group[f"regions/{s}/labels"]
        except KeyError:
            img = lab = None
        if img is None or img.shape != want or lab.shape != want or not want:
            raise InputError(
                f"tile set {path} lacks the training region {want} of source {s} (regions/{s}/image and "
                f"labels): re-make it with 'rockseg tile', or train with --sampling fixed"
            )
        labels = np.asarray(lab[...])
        top = _top_label(labels, attrs.get("unlabelled"))
        if top >= classes:
            raise InputError(f"tile set {path}: regions/{s}/labels hold label {top} but classes is {classes}")
        out.append((tuple(int(a) for a, _ in bounds), np.asarray(img[...]), labels))
    return out


def _top_label(labels: np.ndarray, unlabelled: int | None) -> int:
    """The highest phase label in ``labels`` (uint8), the unlabelled value left out; -1 for none."""
    hist = np.bincount(labels.ravel(), minlength=MAX_LABEL + 1)
    present = _phases_in(hist, unlabelled)
    return int(present.max()) if len(present) else -1


def ignored_label(attrs: dict[str, Any]) -> int | None:
    """The label training and validation ignore: the tile set's unlabelled value when its tiles or regions hold
    unlabelled voxels, else None (dense labels train exactly as before sparse labels existed)."""
    unlabelled, counts = attrs.get("unlabelled"), attrs.get("unlabelled_voxels") or {}
    return int(unlabelled) if unlabelled is not None and any(int(n) for n in counts.values()) else None
