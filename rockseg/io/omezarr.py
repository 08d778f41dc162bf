"""OME-Zarr (OME-NGFF 0.5 on Zarr v3) images: what viewers (napari, neuroglancer, any NGFF reader) open.

An output named ``*.ome.zarr`` is a Zarr group holding a multiscale pyramid: array ``"0"`` at full resolution, then
``"1"``, ``"2"``... each taking every second voxel of the one before (nearest neighbour, so labels stay labels),
down to a small size; the group's ``ome`` attribute holds ``multiscales`` (axes with units, a scale per level in
the voxel size) and, for label images, ``image-label`` (phase names and colours, the colours of every rockseg
figure: :func:`rockseg.io.stores.phase_colour`). A plain ``.zarr`` output stays a plain Zarr array.

The API, small on purpose so that writers elsewhere need one or two lines:

- :func:`is_ome_zarr`, :func:`label_array_path` (where the full-resolution array of an output goes),
  :func:`new_array_path` (the same for an output being built under a temporary name);
- :func:`ome_output`: like :func:`rockseg.io.stores.atomic_output`, but for a ``*.ome.zarr`` name it yields the
  path of level 0 inside a temporary group and, once the body has written it, adds the pyramid and the metadata;
- :func:`write_pyramid` (levels 1... from level 0, level by level, chunk by chunk in bounded memory),
  :func:`write_image_metadata`, :func:`write_preview` (a whole OME-Zarr image from any label array);
- reading: :func:`open_ome_level` (an array of a level with its voxel size), :func:`ome_levels`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from rockseg.errors import InputError
from rockseg.io.stores import (
    ATTR_VOXEL_SIZE, ATTR_VOXEL_UNIT, atomic_output, compressors_for, phase_colour, phases_of,
)

OME_SUFFIX = ".ome.zarr"
NGFF_VERSION = "0.5"
# Pyramids stop at the first level whose longest edge is at most this many voxels.
SMALLEST = 64
# Output chunks written at once by a level's threads (bounds memory and the queue of pending work).
_WINDOW_PER_WORKER = 4
_UNITS = {"um": "micrometer", "nm": "nanometer", "mm": "millimeter"}
_FROM_UNITS = {v: k for k, v in _UNITS.items()}


def is_ome_zarr(path: str | os.PathLike[str]) -> bool:
    """True for an output named ``*.ome.zarr`` (written as an OME-Zarr image group)."""
    return os.fspath(path).lower().rstrip("/").endswith(OME_SUFFIX)


def label_array_path(path: str | os.PathLike[str]) -> Path:
    """Where the full-resolution array of output ``path`` lives: ``path/0`` for ``*.ome.zarr``, else ``path``."""
    return Path(path) / "0" if is_ome_zarr(path) else Path(path)


@contextlib.contextmanager
def ome_output(path: str | os.PathLike[str], *, overwrite: bool = False, smallest: int = SMALLEST,
               workers: int = 2, labels: bool = True) -> Iterator[Path]:
    """Build an output under a temporary name and move it into place when complete; yields where to write the array.

    For a plain name this is :func:`atomic_output`. For ``*.ome.zarr`` it yields level 0's path inside a temporary
    group and then writes the pyramid (:func:`write_pyramid`) and the OME metadata from level 0's rockseg attributes
    (voxel size, phases), so the group appears only complete. ``labels``: a label image (``image-label``).
    """
    with atomic_output(path, overwrite=overwrite) as tmp:
        if not is_ome_zarr(path):
            yield tmp
            return
        zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        yield tmp / "0"
        write_pyramid(tmp, smallest=smallest, workers=workers, name=Path(path).name, labels=labels)


def new_array_path(tmp: str | os.PathLike[str], final: str | os.PathLike[str], ndim: int) -> Path:
    """Where to create the array of an output being built at ``tmp`` (to be renamed ``final``): ``tmp`` itself for
    a plain name; for ``*.ome.zarr`` a group is made at ``tmp`` with single-level metadata, and ``tmp/0`` returned
    (:func:`write_pyramid` adds the other levels once the array is complete)."""
    if not is_ome_zarr(final):
        return Path(tmp)
    zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
    write_image_metadata(tmp, ndim=ndim, levels=1, name=Path(final).name)
    return Path(tmp) / "0"


# ------------------------------------------------------------------------------------------------------ writing
def _level_chunks(shape: Sequence[int], chunks: Sequence[int]) -> tuple[int, ...]:
    return tuple(max(1, min(int(c), int(n))) for c, n in zip(chunks, shape))


def _copy_strided(src: zarr.Array, dst: zarr.Array, step: int, workers: int) -> None:
    """``dst[...] = src[::step, ::step, ...]``, one output shard (or chunk) per task, a bounded window of tasks at a
    time: a sharded level is written a whole shard file at once, never two tasks in one file."""
    unit = dst.shards or dst.chunks
    starts = itertools.product(*(range(0, n, c) for n, c in zip(dst.shape, unit)))

    def one(start: tuple[int, ...]) -> None:
        out = tuple(slice(s, min(s + c, n)) for s, c, n in zip(start, unit, dst.shape))
        dst[out] = src[tuple(slice(o.start * step, min(o.stop * step, n), step) for o, n in zip(out, src.shape))]

    window = max(1, workers) * _WINDOW_PER_WORKER
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="rockseg-pyramid") as pool:
        while batch := list(itertools.islice(starts, window)):
            for done in pool.map(one, batch):
                del done


def _new_level(group: zarr.Group, name: str, shape: Sequence[int], like: zarr.Array) -> zarr.Array:
    """A level of ``shape`` chunked (and, when ``like`` is sharded, sharded) as ``like``, both cut to the shape."""
    chunks = _level_chunks(shape, like.chunks)
    shards = None
    if like.shards is not None:  # a shard is a whole number of chunks
        shards = tuple(-(-min(s, n) // c) * c for s, n, c in zip(like.shards, shape, chunks))
    return group.create_array(name, shape=tuple(shape), chunks=chunks, shards=shards, dtype=like.dtype,
                              fill_value=like.fill_value, compressors=compressors_for("blosc-zstd"),
                              dimension_names=list("zyx"[-len(shape):]), overwrite=True)


def _name_dimensions(array_path: Path, ndim: int) -> None:
    """Give an existing Zarr v3 array the dimension names NGFF 0.5 asks for (its metadata file only)."""
    meta_path = array_path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    names = list("zyx"[-ndim:])
    if meta.get("dimension_names") != names:
        meta["dimension_names"] = names
        meta_path.write_text(json.dumps(meta, indent=2))


def write_pyramid(path: str | os.PathLike[str], *, smallest: int = SMALLEST, workers: int = 2,
                  name: str | None = None, labels: bool = True) -> int:
    """Add levels 1, 2... to the OME-Zarr group at ``path`` from its level ``"0"``, then its metadata.

    Each level is built from the level before (every second voxel), one output chunk at a time in ``workers``
    threads, so memory stays a few chunks whatever the volume; no task graph is built. Returns the number of levels,
    level 0 included.
    """
    root = Path(path)
    group = zarr.open_group(store=str(root), mode="r+")
    level0 = zarr.open_array(store=str(root / "0"), mode="r")
    if level0.metadata.zarr_format == 3:
        _name_dimensions(root / "0", level0.ndim)
    previous, levels = level0, 1
    while max(previous.shape) > smallest:
        shape = tuple((n + 1) // 2 for n in previous.shape)
        current = _new_level(group, str(levels), shape, level0)
        _copy_strided(previous, current, 2, workers)
        previous, levels = current, levels + 1
    attrs = dict(level0.attrs)
    voxel = attrs.get(ATTR_VOXEL_SIZE)
    write_image_metadata(root, ndim=level0.ndim, levels=levels,
                         voxel_size=[float(v) for v in voxel] if isinstance(voxel, list) else voxel,
                         voxel_unit=attrs.get(ATTR_VOXEL_UNIT), phases=phases_of(level0),
                         labels=labels, name=name or root.name)
    return levels


def _rgba(label: int) -> list[int]:
    colour = phase_colour(label)
    return [int(colour[i : i + 2], 16) for i in (1, 3, 5)] + [255]


def write_image_metadata(
    path: str | os.PathLike[str], *, ndim: int, levels: int, voxel_size: float | Sequence[float] | None = None,
    voxel_unit: str | None = None, phases: Mapping[int, str] | None = None, labels: bool = True,
    name: str = "image",
) -> dict[str, Any]:
    """Write the NGFF 0.5 ``ome`` attribute of the group at ``path``, whose arrays ``"0"``... are its levels.

    Level ``k``'s scale is ``voxel_size * 2**k`` (1 per voxel when the size is unknown), with the axes' unit when
    ``voxel_unit`` is known. ``labels`` adds ``image-label``: a colour for each phase (or labels 0-7 when the phases
    are not named) and the phase names. Returns the attribute written.
    """
    if voxel_size is None:
        base = [1.0] * ndim
    else:
        base = [float(voxel_size)] * ndim if np.isscalar(voxel_size) else [float(v) for v in voxel_size]
    unit = _UNITS.get(str(voxel_unit)) if voxel_size is not None and voxel_unit else None
    axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in "zyx"[-ndim:]]
    datasets = [{"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [v * 2**k for v in base]}]}
                for k in range(levels)]
    ome: dict[str, Any] = {"version": NGFF_VERSION,
                           "multiscales": [{"name": name, "axes": axes, "datasets": datasets}]}
    if labels:
        values = sorted(phases) if phases else list(range(8))
        ome["image-label"] = {"colors": [{"label-value": v, "rgba": _rgba(v)} for v in values]}
        if phases:
            ome["image-label"]["properties"] = [{"label-value": v, "name": n} for v, n in sorted(phases.items())]
    group = zarr.open_group(store=str(path), mode="r+")
    group.attrs["ome"] = ome
    return ome


def write_preview(labels: zarr.Array, path: str | os.PathLike[str], *, smallest: int = SMALLEST,
                  overwrite: bool = False, workers: int = 2) -> int:
    """Write ``labels`` as a whole OME-Zarr image at ``path`` (level 0 copied chunk by chunk, then the pyramid).

    Returns the number of levels, level 0 included.
    """
    with atomic_output(path, overwrite=overwrite) as tmp:
        group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        level0 = _new_level(group, "0", labels.shape, labels)
        level0.attrs.update(dict(labels.attrs))
        _copy_strided(labels, level0, 1, workers)
        return write_pyramid(tmp, smallest=smallest, workers=workers, name=Path(path).name)


# ------------------------------------------------------------------------------------------------------ reading
def ome_levels(path: str | os.PathLike[str]) -> list[dict[str, Any]] | None:
    """The ``datasets`` of the first multiscale of the OME-Zarr group at ``path`` (NGFF 0.4 or 0.5), else None."""
    try:
        group = zarr.open_group(store=str(path), mode="r")
    except Exception:  # zarr raises several types for "not a group"
        return None
    attrs = dict(group.attrs)
    ome = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
    if not multiscales or not isinstance(multiscales, list) or not multiscales[0].get("datasets"):
        return None
    return [dict(d, axes=multiscales[0].get("axes", [])) for d in multiscales[0]["datasets"]]


def open_ome_level(path: str | os.PathLike[str], level: int = 0) -> tuple[zarr.Array, tuple[float, ...] | None,
                                                                            str | None]:
    """The array of level ``level`` of the OME-Zarr image at ``path``, its voxel size and unit (``"um"``...).

    Raises
    ------
    InputError
        when ``path`` is not an OME-Zarr image or has no such level.
    """
    levels = ome_levels(path)
    if levels is None:
        raise InputError(f"{path} is not an OME-Zarr image (no multiscales metadata): give a Zarr array or an "
                         f"OME-Zarr image group")
    if not 0 <= level < len(levels):
        raise InputError(f"--level {level} does not exist in {path}: it has levels 0 to {len(levels) - 1}")
    found = levels[level]
    array = zarr.open_array(store=str(Path(path) / found["path"]), mode="r")
    scale = next((t.get("scale") for t in found.get("coordinateTransformations", []) if t.get("type") == "scale"),
                 None)
    axes = found.get("axes", [])
    units = {a.get("unit") for a in axes if a.get("type") == "space"}
    spatial = [i for i, a in enumerate(axes) if a.get("type") == "space"] or list(range(array.ndim))
    if scale is None or len(units) != 1 or array.ndim != len(spatial):
        return array, None, None
    size = tuple(float(scale[i]) for i in spatial)
    unit = _FROM_UNITS.get(next(iter(units)) or "")
    return array, size, unit
