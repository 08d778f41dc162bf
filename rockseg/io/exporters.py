"""Exports of a volume to the files other tools read: :func:`export` picks the writer by the extension of the output
(``.tif`` (ImageJ-compatible, BigTIFF above 4 GB), ``.nc`` (netCDF4), ``.raw`` with a MetaImage ``.mhd``
header beside it, ``.npy``, ``.h5`` (:func:`rockseg.io.hdf5.write_hdf5`); ``.zarr`` goes to
:func:`rockseg.io.zarr_writer.write_zarr`).

Every writer streams the source slab by slab (:mod:`rockseg.io.streaming`) into a file built under a temporary name
and renamed into place when complete (:func:`rockseg.io.stores.atomic_output`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rockseg.errors import InputError
from rockseg.io.hdf5 import HDF5_EXTENSIONS, write_hdf5
from rockseg.io.options import _check_voxel_size
from rockseg.io.raw import _MET_TYPES
from rockseg.io.sources import Source, _as_source
from rockseg.io.stores import ATTR_VOXEL_SIZE, ATTR_VOXEL_UNIT, atomic_output, check_new_output
from rockseg.io.streaming import _progress_bar, _stream, _stream_into, _writing
from rockseg.io.tiff import TIFF_EXTENSIONS
from rockseg.io.zarr_writer import write_zarr

DEST_EXTENSIONS = (".zarr", *TIFF_EXTENSIONS, ".nc", *HDF5_EXTENSIONS[:2], ".raw", ".bin", ".npy")

# Exports read about this many bytes per slab from sources with no chunking of their own.
_EXPORT_SLAB_BYTES = 64 << 20

# Leave room for the tags and offsets of every page before the 4 GiB limit of classic TIFF.
_BIGTIFF_THRESHOLD = (1 << 32) - (1 << 25)


def export(
    array: Any,
    dest: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool | Callable[[str], None] = False,
    voxel_size: float | Sequence[float] | None = None,
) -> Path:
    """Export a volume to a file chosen by the extension of ``dest``, streaming slab by slab.

    Parameters
    ----------
    array : a Zarr array, a NumPy array or a :class:`Source`, shape (Z, Y, X) or (Y, X). Its ``voxel_size``
        attribute (micrometres) is written where the format can hold one.
    dest : ``.tif``/``.tiff`` (ImageJ-compatible for uint8/uint16/float32, BigTIFF above 4 GB), ``.nc``
        (netCDF4, variable ``volume`` with dimensions z, y, x and attributes ``voxel_size`` (Z, Y, X),
        ``voxel_size_xyz`` and ``voxel_unit``), ``.raw``/``.bin`` (little-endian, C order, with a MetaImage
        ``.mhd`` header beside it), ``.npy``, ``.h5``/``.hdf5`` (dataset ``/volume`` with ``voxel_size`` and
        ``voxel_unit`` attributes), or ``.zarr`` (see :func:`write_zarr`).
    overwrite : replace an existing ``dest`` (only once the new file is complete).
    progress : show a progress bar on stderr (True), or log a line per 5 % with an ETA through this callable.
    voxel_size : micrometres, one value or one per axis; overrides the array's attribute.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    OutputWriteError
        when writing fails (a full disk...); the partial file is removed.

    Notes
    -----
    Boolean volumes are written as uint8. netCDF stores float16 as float32 and MetaImage has no float16 either.
    netCDF4-python masks values equal to the netCDF default fill value (65535 for uint16...) unless the reader
    calls ``set_auto_mask(False)``; rockseg's own reader always does.
    """
    dest = Path(dest)
    kind = _dest_kind(dest)
    source = _as_source(array)
    override = _check_voxel_size(voxel_size, source.ndim)
    if override is not None:
        source = copy.copy(source)
        source.voxel_size, source.voxel_unit = override, "um"
    if kind == "zarr":
        write_zarr(source, dest, overwrite=overwrite, progress=progress)
        return dest
    _check_export_outputs(dest, kind, overwrite)
    _export_source(source, dest, kind, overwrite=overwrite, progress=progress)
    return dest


def _dest_kind(dest: Path) -> str:
    ext = dest.suffix.lower()
    kinds = {".zarr": "zarr", ".tif": "tiff", ".tiff": "tiff", ".nc": "netcdf", ".raw": "raw", ".bin": "raw",
             ".npy": "npy", **dict.fromkeys(HDF5_EXTENSIONS[:2], "hdf5")}
    if ext not in kinds:
        raise InputError(
            f"output {dest} has an extension ({ext or 'none'}) rockseg cannot write: "
            f"name it with one of {', '.join(DEST_EXTENSIONS)}"
        )
    return kinds[ext]


def _check_export_outputs(dest: Path, kind: str, overwrite: bool) -> None:
    check_new_output(dest, overwrite=overwrite)
    if kind == "raw":
        check_new_output(dest.with_suffix(".mhd"), overwrite=overwrite)


def _export_source(source: Source, dest: Path, kind: str, *, overwrite: bool,
                   progress: bool | Callable[[str], None]) -> None:
    writers = {"tiff": _write_tiff, "netcdf": _write_netcdf, "raw": _write_raw, "npy": _write_npy, "hdf5": write_hdf5}
    slab = _export_slab(source)
    with _writing(dest), _progress_bar(f"export {dest.name}", source.nbytes, progress) as advance:
        if kind == "raw":
            # The header goes into place last, so a header always describes a complete data file.
            with atomic_output(dest.with_suffix(".mhd"), overwrite=overwrite) as tmp_header:
                with atomic_output(dest, overwrite=overwrite) as tmp:
                    writers["raw"](source, tmp, slab, advance)
                tmp_header.write_text(_metaimage_header(source, dest.name))
            return
        with atomic_output(dest, overwrite=overwrite) as tmp:
            writers[kind](source, tmp, slab, advance)


def _export_slab(source: Source) -> int:
    if source.ndim == 2:
        return 1
    if source.slab_hint:
        return int(source.slab_hint)
    plane = int(np.prod(source.shape[1:])) * source.dtype.itemsize
    return max(1, min(source.shape[0], _EXPORT_SLAB_BYTES // max(plane, 1)))


def _export_dtype(dtype: np.dtype, kind: str) -> np.dtype:
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype == np.float16 and kind in ("netcdf", "raw"):
        return np.dtype(np.float32)
    return dtype


def _planes(source: Source, slab: int, dtype: np.dtype, advance: Callable[[int], None]) -> Iterator[np.ndarray]:
    for _z0, _z1, block in _stream(source, slab):
        block = block.astype(dtype, copy=False)
        if source.ndim == 2:
            yield block
        else:
            yield from block
        advance(block.nbytes)


def _write_tiff(source: Source, tmp: Path, slab: int, advance: Callable[[int], None]) -> None:
    import tifffile

    dtype = _export_dtype(source.dtype, "tiff")
    bigtiff = int(np.prod(source.shape, dtype=np.int64)) * dtype.itemsize > _BIGTIFF_THRESHOLD
    # ImageJ reads its own flavour of TIFF best, but it only knows these types and no BigTIFF.
    imagej = not bigtiff and dtype.name in ("uint8", "uint16", "float32")
    axes = "ZYX"[-source.ndim :]
    kwargs: dict[str, Any] = {"metadata": {"axes": axes}}
    vs = source.voxel_size if source.voxel_unit == "um" else None
    if vs is not None and imagej:
        kwargs["resolution"] = (1.0 / vs[-1], 1.0 / vs[-2])
        kwargs["metadata"].update(unit="um", **({"spacing": vs[0]} if source.ndim == 3 else {}))
    elif vs is not None:
        kwargs["resolution"] = (1e4 / vs[-1], 1e4 / vs[-2])
        kwargs["resolutionunit"] = "CENTIMETER"
        kwargs["metadata"].update({ATTR_VOXEL_SIZE: list(vs), ATTR_VOXEL_UNIT: "um"})
    with tifffile.TiffWriter(tmp, bigtiff=bigtiff, imagej=imagej) as tw:
        tw.write(_planes(source, slab, dtype, advance), shape=source.shape, dtype=dtype, photometric="minisblack",
                 **kwargs)


def _write_netcdf(source: Source, tmp: Path, slab: int, advance: Callable[[int], None]) -> None:
    import netCDF4

    from rockseg import __version__

    dtype = _export_dtype(source.dtype, "netcdf")
    dims = ("z", "y", "x")[-source.ndim :]
    with netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
        for dim, n in zip(dims, source.shape):
            ds.createDimension(dim, n)
        var = ds.createVariable("volume", dtype, dims, contiguous=True, fill_value=False)
        var.set_auto_maskandscale(False)
        ds.source = source.path
        ds.history = f"written by rockseg {__version__}"
        if source.voxel_size is not None:
            for holder in (ds, var):
                holder.voxel_size = np.array(source.voxel_size, np.float64)
                holder.voxel_size_xyz = np.array(source.voxel_size[::-1], np.float64)
                if source.voxel_unit:
                    holder.voxel_unit = source.voxel_unit
        _stream_into(var, source, slab, dtype, advance)


def _write_raw(source: Source, tmp: Path, slab: int, advance: Callable[[int], None]) -> None:
    dtype = _export_dtype(source.dtype, "raw").newbyteorder("<")
    with open(tmp, "wb") as fh:
        for _z0, _z1, block in _stream(source, slab):
            fh.write(np.ascontiguousarray(block, dtype=dtype).data)
            advance(block.nbytes)


def _metaimage_header(source: Source, data_name: str) -> str:
    dtype = _export_dtype(source.dtype, "raw")
    lines = [
        "ObjectType = Image",
        f"NDims = {source.ndim}",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        "CompressedData = False",
        f"DimSize = {' '.join(str(n) for n in reversed(source.shape))}",
    ]
    if source.voxel_size is not None:
        lines.append(f"ElementSpacing = {' '.join(repr(float(v)) for v in reversed(source.voxel_size))}")
    lines += [f"ElementType = {_MET_TYPES[dtype.name]}", "HeaderSize = 0", f"ElementDataFile = {data_name}"]
    return "\n".join(lines) + "\n"


def _write_npy(source: Source, tmp: Path, slab: int, advance: Callable[[int], None]) -> None:
    # Written with plain writes, not through a memory map: a full disk then fails the write call (caught and
    # reported) instead of killing the process with SIGBUS when a dirty page cannot be stored.
    header = {"descr": np.lib.format.dtype_to_descr(source.dtype), "fortran_order": False,
              "shape": source.shape}
    with open(tmp, "wb") as fh:
        np.lib.format.write_array_header_2_0(fh, header)
        for _z0, _z1, block in _stream(source, slab):
            fh.write(np.ascontiguousarray(block).data)
            advance(block.nbytes)
