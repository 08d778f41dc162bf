"""Readers and writers of volume files: the library behind ``rockseg convert`` and the exports of ``stitch``.

Sources (what :func:`open_source` opens, chosen by extension):

======================  ==========================================================================================
``.tif`` / ``.tiff``    a multi-page TIFF (one plane per page) or a single 2D image
folder or glob          2D TIFF slices (``scan/`` or ``'scan/*.tif'``), stacked in natural order (slice2 < slice10)
``.npy``                a NumPy array file, memory-mapped
``.raw`` / ``.bin``     headerless binary, with ``shape``, ``dtype``, ``byte_order`` and ``header_bytes`` given
``.mhd`` / ``.mha``     a MetaImage header and its raw data
``.nc``                 netCDF3 or netCDF4 (the single 3D variable, or the one named by ``variable``)
``.zarr``               a Zarr array store, v2 or v3
======================  ==========================================================================================

Outputs (by the extension of DEST): a ``.zarr`` v3 store (:func:`write_zarr`), or an export (:func:`export`) to
``.tif``, ``.nc``, ``.raw`` (with a MetaImage ``.mhd`` header beside it) or ``.npy``.

Everything streams in slabs of whole planes along axis 0, so memory stays bounded by one slab (the output chunk
length along Z) whatever the size of the volume; no reader ever loads a whole source. Every output is built under a
temporary name and renamed into place when complete (:func:`rockseg.stores.atomic_output`), so a crash never leaves
a file that looks finished. Bad input raises a :class:`~rockseg.errors.RocksegError` before any output is created.

Voxel sizes are kept in micrometres: a source's :attr:`Source.voxel_size` is per axis (Z, Y, X) in ``"um"`` when
the file says its unit, and the value as recorded (with ``voxel_unit`` None) when it does not.
"""

from __future__ import annotations

import contextlib
import copy
import glob as globmod
import math
import os
import re
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from rockseg.errors import InputError, MissingInputError
from rockseg.normalization import IntensityAccumulator
from rockseg.stores import (
    ATTR_INTENSITY,
    ATTR_PHASES,
    ATTR_PROVENANCE,
    ATTR_SOURCE,
    ATTR_VOXEL_SIZE,
    ATTR_VOXEL_UNIT,
    atomic_output,
    check_new_output,
    compressors_for,
    open_volume,
    provenance,
)

__all__ = [
    "DEFAULT_CHUNKS_2D",
    "DEFAULT_CHUNKS_3D",
    "DEST_EXTENSIONS",
    "SOURCE_EXTENSIONS",
    "Source",
    "convert",
    "export",
    "open_source",
    "parse_dtype",
    "parse_shape",
    "write_zarr",
]

DEFAULT_CHUNKS_3D = (64, 64, 64)
DEFAULT_CHUNKS_2D = (512, 512)
ATTR_DTYPE = "dtype"

TIFF_EXTENSIONS = (".tif", ".tiff")
NETCDF_EXTENSIONS = (".nc", ".nc4", ".cdf")
RAW_EXTENSIONS = (".raw", ".bin")
METAIMAGE_EXTENSIONS = (".mhd", ".mha")
SOURCE_EXTENSIONS = (*TIFF_EXTENSIONS, *NETCDF_EXTENSIONS, *RAW_EXTENSIONS, *METAIMAGE_EXTENSIONS, ".npy", ".zarr")
DEST_EXTENSIONS = (".zarr", *TIFF_EXTENSIONS, ".nc", *RAW_EXTENSIONS, ".npy")

DTYPE_NAMES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")
BYTE_ORDERS = ("little", "big")

# Exports read about this many bytes per slab from sources with no chunking of their own.
_EXPORT_SLAB_BYTES = 64 << 20
# Leave room for the tags and offsets of every page before the 4 GiB limit of classic TIFF.
_BIGTIFF_THRESHOLD = (1 << 32) - (1 << 25)

_UNIT_TO_UM = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0,
    "micrometer": 1.0, "micrometre": 1.0, "micrometers": 1.0, "micrometres": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4,
    "m": 1e6, "meter": 1e6, "metre": 1e6,
    "inch": 25400.0, "in": 25400.0,
}

_MET_TYPES = {
    "uint8": "MET_UCHAR", "int8": "MET_CHAR", "uint16": "MET_USHORT", "int16": "MET_SHORT",
    "uint32": "MET_UINT", "int32": "MET_INT", "uint64": "MET_ULONG_LONG", "int64": "MET_LONG_LONG",
    "float32": "MET_FLOAT", "float64": "MET_DOUBLE",
}
_MET_DTYPES = {v: k for k, v in _MET_TYPES.items()} | {"MET_ULONG": "uint64", "MET_LONG": "int64"}


# --------------------------------------------------------------------------------------------------------------------
# Option parsing


def parse_shape(text: str | Sequence[int], *, name: str = "--shape") -> tuple[int, ...]:
    """Parse ``"Z,Y,X"`` (or ``"Y,X"``; commas, ``x`` or spaces between) into a tuple of positive ints.

    >>> parse_shape("400,500,600")
    (400, 500, 600)
    >>> parse_shape("64x64x64", name="--chunks")
    (64, 64, 64)
    """
    try:
        if isinstance(text, str):
            parts = re.split(r"\s*[,x×]\s*|\s+", text.strip().lower())
            if not all(re.fullmatch(r"[+-]?\d+", p) for p in parts):
                raise ValueError
        else:
            parts = list(text)
            if not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in parts):
                raise ValueError
        values = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise InputError(f"{name} {text!r} is not a list of integers: give Z,Y,X, e.g. 400,500,600") from None
    if len(values) not in (2, 3) or any(v <= 0 for v in values):
        raise InputError(
            f"{name} {text!r} must be 3 positive integers Z,Y,X (or 2 for one image Y,X), e.g. 400,500,600"
        )
    return values


def parse_dtype(text: str | np.dtype | type, *, byte_order: str = "little", name: str = "--dtype") -> np.dtype:
    """Parse a voxel type name (``uint8``, ``uint16``, ``float32``...) with the byte order of a raw file.

    An explicit order in the name (``">u2"``, ``"<f4"``) wins over ``byte_order``.

    >>> parse_dtype("uint16", byte_order="big").str
    '>u2'
    """
    order = _parse_byte_order(byte_order)
    try:
        dtype = np.dtype(text)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "biuf" or dtype.itemsize > 8:
        raise InputError(f"{name} {text!r} is not a voxel type rockseg knows: choose one of {', '.join(DTYPE_NAMES)}")
    explicit = isinstance(text, str) and text.strip()[:1] in "<>"
    if dtype.itemsize > 1 and not explicit:
        dtype = dtype.newbyteorder(order)
    return dtype


def _parse_byte_order(text: str) -> str:
    order = {"little": "<", "big": ">", "<": "<", ">": ">"}.get(str(text).strip().lower())
    if order is None:
        raise InputError(f"--byte-order {text!r} is not a byte order: choose little or big")
    return order


def _check_chunks(chunks: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunk shape for an output of ``shape``: the default, or ``chunks`` checked and clipped to the shape."""
    if chunks is None:
        chunks = DEFAULT_CHUNKS_3D if len(shape) == 3 else DEFAULT_CHUNKS_2D
    else:
        chunks = parse_shape(chunks, name="--chunks")
        if len(chunks) != len(shape):
            raise InputError(
                f"--chunks {','.join(map(str, chunks))} has {len(chunks)} values but the volume has "
                f"{len(shape)} axes {tuple(shape)}: give one chunk length per axis"
            )
    return tuple(min(int(c), int(s)) for c, s in zip(chunks, shape))


def _check_voxel_size(voxel_size: Any, ndim: int) -> tuple[float, ...] | None:
    """``voxel_size`` (one float, micrometres, or one per axis) as one positive float per axis, or None."""
    if voxel_size is None:
        return None
    values = [voxel_size] * ndim if np.isscalar(voxel_size) else list(voxel_size)
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"--voxel-size {voxel_size!r} is not a number: give the voxel edge in micrometres") from None
    if len(out) != ndim or not all(math.isfinite(v) and v > 0 for v in out):
        raise InputError(
            f"--voxel-size {voxel_size!r} must be one positive number (micrometres) or one per axis ({ndim})"
        )
    return out


def _dest_kind(dest: Path) -> str:
    ext = dest.suffix.lower()
    kinds = {".zarr": "zarr", ".tif": "tiff", ".tiff": "tiff", ".nc": "netcdf", ".raw": "raw", ".bin": "raw",
             ".npy": "npy"}
    if ext not in kinds:
        raise InputError(
            f"output {dest} has an extension ({ext or 'none'}) rockseg cannot write: "
            f"name it with one of {', '.join(DEST_EXTENSIONS)}"
        )
    return kinds[ext]


def _native(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype


# --------------------------------------------------------------------------------------------------------------------
# Sources


class Source:
    """A readable volume: shape, dtype, voxel size, attributes, and planes read on demand.

    Attributes
    ----------
    path : the file, folder, glob or store it reads (absolute path as given).
    shape : (Z, Y, X) for a volume, (Y, X) for one image.
    dtype : the voxel type, in native byte order (what :meth:`read` returns).
    voxel_size : one float per axis (Z, Y, X), in ``voxel_unit``, or None when the file does not record one.
    voxel_unit : ``"um"`` when the unit is known (sizes are then micrometres), else None.
    attrs : extra metadata worth keeping (``phases`` of a label store, the netCDF variable name...).
    kind : the format, ``"tiff"``, ``"tiff-stack"``, ``"npy"``, ``"raw"``, ``"netcdf"``, ``"zarr"``, ``"array"``.
    slab_hint : planes per read that suit the storage (a source chunk length), or None.

    A source is a context manager; :meth:`close` releases its file handles.
    """

    kind = "array"

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: Sequence[int],
        dtype: Any,
        *,
        voxel_size: Sequence[float] | None = None,
        voxel_unit: str | None = None,
        attrs: dict[str, Any] | None = None,
        slab_hint: int | None = None,
    ) -> None:
        self.path = str(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = _native(np.dtype(dtype))
        self.voxel_size = tuple(float(v) for v in voxel_size) if voxel_size is not None else None
        self.voxel_unit = voxel_unit if voxel_size is not None else None
        self.attrs = dict(attrs or {})
        self.slab_hint = slab_hint
        if len(self.shape) not in (2, 3) or min(self.shape) < 1:
            raise InputError(
                f"{self.path} has shape {self.shape}: rockseg reads 2D images (Y, X) and 3D volumes (Z, Y, X)"
            )
        if self.dtype.kind not in "biuf":
            raise InputError(
                f"{self.path} holds {self.dtype} values: rockseg reads integer or float voxels "
                f"({', '.join(DTYPE_NAMES)})"
            )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Planes ``z0:z1`` as a NumPy array of shape (z1 - z0, Y, X); a 2D source returns its whole image."""
        block = np.asarray(self._read(z0, z1))
        if block.dtype != self.dtype:
            block = block.astype(self.dtype)
        return block

    def _read(self, z0: int, z1: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file handles (reading afterwards is an error)."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} {self.shape} {self.dtype}>"


class ArraySource(Source):
    """A source over an array already open: NumPy (memory-mapped or not), Zarr, or anything sliceable."""

    def __init__(self, array: Any, *, path: str = "<array>", kind: str = "array", **kwargs: Any) -> None:
        self.kind = kind
        self._array = array
        super().__init__(path, array.shape, array.dtype, **kwargs)

    def _read(self, z0: int, z1: int) -> np.ndarray:
        if self.ndim == 2:
            return self._array[...]
        return self._array[z0:z1]

    def close(self) -> None:
        self._array = None


def _voxel_from_attrs(attrs: dict[str, Any], ndim: int) -> tuple[tuple[float, ...] | None, str | None]:
    """Voxel size (converted to micrometres when the unit is known) from rockseg-style store attributes."""
    raw = attrs.get(ATTR_VOXEL_SIZE)
    if raw is None:
        return None, None
    try:
        values = [float(raw)] * ndim if np.isscalar(raw) else [float(v) for v in raw]
    except (TypeError, ValueError):
        return None, None
    if len(values) != ndim or not all(math.isfinite(v) and v > 0 for v in values):
        return None, None
    return _to_um(values, attrs.get(ATTR_VOXEL_UNIT))


def _to_um(values: Sequence[float], unit: Any) -> tuple[tuple[float, ...], str | None]:
    factor = _UNIT_TO_UM.get(str(unit).strip().lower()) if unit is not None else None
    if factor is None:
        return tuple(float(v) for v in values), None
    return tuple(float(v) * factor for v in values), "um"


def _array_source(array: Any, *, path: str = "<array>", kind: str = "array") -> ArraySource:
    attrs = dict(getattr(array, "attrs", None) or {})
    if array.ndim not in (2, 3):
        raise InputError(f"{path} has shape {tuple(array.shape)}: rockseg writes 2D images and 3D volumes only")
    voxel_size, unit = _voxel_from_attrs(attrs, array.ndim)
    chunks = getattr(array, "shards", None) or getattr(array, "chunks", None)
    hint = int(chunks[0]) if chunks and array.ndim == 3 else None
    return ArraySource(array, path=path, kind=kind, voxel_size=voxel_size, voxel_unit=unit, attrs=attrs,
                       slab_hint=hint)


def _as_source(obj: Any) -> Source:
    return obj if isinstance(obj, Source) else _array_source(obj)


def _natural_key(path: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", os.path.basename(path))]


def _tiff_error(path: Path | str, exc: Exception) -> InputError:
    return InputError(
        f"{path} is not a readable TIFF file ({type(exc).__name__}: {exc}): check the file, or give it the "
        f"extension of its real format"
    )


def _tiff_voxel_size(tif: Any, ndim: int) -> tuple[tuple[float, ...] | None, str | None]:
    """Voxel size from rockseg's own TIFF metadata, ImageJ metadata or the TIFF resolution tags.

    A Z spacing missing from a 3D file is taken equal to the X size: CT voxels are nearly always cubic.
    Resolutions in inches are ignored: they are print settings (72 dpi...) that image tools write by default.
    """
    shaped = tif.shaped_metadata
    if shaped and isinstance(shaped[0], dict) and ATTR_VOXEL_SIZE in shaped[0]:
        size, unit = _voxel_from_attrs(shaped[0], ndim)
        if size is not None:
            return size, unit
    page = tif.pages.first
    ij = tif.imagej_metadata or {}
    factor = _UNIT_TO_UM.get(str(ij.get("unit", "")).strip().lower())
    if factor is None:
        tag = page.tags.get("ResolutionUnit")
        factor = {3: 1e4, 4: 1e3, 5: 1.0}.get(int(tag.value) if tag is not None else 1)
    xres, yres = _rational(page.tags.get("XResolution")), _rational(page.tags.get("YResolution"))
    if factor is None or not xres:
        return None, None
    x = factor / xres
    y = factor / yres if yres else x
    if ndim == 2:
        return (y, x), "um"
    spacing = ij.get("spacing")
    z = float(spacing) * factor if isinstance(spacing, (int, float)) and spacing > 0 else x
    return (z, y, x), "um"


def _rational(tag: Any) -> float | None:
    if tag is None:
        return None
    value = tag.value
    try:
        num, den = value if isinstance(value, tuple) else (value, 1)
        out = float(num) / float(den)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return out if math.isfinite(out) and out > 0 else None


class TiffSource(Source):
    """A multi-page TIFF (one 2D plane per page) or a single-image TIFF.

    Uncompressed contiguous data (ImageJ stacks, including those over 4 GB) is memory-mapped; otherwise page
    ranges are decoded on demand.
    """

    kind = "tiff"

    def __init__(self, path: Path) -> None:
        import tifffile

        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, series.dtype
            keyshape = tuple(series.keyframe.shape)
            npages = len(series.pages)
            offset = series.dataoffset
        except (tifffile.TiffFileError, ValueError, IndexError, KeyError, struct.error) as exc:
            self.close()
            raise _tiff_error(path, exc) from None
        try:
            if "S" in axes or len(shape) not in (2, 3):
                raise InputError(
                    f"{path} holds an image of shape {shape} (axes {axes}): rockseg reads one grey value per voxel "
                    f"in 2D images or 3D stacks; save the stack as single-channel grayscale"
                )
            self._mm = None
            if offset is not None and self._tif.pages.first.compression == 1:
                self._mm = tifffile.memmap(path, series=0, mode="r")
            elif len(shape) == 3 and (keyshape != shape[1:] or npages != shape[0]):
                raise InputError(
                    f"{path} stores its {shape} volume in {npages} page(s) of shape {keyshape}: rockseg reads "
                    f"TIFF stacks with one plane per page; re-save it as a multi-page TIFF"
                )
            voxel_size, unit = _tiff_voxel_size(self._tif, len(shape))
            super().__init__(path, shape, dtype, voxel_size=voxel_size, voxel_unit=unit)
        except BaseException:
            self.close()
            raise

    def _read(self, z0: int, z1: int) -> np.ndarray:
        if self._mm is not None:
            return self._mm if self.ndim == 2 else self._mm[z0:z1]
        if self.ndim == 2:
            return self._tif.asarray(series=0)
        block = self._tif.asarray(key=range(z0, z1), series=0)
        return block.reshape((z1 - z0, *self.shape[1:]))

    def close(self) -> None:
        self._mm = None
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()


class TiffStackSource(Source):
    """2D TIFF slices (a folder, or the files matching a glob) stacked along Z in natural order.

    Every slice header is checked when the source opens, so slices of different sizes or types are refused before
    any output exists.
    """

    kind = "tiff-stack"

    def __init__(self, path: str, files: Sequence[str]) -> None:
        import tifffile

        self.files = list(files)
        first_shape = first_dtype = None
        voxel_size = unit = None
        for i, f in enumerate(self.files):
            try:
                with tifffile.TiffFile(f) as tif:
                    series = tif.series[0]
                    shape, dtype, axes = tuple(series.shape), series.dtype, series.axes
                    if i == 0:
                        voxel_size, unit = _tiff_voxel_size(tif, 2)
            except (tifffile.TiffFileError, ValueError, IndexError, KeyError, struct.error) as exc:
                raise _tiff_error(f, exc) from None
            if len(shape) != 2 or "S" in axes:
                raise InputError(
                    f"slice {f} has shape {shape} (axes {axes}): every file of a slice folder must be one 2D "
                    f"grayscale image; convert a multi-page TIFF by giving the file itself"
                )
            if i == 0:
                first_shape, first_dtype = shape, _native(np.dtype(dtype))
            elif shape != first_shape or _native(np.dtype(dtype)) != first_dtype:
                raise InputError(
                    f"slice {f} is {shape} {np.dtype(dtype)} but {self.files[0]} is {first_shape} {first_dtype}: "
                    f"every slice of {path} must have the same size and type; remove or fix the odd ones"
                )
        if voxel_size is not None:
            voxel_size = (voxel_size[1], *voxel_size)
        super().__init__(path, (len(self.files), *first_shape), first_dtype, voxel_size=voxel_size,
                         voxel_unit=unit, attrs={"slices": len(self.files)}, slab_hint=None)

    def _read(self, z0: int, z1: int) -> np.ndarray:
        import tifffile

        out = np.empty((z1 - z0, *self.shape[1:]), self.dtype)
        for i, f in enumerate(self.files[z0:z1]):
            try:
                plane = tifffile.imread(f)
            except (tifffile.TiffFileError, ValueError, OSError) as exc:
                raise _tiff_error(f, exc) from None
            if plane.shape != self.shape[1:]:
                raise InputError(f"slice {f} changed while reading: it is now {plane.shape}, not {self.shape[1:]}")
            out[i] = plane
        return out


class RawSource(ArraySource):
    """Headerless binary data (optionally after ``header_bytes`` of header), memory-mapped."""

    def __init__(self, path: Path, *, shape: Any, dtype: Any, byte_order: str = "little",
                 header_bytes: int = 0, voxel_size: Sequence[float] | None = None,
                 voxel_unit: str | None = None, describe: str | None = None) -> None:
        if shape is None or dtype is None:
            raise InputError(
                f"{path} is a raw file with no header: give its --shape Z,Y,X and --dtype "
                f"(one of {', '.join(DTYPE_NAMES)}), and --byte-order / --header-bytes if needed"
            )
        try:
            shape = parse_shape(shape)
            dtype = parse_dtype(dtype, byte_order=byte_order)
        except InputError as exc:
            raise InputError(f"raw file {path}: {exc}") from None
        big = dtype.byteorder == ">" or (dtype.itemsize == 1 and _parse_byte_order(byte_order) == ">")
        try:
            header_bytes = int(header_bytes)
            if header_bytes < 0:
                raise ValueError
        except (TypeError, ValueError):
            raise InputError(f"--header-bytes {header_bytes!r} must be a whole number of bytes >= 0") from None
        actual = path.stat().st_size
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize + header_bytes
        if actual != expected:
            what = describe or (
                f"--shape {','.join(map(str, shape))} --dtype {dtype.name} with --header-bytes {header_bytes}"
            )
            hints = _raw_hints(actual, header_bytes, shape, dtype)
            raise InputError(
                f"{path} has {actual} bytes but {what} needs {expected} bytes: check the shape, type and header"
                + (f" (these would fit: {'; '.join(hints)})" if hints else "")
            )
        array = np.memmap(path, dtype=dtype, mode="r", offset=header_bytes, shape=shape)
        super().__init__(array, path=str(path), kind="raw", voxel_size=voxel_size, voxel_unit=voxel_unit,
                         attrs={"byte_order": "big" if big else "little",
                                "header_bytes": header_bytes})


def _raw_hints(actual: int, header: int, shape: tuple[int, ...], dtype: np.dtype) -> list[str]:
    """Options that would make a raw file of ``actual`` bytes fit, to suggest in the error."""
    hints: list[str] = []
    voxels = int(np.prod(shape, dtype=np.int64))
    data = actual - header
    if data > 0 and data % dtype.itemsize == 0:
        n = data // dtype.itemsize
        plane = int(np.prod(shape[1:]))
        if len(shape) == 3 and n % plane == 0 and n // plane != shape[0]:
            hints.append(f"--shape {n // plane},{shape[1]},{shape[2]}")
        side = round(n ** (1 / 3))
        for s in (side - 1, side, side + 1):
            if s > 0 and s**3 == n and (s, s, s) != shape:
                hints.append(f"--shape {s},{s},{s}")
    for size, name in ((1, "uint8"), (2, "uint16"), (4, "float32"), (8, "float64")):
        if size != dtype.itemsize and voxels * size + header == actual:
            hints.append(f"--dtype {name} (or another {size}-byte type)")
    extra = actual - voxels * dtype.itemsize
    if extra > 0 and extra != header:
        hints.append(f"--header-bytes {extra}")
    return hints


def _read_metaimage(path: Path) -> RawSource:
    """A MetaImage ``.mhd`` header (data in the file it names) or ``.mha`` (data after the header)."""
    fields: dict[str, str] = {}
    header_end = 0
    try:
        with open(path, "rb") as fh:
            for raw_line in fh:
                header_end += len(raw_line)
                key, sep, value = raw_line.decode("ascii").partition("=")
                if not sep:
                    raise ValueError(f"line {raw_line[:40]!r} is not KEY = VALUE")
                fields[key.strip()] = value.strip()
                if key.strip() == "ElementDataFile":
                    break
        dims = [int(v) for v in fields["DimSize"].split()]
        etype = _MET_DTYPES[fields["ElementType"]]
        datafile = fields["ElementDataFile"]
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{path} is not a MetaImage header rockseg can read ({type(exc).__name__}: {exc}): it needs DimSize, "
            f"ElementType (one of {', '.join(_MET_DTYPES)}) and ElementDataFile"
        ) from None
    if fields.get("CompressedData", "False").lower() == "true" or int(fields.get("ElementNumberOfChannels", 1)) != 1:
        raise InputError(f"{path} holds compressed or multi-channel data: rockseg reads uncompressed grey values")
    msb = fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False")).lower() == "true"
    if datafile == "LOCAL":
        data_path, header = path, header_end
    else:
        data_path, header = path.parent / datafile, int(fields.get("HeaderSize", 0))
        if not data_path.exists():
            raise MissingInputError(f"{path} names data file {datafile} which does not exist beside it")
    shape = tuple(reversed(dims))
    nbytes = int(np.prod(shape)) * np.dtype(etype).itemsize
    if header == -1:  # MetaImage convention: the data are the last bytes of the file
        header = max(data_path.stat().st_size - nbytes, 0)
    spacing = fields.get("ElementSpacing") or fields.get("ElementSize")
    voxel_size = tuple(reversed([float(v) for v in spacing.split()])) if spacing else None
    return RawSource(data_path, shape=shape, dtype=etype, byte_order="big" if msb else "little",
                     header_bytes=header, voxel_size=voxel_size, voxel_unit=None,
                     describe=f"the header {path.name} (DimSize {fields['DimSize']}, {fields['ElementType']})")


class NetcdfSource(Source):
    """A netCDF3 or netCDF4 variable of 2 or 3 dimensions, read slab by slab.

    Values are the stored ones (no masking or scaling), with ``_Unsigned`` integers returned as unsigned types.
    """

    kind = "netcdf"

    def __init__(self, path: Path, variable: str | None) -> None:
        import netCDF4

        try:
            self._ds = netCDF4.Dataset(path, "r")
        except OSError as exc:
            raise InputError(
                f"{path} is not a readable netCDF file ({exc}): check the file, or give it the extension of its "
                f"real format"
            ) from None
        try:
            name = self._pick(path, variable)
            var = self._ds.variables[name]
            var.set_auto_maskandscale(False)
            dtype = np.dtype(var.dtype)
            if dtype.kind == "i" and str(getattr(var, "_Unsigned", "false")).lower() == "true":
                dtype = np.dtype(f"u{dtype.itemsize}")
            self._var = var
            voxel_size, unit = self._voxel_size(var, var.ndim)
            attrs = {"variable": name}
            super().__init__(path, var.shape, dtype, voxel_size=voxel_size, voxel_unit=unit, attrs=attrs,
                             slab_hint=None)
        except BaseException:
            self.close()
            raise

    def _candidates(self) -> dict[str, Any]:
        return {
            n: v for n, v in self._ds.variables.items()
            if isinstance(v.dtype, np.dtype) and v.dtype.kind in "biuf"
        }

    def _describe(self) -> str:
        items = [f"{n} {tuple(v.shape)} {v.dtype}" for n, v in self._ds.variables.items()]
        return ", ".join(items) or "none"

    def _pick(self, path: Path, variable: str | None) -> str:
        numeric = self._candidates()
        if variable is not None:
            if variable not in self._ds.variables:
                raise InputError(
                    f"{path} has no variable {variable!r}: choose one of its variables with --variable: "
                    f"{self._describe()}"
                )
            if variable not in numeric or numeric[variable].ndim not in (2, 3):
                v = self._ds.variables[variable]
                raise InputError(
                    f"variable {variable!r} of {path} is {tuple(v.shape)} {v.dtype}: choose a 2D or 3D numeric "
                    f"variable with --variable: {self._describe()}"
                )
            return variable
        for ndim in (3, 2):
            found = [n for n, v in numeric.items() if v.ndim == ndim]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise InputError(
                    f"{path} has {len(found)} {ndim}D variables ({', '.join(found)}): choose one with --variable"
                )
        raise InputError(f"{path} has no 2D or 3D numeric variable to convert (variables: {self._describe()})")

    def _voxel_size(self, var: Any, ndim: int) -> tuple[tuple[float, ...] | None, str | None]:
        for holder in (var, self._ds):
            names = holder.ncattrs()
            unit = holder.getncattr("voxel_unit") if "voxel_unit" in names else None
            values = None
            if "voxel_size_xyz" in names:
                values = list(reversed(np.atleast_1d(holder.getncattr("voxel_size_xyz")).tolist()))[-ndim:]
            elif ATTR_VOXEL_SIZE in names:
                raw = np.atleast_1d(holder.getncattr(ATTR_VOXEL_SIZE)).tolist()
                values = raw * ndim if len(raw) == 1 else raw
            if values is not None:
                size, unit = _voxel_from_attrs({ATTR_VOXEL_SIZE: values, ATTR_VOXEL_UNIT: unit}, ndim)
                if size is not None:
                    return size, unit
        return None, None

    def _read(self, z0: int, z1: int) -> np.ndarray:
        block = np.asarray(self._var[...] if self.ndim == 2 else self._var[z0:z1])
        if block.dtype.kind == "i" and self.dtype.kind == "u":
            block = block.view(block.dtype.str.replace("i", "u"))
        return block

    def close(self) -> None:
        ds = getattr(self, "_ds", None)
        if ds is not None and ds.isopen():
            ds.close()


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _stack_files(folder: Path) -> list[str]:
    return sorted(
        (str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TIFF_EXTENSIONS),
        key=_natural_key,
    )


def open_source(
    path: str | os.PathLike[str],
    *,
    shape: str | Sequence[int] | None = None,
    dtype: Any = None,
    byte_order: str = "little",
    header_bytes: int = 0,
    variable: str | None = None,
) -> Source:
    """Open a volume file for slab-wise reading, choosing the reader by extension.

    Parameters
    ----------
    path : a ``.tif``/``.tiff`` file, a folder of 2D TIFF slices, a glob such as ``"scan/*.tif"``, a ``.npy``,
        ``.raw``/``.bin``, ``.mhd``/``.mha``, ``.nc`` file, or a Zarr array store (v2 or v3).
    shape : (Z, Y, X) or ``"Z,Y,X"``, only for raw files.
    dtype : voxel type name (``"uint16"``...), only for raw files.
    byte_order : ``"little"`` or ``"big"``, only for raw files.
    header_bytes : bytes to skip before the data, only for raw files.
    variable : the netCDF variable to read (default: the only 3D one).

    Raises
    ------
    MissingInputError
        if the path does not exist or a glob matches nothing.
    InputError
        for an unknown format, a file that is not what its extension says, or options that do not fit.
    """
    text = os.fspath(path)
    p = Path(text)
    if not p.exists() and _is_glob(text):
        files = sorted((f for f in globmod.glob(text) if os.path.isfile(f)), key=_natural_key)
        if not files:
            raise MissingInputError(f"no file matches {text}: check the pattern (quote it so the shell leaves it)")
        _refuse_raw_options(text, "a glob of TIFF slices", shape, dtype, byte_order, header_bytes, variable)
        return TiffStackSource(os.path.abspath(text), files)
    if not p.exists():
        raise MissingInputError(f"source {p} does not exist: check the path")
    p = p.absolute()
    ext = p.suffix.lower()
    if p.is_dir():
        if ext == ".zarr" or any((p / m).exists() for m in ("zarr.json", ".zarray", ".zgroup")):
            _refuse_raw_options(p, "a Zarr store", shape, dtype, byte_order, header_bytes, variable)
            return _array_source(open_volume(p, name="source"), path=str(p), kind="zarr")
        _refuse_raw_options(p, "a folder of TIFF slices", shape, dtype, byte_order, header_bytes, variable)
        files = _stack_files(p)
        if not files:
            raise InputError(
                f"folder {p} holds no .tif/.tiff slice files: give a folder of 2D TIFF slices, a glob such as "
                f"'{p}/*.tif', or a volume file"
            )
        return TiffStackSource(str(p), files)
    if ext in RAW_EXTENSIONS:
        if variable is not None:
            raise InputError(f"--variable is for netCDF sources, but {p} is a raw file: leave it out")
        return RawSource(p, shape=shape, dtype=dtype, byte_order=byte_order, header_bytes=header_bytes)
    if ext in TIFF_EXTENSIONS:
        _refuse_raw_options(p, "a TIFF file", shape, dtype, byte_order, header_bytes, variable)
        return TiffSource(p)
    if ext == ".npy":
        _refuse_raw_options(p, "a NumPy file", shape, dtype, byte_order, header_bytes, variable)
        return _open_npy(p)
    if ext in NETCDF_EXTENSIONS:
        _refuse_raw_options(p, "a netCDF file", shape, dtype, byte_order, header_bytes, None)
        return NetcdfSource(p, variable)
    if ext in METAIMAGE_EXTENSIONS:
        _refuse_raw_options(p, "a MetaImage file", shape, dtype, byte_order, header_bytes, variable)
        return _read_metaimage(p)
    raise InputError(
        f"source {p} has an extension ({ext or 'none'}) rockseg cannot read: give one of "
        f"{', '.join(SOURCE_EXTENSIONS)}, a folder of TIFF slices or a glob such as 'scan/*.tif'"
    )


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
            f".raw/.bin files, and --variable for netCDF)"
        )


def _open_npy(path: Path) -> Source:
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY":
        raise InputError(f"{path} is not a NumPy .npy file (no NumPy header): check the file or its extension")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise InputError(
            f"{path} is a .npy file rockseg cannot memory-map ({exc}): save a numeric array with numpy.save"
        ) from None
    return ArraySource(array, path=str(path), kind="npy")


# --------------------------------------------------------------------------------------------------------------------
# Streaming


@contextlib.contextmanager
def _progress_bar(description: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(nbytes)``; a rich progress bar on stderr when ``enabled``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _slabs(source: Source, slab: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(z0, z1, block)`` over the whole source, ``slab`` planes at a time (one block for a 2D source)."""
    if source.ndim == 2:
        block = source.read(0, 1)
        _check_block(source, block, source.shape)
        yield 0, 1, block
        return
    depth = source.shape[0]
    for z0 in range(0, depth, slab):
        z1 = min(depth, z0 + slab)
        block = source.read(z0, z1)
        _check_block(source, block, (z1 - z0, *source.shape[1:]))
        yield z0, z1, block


def _check_block(source: Source, block: np.ndarray, shape: tuple[int, ...]) -> None:
    if block.shape != shape:
        raise InputError(f"{source.path} gave a block of shape {block.shape} where {shape} was expected")


def _export_slab(source: Source) -> int:
    if source.ndim == 2:
        return 1
    if source.slab_hint:
        return int(source.slab_hint)
    plane = int(np.prod(source.shape[1:])) * source.dtype.itemsize
    return max(1, min(source.shape[0], _EXPORT_SLAB_BYTES // max(plane, 1)))


def _zarr_attributes(source: Source, stats: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    # A Zarr source keeps its metadata (phases, ...) through a rechunk; what this pass measures replaces the rest.
    keep_all = source.kind in ("zarr", "array")
    attrs: dict[str, Any] = dict(source.attrs) if keep_all else {}
    if not keep_all and ATTR_PHASES in source.attrs:
        attrs[ATTR_PHASES] = source.attrs[ATTR_PHASES]
    attrs.pop(ATTR_VOXEL_SIZE, None)
    attrs.pop(ATTR_VOXEL_UNIT, None)
    if source.voxel_size is not None:
        attrs[ATTR_VOXEL_SIZE] = list(source.voxel_size)
        if source.voxel_unit:
            attrs[ATTR_VOXEL_UNIT] = source.voxel_unit
    origin = {k: v for k, v in source.attrs.items() if k in ("variable", "byte_order", "header_bytes", "slices")}
    attrs.update({
        ATTR_SOURCE: source.path,
        ATTR_DTYPE: source.dtype.name,
        ATTR_INTENSITY: stats,
        ATTR_PROVENANCE: provenance(source_format=source.kind, **origin),
    })
    attrs.update(extra or {})
    return attrs


def write_zarr(
    source: Source | Any,
    dest: str | os.PathLike[str],
    *,
    chunks: Sequence[int] | str | None = None,
    compressor: str = "blosc-zstd",
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> zarr.Array:
    """Write a source (or any array) to a new Zarr v3 array store, slab by slab, with its attributes.

    Parameters
    ----------
    source : a :class:`Source`, or a NumPy / Zarr array of shape (Z, Y, X) or (Y, X).
    dest : the store to create (a directory, normally ``*.zarr``).
    chunks : chunk shape, one length per axis; default (64, 64, 64) for 3D and (512, 512) for 2D, clipped to the
        shape. Slabs of ``chunks[0]`` planes are read and written, so memory is about one row of chunks.
    compressor : one of :data:`rockseg.stores.COMPRESSORS`.
    attrs : extra attributes, written last (they win over the computed ones).
    overwrite : replace an existing ``dest`` (only once the new store is complete).
    progress : show a progress bar on stderr.

    Returns
    -------
    zarr.Array
        the finished store, opened for reading and writing.

    Notes
    -----
    Attributes written: ``voxel_size`` and ``voxel_unit`` (when known), ``source``, ``dtype``, ``intensity``
    (computed in the same pass), ``rockseg`` provenance; a Zarr source's other attributes (``phases``...) are kept.
    """
    source = _as_source(source)
    chunks = _check_chunks(chunks, source.shape)
    codecs = compressors_for(compressor)
    dest = Path(dest)
    check_new_output(dest, overwrite=overwrite)
    acc = IntensityAccumulator(source.dtype, total=int(np.prod(source.shape, dtype=np.int64)))
    dims = ("z", "y", "x")[-source.ndim :]
    with atomic_output(dest, overwrite=overwrite) as tmp:
        array = zarr.create_array(store=str(tmp), shape=source.shape, chunks=chunks, dtype=source.dtype,
                                  compressors=codecs, fill_value=0, dimension_names=dims, zarr_format=3)
        with _progress_bar(f"convert {dest.name}", source.nbytes, progress) as advance:
            for z0, z1, block in _slabs(source, chunks[0]):
                if source.ndim == 2:
                    array[...] = block
                else:
                    array[z0:z1] = block
                try:
                    acc.update(block)
                except InputError as exc:
                    raise InputError(f"{source.path}: {exc}") from None
                advance(block.nbytes)
        array.attrs.update(_zarr_attributes(source, acc.result(), attrs))
    return zarr.open_array(store=str(dest), mode="r+")


# --------------------------------------------------------------------------------------------------------------------
# Exports


def export(
    array: Any,
    dest: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = False,
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
        ``.mhd`` header beside it), ``.npy``, or ``.zarr`` (see :func:`write_zarr`).
    overwrite : replace an existing ``dest`` (only once the new file is complete).
    progress : show a progress bar on stderr.
    voxel_size : micrometres, one value or one per axis; overrides the array's attribute.

    Returns
    -------
    Path
        ``dest``.

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


def _check_export_outputs(dest: Path, kind: str, overwrite: bool) -> None:
    check_new_output(dest, overwrite=overwrite)
    if kind == "raw":
        check_new_output(dest.with_suffix(".mhd"), overwrite=overwrite)


def _export_source(source: Source, dest: Path, kind: str, *, overwrite: bool, progress: bool) -> None:
    writers = {"tiff": _write_tiff, "netcdf": _write_netcdf, "raw": _write_raw, "npy": _write_npy}
    slab = _export_slab(source)
    with _progress_bar(f"export {dest.name}", source.nbytes, progress) as advance:
        if kind == "raw":
            # The header goes into place last, so a header always describes a complete data file.
            with atomic_output(dest.with_suffix(".mhd"), overwrite=overwrite) as tmp_header:
                with atomic_output(dest, overwrite=overwrite) as tmp:
                    _write_raw(source, tmp, slab, advance)
                tmp_header.write_text(_metaimage_header(source, dest.name))
            return
        with atomic_output(dest, overwrite=overwrite) as tmp:
            writers[kind](source, tmp, slab, advance)


def _export_dtype(dtype: np.dtype, kind: str) -> np.dtype:
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype == np.float16 and kind in ("netcdf", "raw"):
        return np.dtype(np.float32)
    return dtype


def _planes(source: Source, slab: int, dtype: np.dtype, advance: Callable[[int], None]) -> Iterator[np.ndarray]:
    for _z0, _z1, block in _slabs(source, slab):
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
        for z0, z1, block in _slabs(source, slab):
            block = block.astype(dtype, copy=False)
            if source.ndim == 2:
                var[...] = block
            else:
                var[z0:z1] = block
            advance(block.nbytes)


def _write_raw(source: Source, tmp: Path, slab: int, advance: Callable[[int], None]) -> None:
    dtype = _export_dtype(source.dtype, "raw").newbyteorder("<")
    with open(tmp, "wb") as fh:
        for _z0, _z1, block in _slabs(source, slab):
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
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=source.dtype, shape=source.shape)
    try:
        for z0, z1, block in _slabs(source, slab):
            if source.ndim == 2:
                out[...] = block
            else:
                out[z0:z1] = block
            advance(block.nbytes)
        out.flush()
    finally:
        del out


# --------------------------------------------------------------------------------------------------------------------
# convert


def convert(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    shape: str | Sequence[int] | None = None,
    dtype: Any = None,
    byte_order: str = "little",
    header_bytes: int = 0,
    variable: str | None = None,
    chunks: Sequence[int] | str | None = None,
    compressor: str = "blosc-zstd",
    voxel_size: float | Sequence[float] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Convert a volume file to a Zarr store, or export it to another format (``rockseg convert SRC DEST``).

    Parameters
    ----------
    src : see :func:`open_source` (the raw options ``shape``, ``dtype``, ``byte_order``, ``header_bytes`` and the
        netCDF ``variable`` are passed to it).
    dest : a ``.zarr`` store, or ``.tif``, ``.nc``, ``.raw`` (+ ``.mhd``), ``.npy`` (see :func:`export`).
    chunks : Zarr chunk shape (``.zarr`` only); default (64, 64, 64) clipped to the shape.
    compressor : Zarr compressor, one of :data:`rockseg.stores.COMPRESSORS`.
    voxel_size : micrometres, one value or one per axis; default: what the source records.
    overwrite : replace an existing ``dest``.
    progress : show a progress bar on stderr.

    Returns
    -------
    dict
        ``dest``, ``source``, ``format`` (of the source), ``shape``, ``dtype``, ``bytes``, ``seconds`` and
        ``MB/s`` (source megabytes per second; also under ``mb_per_s``).
    """
    start = time.perf_counter()
    dest = Path(dest)
    kind = _dest_kind(dest)
    compressors_for(compressor)  # a misspelt compressor fails before anything is read
    if kind != "zarr" and chunks is not None:
        raise InputError(f"--chunks applies to .zarr outputs only, not to {dest}: leave it out")
    if kind == "zarr":
        check_new_output(dest, overwrite=overwrite)
    else:
        _check_export_outputs(dest, kind, overwrite)
    with open_source(src, shape=shape, dtype=dtype, byte_order=byte_order, header_bytes=header_bytes,
                     variable=variable) as source:
        override = _check_voxel_size(voxel_size, source.ndim)
        if override is not None:
            source.voxel_size, source.voxel_unit = override, "um"
        if kind == "zarr":
            chunks = _check_chunks(chunks, source.shape)
            write_zarr(source, dest, chunks=chunks, compressor=compressor, overwrite=overwrite, progress=progress)
        else:
            _export_source(source, dest, kind, overwrite=overwrite, progress=progress)
        seconds = time.perf_counter() - start
        rate = float(f"{source.nbytes / 1e6 / max(seconds, 1e-9):.3g}")
        return {
            "dest": str(dest),
            "source": source.path,
            "format": source.kind,
            "shape": list(source.shape),
            "dtype": source.dtype.name,
            "bytes": source.nbytes,
            "seconds": round(seconds, 3),
            "MB/s": rate,
            "mb_per_s": rate,
        }


