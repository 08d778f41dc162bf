"""Writing a source to a new Zarr v3 array store: :func:`write_zarr`, the writer behind ``rockseg convert`` to
``.zarr`` (optionally with the sharding codec, so a terabyte volume is not millions of files).

The source is read in slabs one chunk (or shard) deep, in bands of whole chunk (shard) rows when a slab would be
too big (:mod:`rockseg.io.streaming`); the next slab is read while the chunks of the current one are cut, counted
into the intensity statistics, compressed and written by a pool of threads, one per core
(:func:`_write_chunk_files` with :class:`rockseg.io.chunk_encoder._ChunkFiles`), or by zarr itself for codec chains
that encoder does not know (:func:`_write_with_zarr`). The store is built under a temporary name and renamed into
place when complete, with its attributes (:func:`_zarr_attributes`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from rockseg.devices import available_cpus
from rockseg.errors import InputError
from rockseg.io.chunk_encoder import _ChunkFiles
from rockseg.io.intensity import IntensityAccumulator
from rockseg.io.options import _check_chunks, _check_shards
from rockseg.io.sources import RegionSource, Source, _as_source
from rockseg.io.omezarr import label_array_path, ome_output
from rockseg.io.stores import (
    ATTR_DTYPE,
    ATTR_EVERY_CHUNK,
    ATTR_INTENSITY,
    ATTR_PHASES,
    ATTR_PROVENANCE,
    ATTR_REGION,
    ATTR_SOURCE,
    ATTR_VOXEL_SIZE,
    ATTR_VOXEL_UNIT,
    check_new_output,
    compressors_for,
    provenance,
)
from rockseg.io.streaming import _bands, _prefetch, _progress_bar, _writing

# A Zarr output is written in slabs of whole planes, one chunk (or shard) deep, while such a slab is at most this
# big. A deeper or wider slab is read and written in bands of whole chunk (shard) rows instead, from sources that
# read part of a plane for less than the whole plane, so memory stays bounded for planes of any size.
_SLAB_BYTES = 128 << 20

# Threads that cut, count, compress and write the chunks of a Zarr output: the compressors, the copies and the file
# writes release the GIL, so one thread per core keeps every core busy.
_WRITE_THREADS = max(1, min(16, available_cpus()))


def write_zarr(
    source: Source | Any,
    dest: str | os.PathLike[str],
    *,
    chunks: Sequence[int] | str | None = None,
    shards: Sequence[int] | str | None = None,
    compressor: str = "blosc-zstd",
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool | Callable[[str], None] = False,
) -> zarr.Array:
    """Write a source (or any array) to a new Zarr v3 array store, slab by slab, with its attributes.

    Parameters
    ----------
    source : a :class:`Source`, or a NumPy / Zarr array of shape (Z, Y, X) or (Y, X).
    dest : the store to create (a directory, normally ``*.zarr``); a ``*.ome.zarr`` name makes an OME-Zarr image
        (this array as its level 0, then a pyramid: :mod:`rockseg.io.omezarr`).
    chunks : chunk shape, one length per axis; default (64, 64, 64) for 3D and (512, 512) for 2D, clipped to the
        shape. Slabs of ``chunks[0]`` planes are read and written, in bands of whole chunk rows when a slab is over
        128 MB and the source can read part of a plane (raw, uncompressed TIFF, NumPy, Zarr, netCDF), so memory
        stays a few hundred MB whatever the plane size. Sources that decode whole planes (compressed TIFF, slice
        files) need ``chunks[0]`` whole planes in memory: use a shallower chunk for very wide planes.
    shards : shard shape (the zarr sharding codec), a whole number of chunks per axis, e.g. (64, 1024, 1024):
        each shard is one file holding many chunks, so a large volume is not millions of small files. Slabs are then
        ``shards[0]`` planes deep and bands are whole shard rows, so every shard is written exactly once; memory is
        about one shard row (``shards[0]`` x ``shards[1]`` x X voxels) or two.
    compressor : one of :data:`rockseg.io.stores.COMPRESSORS`.
    attrs : extra attributes, written last (they win over the computed ones).
    overwrite : replace an existing ``dest`` (only once the new store is complete).
    progress : show a progress bar on stderr (True), or log a line per 5 % with an ETA through this callable.

    Returns
    -------
    zarr.Array
        the finished store, opened for reading and writing.

    Raises
    ------
    OutputWriteError
        when writing fails (a full disk...); the partial store is removed.

    Notes
    -----
    Attributes written: ``voxel_size`` and ``voxel_unit`` (when known), ``source``, ``dtype``, ``intensity``
    (computed in the same pass), ``source_region`` (for a region of a source), ``rockseg`` provenance; ``phases``
    of a label source, and a Zarr source's other attributes, are kept.

    The next slab is read in one thread while the chunks of the current one are cut, counted into the statistics,
    compressed and written as files by a pool of threads, one per core (:class:`_ChunkFiles`); with shards, one more
    thread writes the shard files of a slab while the next slab is compressed.
    """
    source = _as_source(source)
    chunks = _check_chunks(chunks, source.shape)
    shards = _check_shards(shards, chunks, source.shape)
    codecs = compressors_for(compressor)
    dest = Path(dest)
    check_new_output(dest, overwrite=overwrite)
    acc = IntensityAccumulator(source.dtype, total=int(np.prod(source.shape, dtype=np.int64)))
    dims = ("z", "y", "x")[-source.ndim :]
    slab, band, nbytes = _reads(source, shards or chunks)
    labels = ATTR_PHASES in (attrs or {}) or ATTR_PHASES in source.attrs
    with _writing(dest), ome_output(dest, overwrite=overwrite, labels=labels) as tmp:
        # Every chunk is written, even one that holds only zeros: zarr's test for such chunks (a comparison with a
        # freshly filled array, per chunk) costs as much as compressing it, and a compressed empty chunk is tiny.
        array = zarr.create_array(store=str(tmp), shape=source.shape, chunks=chunks, shards=shards,
                                  dtype=source.dtype, compressors=codecs, fill_value=0, dimension_names=dims,
                                  zarr_format=3, config={"write_empty_chunks": True})
        files = _ChunkFiles.of(array, tmp)
        blocks = _prefetch(_bands(source, slab, band), nbytes)
        with _progress_bar(f"convert {dest.name}", source.nbytes, progress) as advance:
            if files is not None:
                _write_chunk_files(source, blocks, files, acc, advance)
            else:
                _write_with_zarr(source, blocks, array, acc, advance)
        array.attrs.update(_zarr_attributes(source, acc.result(), attrs))
    return zarr.open_array(store=str(label_array_path(dest)), mode="r+")


def _reads(source: Source, grid: tuple[int, ...]) -> tuple[int, int, int | None]:
    """How ``source`` is read for an output of chunks (or shards) ``grid``: planes per slab, rows per band, and the
    bytes of a block when there are several (for :func:`rockseg.io.streaming._prefetch`), else None."""
    slab = grid[0]
    if source.ndim != 3:
        return slab, source.shape[0], None
    band = _band_rows(source, slab, grid[1])
    several = band < source.shape[1] or slab < source.shape[0]
    return slab, band, slab * band * source.shape[2] * source.dtype.itemsize if several else None


def _band_rows(source: Source, slab: int, unit: int) -> int:
    """Rows per read for a Zarr output: whole planes when a slab fits ``_SLAB_BYTES`` or the source reads whole
    planes anyway; else the most whole ``unit`` rows (a chunk or shard row) that fit, at least one unit."""
    rows = source.shape[1]
    row_bytes = slab * source.shape[2] * source.dtype.itemsize
    if not source.band_reads or rows * row_bytes <= _SLAB_BYTES:
        return rows
    return min(rows, max(unit, _SLAB_BYTES // row_bytes // unit * unit))


def _zarr_attributes(source: Source, stats: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    # A Zarr source keeps its metadata (phases, ...) through a rechunk; what this pass measures replaces the rest.
    keep_all = source.kind in ("zarr", "array")
    attrs: dict[str, Any] = dict(source.attrs) if keep_all else {}
    if not keep_all and ATTR_PHASES in source.attrs:
        attrs[ATTR_PHASES] = source.attrs[ATTR_PHASES]
    for key in (ATTR_VOXEL_SIZE, ATTR_VOXEL_UNIT, ATTR_REGION, "colormap"):
        attrs.pop(key, None)
    if source.voxel_size is not None:
        attrs[ATTR_VOXEL_SIZE] = list(source.voxel_size)
        if source.voxel_unit:
            attrs[ATTR_VOXEL_UNIT] = source.voxel_unit
    if isinstance(source, RegionSource):
        attrs[ATTR_REGION] = source.attrs[ATTR_REGION]
    origin_keys = ("variable", "byte_order", "header_bytes", "header", "slices", "colormap", ATTR_REGION)
    origin = {k: v for k, v in source.attrs.items() if k in origin_keys}
    attrs.update({
        ATTR_SOURCE: source.path,
        ATTR_DTYPE: source.dtype.name,
        ATTR_INTENSITY: stats,
        ATTR_PROVENANCE: provenance(source_format=source.kind, **origin),
        ATTR_EVERY_CHUNK: True,  # convert writes every chunk (see write_zarr): predict can tell a lost one
    })
    attrs.update(extra or {})
    return attrs


def _update_stats(acc: IntensityAccumulator, block: np.ndarray, source: Source) -> None:
    try:
        acc.update(block)
    except InputError as exc:
        raise InputError(f"{source.path}: {exc}") from None


def _write_with_zarr(source: Source, blocks: Iterator[tuple[int, int, int, int, np.ndarray]], array: zarr.Array,
                     acc: IntensityAccumulator, advance: Callable[[int], None]) -> None:
    """Write ``blocks`` with ``array[region] = block`` (zarr compresses in its own threads) while this thread
    computes the statistics of the same block."""
    with ThreadPoolExecutor(1, thread_name_prefix="rockseg-write") as writer:
        for z0, z1, y0, y1, block in blocks:
            where = (slice(z0, z1), slice(y0, y1)) if source.ndim == 3 else Ellipsis
            written = writer.submit(array.__setitem__, where, block)
            _update_stats(acc, block, source)
            written.result()
            advance(block.nbytes)


def _write_chunk_files(source: Source, blocks: Iterator[tuple[int, int, int, int, np.ndarray]], files: _ChunkFiles,
                       acc: IntensityAccumulator, advance: Callable[[int], None]) -> None:
    """Write ``blocks`` chunk by chunk in ``_WRITE_THREADS`` threads.

    Each thread copies one chunk out of the block, adds it to the histogram (8/16-bit data: the counts do not
    depend on the order), encodes it and writes its file (or, with shards, hands the bytes to the one thread that
    writes the shard files). Float and 32/64-bit statistics depend on the order of the voxels (their percentiles
    come from a regular subsample), so this thread computes them, block by block, while the pool works.

    One block is encoded at a time while the next is read; with shards the files of a block are written while the
    next one is encoded. Memory: about two blocks, three with shards.
    """
    pool = ThreadPoolExecutor(_WRITE_THREADS, thread_name_prefix="rockseg-chunk")
    writer = ThreadPoolExecutor(1, thread_name_prefix="rockseg-shard")
    writing: list[Any] = []
    try:
        for z0, _z1, y0, _y1, block in blocks:
            origin = (z0, y0, 0) if source.ndim == 3 else (0, 0)
            encoded, written = files.submit(pool, writer, block, origin, acc if acc.exact else None)
            if not acc.exact:
                _update_stats(acc, block, source)
            for future in encoded:
                future.result()
            for future in writing:  # the shard files of the block before
                future.result()
            writing = written
            advance(block.nbytes)
        for future in writing:
            future.result()
    finally:
        # a failure (full disk, bad data) cancels the chunks not yet started and waits for the running ones, so no
        # thread writes into the partial store once the caller removes it
        pool.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)
