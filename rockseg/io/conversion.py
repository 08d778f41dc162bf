"""``rockseg convert``: a volume file to a Zarr store, or to another format, in three steps that can be read and
tested alone.

1. check (:func:`_check`): every option that can be checked without the data (output kind, compressor, colour map,
   phase names, plane range, chunk and shard options, an existing output), so a bad one stops the command before
   anything is read or created;
2. plan (:func:`_select`): the source opened (:func:`rockseg.io.opening.open_source`), with the voxel size given on
   the command line and the region to keep (:func:`rockseg.io.sources.select_region`);
3. run (:func:`_write`, :func:`_summary`): the Zarr writer or the export, then the summary the CLI prints.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rockseg.errors import InputError
from rockseg.io.colour import ColourMap, parse_colormap
from rockseg.io.exporters import _check_export_outputs, _dest_kind, _export_source
from rockseg.io.opening import open_source
from rockseg.io.options import _check_chunks, _check_phases, _check_voxel_size, parse_shape, parse_slices
from rockseg.io.sources import RegionSource, Source, select_region
from rockseg.io.stores import ATTR_PHASES, ATTR_REGION, check_new_output, compressors_for
from rockseg.io.zarr_writer import write_zarr


def convert(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    shape: str | Sequence[int] | None = None,
    dtype: Any = None,
    byte_order: str = "little",
    header_bytes: int = 0,
    variable: str | None = None,
    dataset: str | None = None,
    level: int | None = None,
    colormap: str | ColourMap | Mapping[Any, Any] | None = None,
    phases: str | Mapping[Any, Any] | None = None,
    crop: str | Sequence[slice] | None = None,
    slices: str | slice | None = None,
    chunks: Sequence[int] | str | None = None,
    shards: Sequence[int] | str | None = None,
    compressor: str = "blosc-zstd",
    voxel_size: float | Sequence[float] | None = None,
    overwrite: bool = False,
    progress: bool | Callable[[str], None] = False,
) -> dict[str, Any]:
    """Convert a volume file to a Zarr store, or export it to another format (``rockseg convert SRC DEST``).

    Parameters
    ----------
    src : see :func:`open_source` (the raw options ``shape``, ``dtype``, ``byte_order``, ``header_bytes``, the
        netCDF ``variable``, the HDF5 ``dataset``, the OME-Zarr ``level`` and ``colormap`` are passed to it).
    dest : a ``.zarr`` store, or ``.tif``, ``.nc``, ``.h5``, ``.raw`` (+ ``.mhd``), ``.npy`` (see :func:`export`).
    colormap : map the colours (or grey values) of a colour-coded label image to integer labels, with optional
        phase names: ``"0,0,255=0:pore;0,255,0=1:clay"`` (see :func:`parse_colormap`).
    phases : phase names written into a ``.zarr`` output, ``"0=pore,1=clay"`` or ``{0: "pore"}``; they win over
        names given in ``colormap``.
    crop : keep only the region ``"Z0:Z1,Y0:Y1,X0:X1"`` (see :func:`select_region`).
    slices : keep only the planes ``"START:STOP[:STEP]"`` along Z (the Z voxel size is multiplied by the step).
    chunks : Zarr chunk shape (``.zarr`` only); default (64, 64, 64) clipped to the shape.
    shards : Zarr shard shape (``.zarr`` only), a multiple of ``chunks`` (see :func:`write_zarr`).
    compressor : Zarr compressor, one of :data:`rockseg.io.stores.COMPRESSORS`.
    voxel_size : micrometres, one value or one per axis, of the source's voxels; default: what the source records.
    overwrite : replace an existing ``dest``.
    progress : show a progress bar on stderr (True), or log a line per 5 % with an ETA through this callable.

    Returns
    -------
    dict
        ``dest``, ``source``, ``format`` (of the source), ``shape``, ``dtype``, ``bytes``, ``voxels``, ``seconds`` and
        ``MB/s`` (source megabytes per second; also under ``mb_per_s``); ``region`` (start, stop, step per axis)
        when a region was taken, and ``phases`` when names were given.

    Raises
    ------
    InputError, MissingInputError, OutputExistsError
        bad options or input, found before any output is created where the data need not be read (a colour missing
        from ``colormap`` or a NaN is found while reading, and the partial output is then removed).
    OutputWriteError
        when writing fails (a full disk...); the partial output is removed.
    """
    start = time.perf_counter()
    plan = _check(dest, colormap=colormap, phases=phases, slices=slices, chunks=chunks, shards=shards,
                  compressor=compressor, overwrite=overwrite, progress=progress)
    with open_source(src, shape=shape, dtype=dtype, byte_order=byte_order, header_bytes=header_bytes,
                     variable=variable, dataset=dataset, level=level, colormap=plan.colormap) as opened:
        source = _select(opened, voxel_size=voxel_size, crop=crop, slices=slices)
        _write(source, plan)
        return _summary(source, plan, time.perf_counter() - start)


@dataclass(frozen=True)
class _Plan:
    """The checked output options of a conversion, known before the source is opened."""

    dest: Path
    kind: str  # the output format: "zarr", "tiff", "netcdf", "hdf5", "raw" or "npy"
    colormap: ColourMap | None
    phases: dict[int, str]  # names from the colour map, then --phases (which win)
    chunks: Sequence[int] | str | None
    shards: Sequence[int] | str | None
    compressor: str
    overwrite: bool
    progress: bool | Callable[[str], None]

    @property
    def phase_attr(self) -> dict[str, str]:
        """The phase names as the ``phases`` attribute stores them (string keys, in label order)."""
        return {str(k): v for k, v in sorted(self.phases.items())}


def _check(dest: str | os.PathLike[str], *, colormap: str | ColourMap | Mapping[Any, Any] | None,
           phases: str | Mapping[Any, Any] | None, slices: str | slice | None, chunks: Sequence[int] | str | None,
           shards: Sequence[int] | str | None, compressor: str, overwrite: bool,
           progress: bool | Callable[[str], None]) -> _Plan:
    """Check every option that needs no data, so a bad one fails before anything is read or created."""
    dest = Path(dest)
    kind = _dest_kind(dest)
    compressors_for(compressor)  # a misspelt compressor fails before anything is read
    cmap = parse_colormap(colormap) if colormap is not None else None
    names = _check_phases(phases)
    if slices is not None:
        parse_slices(slices)
    if kind != "zarr" and (chunks is not None or shards is not None):
        given = "--chunks" if chunks is not None else "--shards"
        raise InputError(f"{given} applies to .zarr outputs only, not to {dest}: leave it out")
    if shards is not None:
        parse_shape(shards, name="--shards")
    if kind == "zarr":
        check_new_output(dest, overwrite=overwrite)
    else:
        _check_export_outputs(dest, kind, overwrite)
    phase_names = {**(cmap.names if cmap is not None else {}), **names}
    return _Plan(dest, kind, cmap, phase_names, chunks, shards, compressor, overwrite, progress)


def _select(opened: Source, *, voxel_size: float | Sequence[float] | None, crop: str | Sequence[slice] | None,
            slices: str | slice | None) -> Source:
    """The part of the opened source to convert, with the voxel size given as an option."""
    override = _check_voxel_size(voxel_size, opened.ndim)
    if override is not None:  # the source's voxels: a region with a Z step scales it
        opened.voxel_size, opened.voxel_unit = override, "um"
    return select_region(opened, crop=crop, slices=slices)


def _write(source: Source, plan: _Plan) -> None:
    """Write ``source`` to the Zarr store or the export ``plan`` describes."""
    if plan.kind == "zarr":
        extra = {ATTR_PHASES: plan.phase_attr} if plan.phases else None
        write_zarr(source, plan.dest, chunks=_check_chunks(plan.chunks, source.shape), shards=plan.shards,
                   compressor=plan.compressor, attrs=extra, overwrite=plan.overwrite, progress=plan.progress)
    else:
        _export_source(source, plan.dest, plan.kind, overwrite=plan.overwrite, progress=plan.progress)


def _summary(source: Source, plan: _Plan, seconds: float) -> dict[str, Any]:
    """What :func:`convert` returns (see there), for ``source`` written in ``seconds``."""
    rate = float(f"{source.nbytes / 1e6 / max(seconds, 1e-9):.3g}")
    summary = {
        "dest": str(plan.dest),
        "source": source.path,
        "format": source.kind,
        "shape": list(source.shape),
        "dtype": source.dtype.name,
        "bytes": source.nbytes,
        "voxels": int(math.prod(source.shape)),
        "seconds": round(seconds, 3),
        "MB/s": rate,
        "mb_per_s": rate,
    }
    if isinstance(source, RegionSource):
        summary["region"] = source.attrs[ATTR_REGION]
    if plan.phases:
        summary["phases"] = plan.phase_attr
    return summary
