"""Opening a volume file: :func:`open_source` picks the reader by the kind of path (file extension, folder, glob or
Zarr store).

==========================  ======================================================================================
``.tif`` / ``.tiff``        a multi-page TIFF (one plane per page; also BigTIFF and ImageJ stacks) or a 2D image
folder or glob              2D TIFF slices (``scan/`` or ``'scan/*.tif'``; a folder with no TIFF: its PNG slices),
                            stacked in natural order (slice2 < slice10)
``.png``                    one 2D image
``.npy``                    a NumPy array file
``.raw`` / ``.bin`` /       binary data: ``shape``, ``dtype``, ``byte_order`` and ``header_bytes`` given, or read
``.vol``                    from a MetaImage ``.mhd``, NRRD ``.nhdr`` or PyHST ``.vol.info`` header beside it
``.mhd`` / ``.mha``         a MetaImage header and its raw data
``.nhdr`` / ``.nrrd``       an NRRD header and its raw data (detached, or attached after the header)
``.nc``                     netCDF3 or netCDF4 (the single 3D variable, or the one named by ``variable``)
``.h5`` / ``.hdf5`` /       HDF5 or NeXus (the single 3D dataset, or the one named by ``dataset``)
``.nxs``
``.zarr``                   a Zarr array store, v2 or v3, or an OME-Zarr image (level 0, or ``level``, with its
                            voxel size from the multiscales metadata)
==========================  ======================================================================================

Options that only raw files (or netCDF) use are refused for the other kinds rather than silently ignored.
"""

from __future__ import annotations

import glob as globmod
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rockseg.errors import InputError, MissingInputError
from rockseg.io.colour import ColourMap, ColourSource, parse_colormap
from rockseg.io.hdf5 import HDF5_EXTENSIONS, Hdf5Source
from rockseg.io.netcdf import NETCDF_EXTENSIONS, NetcdfSource
from rockseg.io.npy import _open_npy
from rockseg.io.omezarr import ome_levels, open_ome_level
from rockseg.io.options import _parse_byte_order
from rockseg.io.raw import (
    METAIMAGE_EXTENSIONS,
    NRRD_EXTENSIONS,
    RAW_EXTENSIONS,
    RawSource,
    _header_beside,
    _read_metaimage,
    _read_nrrd,
)
from rockseg.io.sources import Source, _array_source
from rockseg.io.stores import open_volume
from rockseg.io.tiff import (
    PNG_EXTENSIONS,
    TIFF_EXTENSIONS,
    ImageSource,
    SliceStackSource,
    TiffSource,
    _natural_key,
    _stack_files,
)

SOURCE_EXTENSIONS = (*TIFF_EXTENSIONS, *PNG_EXTENSIONS, *NETCDF_EXTENSIONS, *RAW_EXTENSIONS, *METAIMAGE_EXTENSIONS,
                     *NRRD_EXTENSIONS, *HDF5_EXTENSIONS, ".npy", ".zarr")


def open_source(
    path: str | os.PathLike[str],
    *,
    shape: str | Sequence[int] | None = None,
    dtype: Any = None,
    byte_order: str = "little",
    header_bytes: int = 0,
    variable: str | None = None,
    colormap: str | ColourMap | Mapping[Any, Any] | None = None,
    dataset: str | None = None,
    level: int | None = None,
) -> Source:
    """Open a volume file for slab-wise reading, choosing the reader by extension.

    Parameters
    ----------
    path : a ``.tif``/``.tiff`` file, a folder of 2D TIFF (or PNG) slices, a glob such as ``"scan/*.tif"``, a
        ``.png``, ``.npy``, ``.raw``/``.bin``/``.vol``, ``.mhd``/``.mha``, ``.nhdr``/``.nrrd``, ``.nc`` file, or a
        Zarr array store (v2 or v3).
    shape : (Z, Y, X) or ``"Z,Y,X"``, only for raw files. Without ``shape`` and ``dtype``, a raw file is described
        by a header beside it: ``NAME.mhd`` or ``NAME.raw.mhd`` (MetaImage), ``NAME.nhdr`` (NRRD) or
        ``NAME.vol.info`` (PyHST), when that header names this data file.
    dtype : voxel type name (``"uint16"``...), only for raw files.
    byte_order : ``"little"`` or ``"big"``, only for raw files.
    header_bytes : bytes to skip before the data, only for raw files.
    variable : the netCDF variable to read (default: the only 3D one).
    dataset : the HDF5 dataset to read, e.g. ``/exchange/data`` (default: the only 3D one).
    level : the level of an OME-Zarr image to read (default 0, full resolution).
    colormap : read a colour-coded (or grey-coded) label image as integer labels (see :func:`parse_colormap`).

    Raises
    ------
    MissingInputError
        if the path does not exist or a glob matches nothing.
    InputError
        for an unknown format, a file that is not what its extension says, or options that do not fit.
    """
    cmap = parse_colormap(colormap) if colormap is not None else None
    source = _open(path, shape=shape, dtype=dtype, byte_order=byte_order, header_bytes=header_bytes,
                   variable=variable, colours=cmap is not None, dataset=dataset,
                   level=level)
    if cmap is None:
        return source
    try:
        return ColourSource(source, cmap)
    except BaseException:
        source.close()
        raise


def _open(path: str | os.PathLike[str], *, shape: Any, dtype: Any, byte_order: str, header_bytes: int,
          variable: str | None, colours: bool, dataset: str | None = None,
          level: int | None = None) -> Source:
    text = os.fspath(path)
    if dataset is not None and Path(text).suffix.lower() not in HDF5_EXTENSIONS:
        raise InputError(f"--dataset is for HDF5 sources ({', '.join(HDF5_EXTENSIONS)}), not {text}: leave it out")
    p = Path(text)
    if not p.exists() and _is_glob(text):
        files = sorted((f for f in globmod.glob(text) if os.path.isfile(f)), key=_natural_key)
        if not files:
            raise MissingInputError(f"no file matches {text}: check the pattern (quote it so the shell leaves it)")
        _refuse_raw_options(text, "a glob of slices", shape, dtype, byte_order, header_bytes, variable)
        return SliceStackSource(os.path.abspath(text), files, colours=colours)
    if not p.exists():
        raise MissingInputError(f"source {p} does not exist: check the path")
    p = p.absolute()
    ext = p.suffix.lower()
    if p.is_dir():
        if ext == ".zarr" or any((p / m).exists() for m in ("zarr.json", ".zarray", ".zgroup")):
            _refuse_raw_options(p, "a Zarr store", shape, dtype, byte_order, header_bytes, variable)
            if ome_levels(p) is not None:
                return _ome_source(p, level or 0)
            if level is not None:
                raise InputError(f"--level is for OME-Zarr images, but {p} is a plain Zarr array: leave it out")
            return _array_source(open_volume(p, name="source"), path=str(p), kind="zarr")
        _refuse_raw_options(p, "a folder of slices", shape, dtype, byte_order, header_bytes, variable)
        files = _stack_files(p)
        if not files:
            raise InputError(
                f"folder {p} holds no .tif/.tiff slice files: give a folder of 2D TIFF (or PNG) slices, a glob such "
                f"as '{p}/*.tif', or a volume file"
            )
        return SliceStackSource(str(p), files, colours=colours)
    if ext in RAW_EXTENSIONS:
        if variable is not None:
            raise InputError(f"--variable is for netCDF sources, but {p} is a raw file: leave it out")
        if shape is None and dtype is None and not header_bytes and _parse_byte_order(byte_order) == "<":
            described = _header_beside(p)
            if described is not None:
                return described
        return RawSource(p, shape=shape, dtype=dtype, byte_order=byte_order, header_bytes=header_bytes)
    if ext in TIFF_EXTENSIONS:
        _refuse_raw_options(p, "a TIFF file", shape, dtype, byte_order, header_bytes, variable)
        return TiffSource(p, colours=colours)
    if ext in PNG_EXTENSIONS:
        _refuse_raw_options(p, "a PNG image", shape, dtype, byte_order, header_bytes, variable)
        return ImageSource(p, colours=colours)
    if ext == ".npy":
        _refuse_raw_options(p, "a NumPy file", shape, dtype, byte_order, header_bytes, variable)
        return _open_npy(p)
    if ext in HDF5_EXTENSIONS:
        _refuse_raw_options(p, "an HDF5 file", shape, dtype, byte_order, header_bytes, variable)
        return Hdf5Source(p, dataset)
    if ext in NETCDF_EXTENSIONS:
        _refuse_raw_options(p, "a netCDF file", shape, dtype, byte_order, header_bytes, None)
        return NetcdfSource(p, variable)
    if ext in METAIMAGE_EXTENSIONS:
        _refuse_raw_options(p, "a MetaImage file", shape, dtype, byte_order, header_bytes, variable)
        return _read_metaimage(p)
    if ext in NRRD_EXTENSIONS:
        _refuse_raw_options(p, "an NRRD file", shape, dtype, byte_order, header_bytes, variable)
        return _read_nrrd(p)
    raise InputError(
        f"source {p} has an extension ({ext or 'none'}) rockseg cannot read: give one of "
        f"{', '.join(SOURCE_EXTENSIONS)}, a folder of TIFF slices or a glob such as 'scan/*.tif'"
    )


def _ome_source(path: Path, level: int) -> Source:
    """Level ``level`` of an OME-Zarr image, with the voxel size of its multiscales metadata."""
    array, size, unit = open_ome_level(path, level)
    source = _array_source(array, path=str(path), kind="ome-zarr")
    if size is not None:
        source.voxel_size, source.voxel_unit = size, unit
    if level:
        source.attrs["ome_level"] = level
    return source


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _refuse_raw_options(path: Any, what: str, shape: Any, dtype: Any, byte_order: str, header_bytes: int,
                        variable: str | None) -> None:
    """Options that only raw (or netCDF) files use are refused elsewhere rather than silently ignored."""
    given = [name for name, bad in (("--shape", shape is not None), ("--dtype", dtype is not None),
                                    ("--byte-order", str(byte_order).lower() not in ("little", "<")),
                                    ("--header-bytes", bool(header_bytes)), ("--variable", variable is not None))
             if bad]
    if given:
        raise InputError(
            f"{path} is {what}, which records its own layout: leave out {' and '.join(given)} (options for raw "
            f".raw/.bin/.vol files, and --variable for netCDF)"
        )
