"""Readers and writers of volume files: the library behind ``rockseg convert`` and the exports of ``stitch``.

Sources (what :func:`open_source` opens, chosen by extension):

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
``.zarr``                   a Zarr array store, v2 or v3
==========================  ======================================================================================

Colour-coded label images (RGB masks from annotation tools, QEMSCAN exports, grey-coded PNG masks) become integer
labels with a colour map (:func:`parse_colormap`, ``--colormap "0,0,255=0:pore;0,255,0=1:clay"``); a colour the map
does not list stops the run with its value and position. A part of a volume is taken with a region
(:func:`select_region`: ``--crop Z0:Z1,Y0:Y1,X0:X1`` and ``--slices START:STOP[:STEP]``), read straight from the file.

Outputs (by the extension of DEST): a ``.zarr`` v3 store (:func:`write_zarr`, optionally with the sharding codec so a
terabyte volume is not millions of files), or an export (:func:`export`) to ``.tif``, ``.nc``, ``.raw`` (with a
MetaImage ``.mhd`` header beside it) or ``.npy``.

Everything streams in slabs of whole planes along axis 0, so memory stays bounded by a few slabs (a slab is the output
chunk length along Z, or the shard length with shards) whatever the size of the volume; no reader ever loads a whole
source or memory-maps a large file. The next slab is read while the current one is compressed and written, and the
chunks of a slab are compressed and written in parallel, one thread per core (the compressors and file writes release
the GIL; see :class:`_ChunkFiles`). Every output is built under
a temporary name and renamed into place when complete (:func:`rockseg.io.stores.atomic_output`), so a crash, a full disk
or bad data found halfway never leaves a file that looks finished. Bad input raises a
:class:`~rockseg.errors.RocksegError` before any output is created where it can be known before reading the data.

Voxel sizes are kept in micrometres: a source's :attr:`Source.voxel_size` is per axis (Z, Y, X) in ``"um"`` when
the file says its unit, and the value as recorded (with ``voxel_unit`` None) when it does not.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import glob as globmod
import importlib.util
import math
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from rockseg.devices import available_cpus
from rockseg.errors import InputError, MissingInputError, OutputWriteError, RocksegError
from rockseg.io.intensity import IntensityAccumulator
from rockseg.vocabulary import BYTE_ORDERS
from rockseg.io.stores import (
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
    parse_crop,
    parse_phases,
    provenance,
)

__all__ = [
    "DEFAULT_CHUNKS_2D",
    "DEFAULT_CHUNKS_3D",
    "DEST_EXTENSIONS",
    "SOURCE_EXTENSIONS",
    "ColourMap",
    "OutputWriteError",
    "Source",
    "convert",
    "export",
    "open_source",
    "parse_colormap",
    "parse_dtype",
    "parse_shape",
    "parse_slices",
    "select_region",
    "write_zarr",
]

DEFAULT_CHUNKS_3D = (64, 64, 64)
DEFAULT_CHUNKS_2D = (512, 512)
ATTR_DTYPE = "dtype"
ATTR_REGION = "source_region"

TIFF_EXTENSIONS = (".tif", ".tiff")
PNG_EXTENSIONS = (".png",)
NETCDF_EXTENSIONS = (".nc", ".nc4", ".cdf")
RAW_EXTENSIONS = (".raw", ".bin", ".vol")
METAIMAGE_EXTENSIONS = (".mhd", ".mha")
NRRD_EXTENSIONS = (".nhdr", ".nrrd")
SOURCE_EXTENSIONS = (*TIFF_EXTENSIONS, *PNG_EXTENSIONS, *NETCDF_EXTENSIONS, *RAW_EXTENSIONS, *METAIMAGE_EXTENSIONS,
                     *NRRD_EXTENSIONS, ".npy", ".zarr")
DEST_EXTENSIONS = (".zarr", *TIFF_EXTENSIONS, ".nc", ".raw", ".bin", ".npy")

DTYPE_NAMES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")

# Exports read about this many bytes per slab from sources with no chunking of their own.
_EXPORT_SLAB_BYTES = 64 << 20
# A Zarr output is written in slabs of whole planes, one chunk (or shard) deep, while such a slab is at most this
# big. A deeper or wider slab is read and written in bands of whole chunk (shard) rows instead, from sources that
# read part of a plane for less than the whole plane, so memory stays bounded for planes of any size.
_SLAB_BYTES = 128 << 20
# The next slab is read ahead while the current one is written when a slab is at most this big (two slabs are then
# in memory at once); bigger ones (deep shards of planes read whole) are read in turn, to keep memory bounded.
_PREFETCH_BYTES = 256 << 20
# Slice files decoded at once by a folder or glob of slices.
_SLICE_THREADS = 4
# Threads that cut, count, compress and write the chunks of a Zarr output: the compressors, the copies and the file
# writes release the GIL, so one thread per core keeps every core busy.
_WRITE_THREADS = max(1, min(16, available_cpus()))
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

_NRRD_TYPES = {
    **dict.fromkeys(("signed char", "int8", "int8_t"), "int8"),
    **dict.fromkeys(("uchar", "unsigned char", "uint8", "uint8_t"), "uint8"),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t"), "int16"),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), "uint16"),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t"), "int32"),
    **dict.fromkeys(("uint", "unsigned int", "uint32", "uint32_t"), "uint32"),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int",
                     "int64", "int64_t"), "int64"),
    **dict.fromkeys(("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), "uint64"),
    "float": "float32", "double": "float64",
}


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


@dataclass(frozen=True)
class ColourMap:
    """The colours of a colour-coded label image and the integer label of each (see :func:`parse_colormap`).

    Attributes
    ----------
    colours : one tuple per entry: (V,) grey value, (R, G, B) or (R, G, B, A).
    labels : the label of each colour (0 to 65535; several colours may share a label).
    names : phase names, ``{label: name}``, for the labels that were given one.
    text : the option as given, repeated in error messages.
    """

    colours: tuple[tuple[int, ...], ...]
    labels: tuple[int, ...]
    names: dict[int, str] = field(default_factory=dict, compare=False, hash=False)
    text: str = ""

    @property
    def width(self) -> int:
        """Values per colour: 1 (grey), 3 (RGB) or 4 (RGBA)."""
        return len(self.colours[0])


def _format_colour(colour: Sequence[int]) -> str:
    return ",".join(str(int(c)) for c in colour)


def parse_colormap(text: str | ColourMap | Mapping[Any, Any]) -> ColourMap:
    """Parse a colour map ``"COLOUR=LABEL[:NAME];..."`` for colour-coded label images.

    A COLOUR is ``R,G,B`` (an alpha channel, if any, is ignored), ``R,G,B,A``, ``#rrggbb`` / ``#rrggbbaa``, or one
    grey value ``V`` for grey-coded masks; all entries use the same form. LABEL is an integer from 0 to 65535 (several
    colours may share one), NAME an optional phase name. A mapping ``{(0, 0, 255): 0, ...}`` is accepted too.

    >>> cm = parse_colormap("0,0,255=0:pore;0,255,0=1:clay;#ff0000=2")
    >>> cm.colours, cm.labels, cm.names
    (((0, 0, 255), (0, 255, 0), (255, 0, 0)), (0, 1, 2), {0: 'pore', 1: 'clay'})
    """
    if isinstance(text, ColourMap):
        return text
    if isinstance(text, Mapping):
        items = [(np.atleast_1d(np.asarray(k)).tolist(), v) for k, v in text.items()]
        text = ";".join(f"{_format_colour(k)}={v}" for k, v in items)
    example = "e.g. --colormap '0,0,255=0:pore;0,255,0=1:clay' (or grey values: '33=0;201=1')"
    entries = [e.strip() for e in re.split(r"[;\n]", str(text)) if e.strip()]
    if not entries:
        raise InputError(f"--colormap {text!r} is empty: give COLOUR=LABEL[:NAME] entries separated by ';', {example}")
    colours: list[tuple[int, ...]] = []
    labels: list[int] = []
    names: dict[int, str] = {}
    for entry in entries:
        colour_text, sep, rest = entry.partition("=")
        label_text, _, name = rest.partition(":")
        try:
            if not sep:
                raise ValueError
            colour_text = colour_text.strip()
            if colour_text.startswith("#") and len(colour_text) in (7, 9):
                colour = tuple(int(colour_text[i : i + 2], 16) for i in range(1, len(colour_text), 2))
            else:
                colour = tuple(int(c) for c in colour_text.split(","))
            label = int(label_text)
        except ValueError:
            raise InputError(f"--colormap {text!r}: entry {entry!r} is not COLOUR=LABEL[:NAME], {example}") from None
        if len(colour) not in (1, 3, 4) or min(colour) < 0:
            raise InputError(
                f"--colormap {text!r}: colour {colour_text!r} must be one grey value, R,G,B or R,G,B,A of "
                f"non-negative integers, {example}"
            )
        if colours and len(colour) != len(colours[0]):
            raise InputError(
                f"--colormap {text!r}: colour {colour_text!r} has {len(colour)} values but "
                f"{_format_colour(colours[0])} has {len(colours[0])}: give every colour in the same form"
            )
        if colour in colours:
            raise InputError(f"--colormap {text!r}: colour {_format_colour(colour)} is given twice: give it once")
        if not 0 <= label <= 65535:
            raise InputError(f"--colormap {text!r}: label {label} is out of range: labels go from 0 to 65535")
        name = name.strip()
        if name:
            if names.get(label, name) != name:
                raise InputError(
                    f"--colormap {text!r}: label {label} is named both {names[label]!r} and {name!r}: give one name"
                )
            names[label] = name
        colours.append(colour)
        labels.append(label)
    return ColourMap(tuple(colours), tuple(labels), names, str(text))


def parse_slices(text: str | slice) -> slice:
    """Parse a plane range ``"START:STOP[:STEP]"`` along Z (Python slice syntax, empty bounds allowed).

    One index ``"N"`` means the single plane N. Bounds may be negative (counted from the end); they are checked
    against the volume by :func:`select_region`.

    >>> parse_slices("0:400:50"), parse_slices("100:"), parse_slices("7")
    (slice(0, 400, 50), slice(100, None, None), slice(7, 8, None))
    """
    if isinstance(text, slice):
        parts: list[Any] = [text.start, text.stop, text.step]
    else:
        raw = str(text).strip().split(":")
        try:
            if len(raw) == 1:
                index = int(raw[0])
                return slice(index, index + 1 if index != -1 else None)
            if len(raw) > 3:
                raise ValueError
            parts = [int(p) if p.strip() else None for p in raw] + [None] * (3 - len(raw))
        except ValueError:
            raise InputError(
                f"--slices {text!r} is not START:STOP[:STEP] with integers: e.g. 100:200, or 0:400:50 for every "
                f"50th plane"
            ) from None
    if parts[2] is not None and parts[2] <= 0:
        raise InputError(f"--slices {text!r}: the step must be a positive number of planes, e.g. 0:400:50")
    return slice(*parts)


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


def _check_shards(shards: Any, chunks: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Shard shape (a whole number of chunks per axis), clipped to the chunks that cover ``shape``; or None."""
    if shards is None:
        return None
    shards = parse_shape(shards, name="--shards")
    given = ",".join(map(str, shards))
    if len(shards) != len(shape):
        raise InputError(
            f"--shards {given} has {len(shards)} values but the volume has {len(shape)} axes {tuple(shape)}: give "
            f"one shard length per axis"
        )
    if any(s % c for s, c in zip(shards, chunks)):
        example = ",".join(str(c * max(1, round(s / c))) for s, c in zip(shards, chunks))
        raise InputError(
            f"--shards {given} is not a whole number of chunks {','.join(map(str, chunks))} along every axis: give "
            f"multiples of the chunk shape, e.g. {example}"
        )
    return tuple(min(s, -(-n // c) * c) for s, c, n in zip(shards, chunks, shape))


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


def _check_phases(phases: str | Mapping[Any, Any] | None) -> dict[int, str]:
    if phases is None or isinstance(phases, str):
        return parse_phases(phases)
    try:
        return {int(k): str(v) for k, v in phases.items()}
    except (TypeError, ValueError, AttributeError):
        raise InputError(f"--phases {phases!r} is not LABEL=NAME pairs, e.g. 0=pore,1=grain") from None


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
    kind : the format, ``"tiff"``, ``"tiff-stack"``, ``"png"``, ``"png-stack"``, ``"npy"``, ``"raw"``, ``"netcdf"``,
        ``"zarr"``, ``"array"``.
    slab_hint : planes per read that suit the storage (a source chunk length), or None.
    channels : values per voxel. Always 1 for what :func:`open_source` returns; a colour image opened for a
        colour map reads (..., channels) blocks.
    band_reads : True when reading a band of rows of some planes costs less than reading the whole planes (raw
        data, uncompressed TIFF, NumPy, Zarr or netCDF chunked along Y); False when every read decodes whole planes.

    A source is a context manager; :meth:`close` releases its file handles.
    """

    kind = "array"
    channels = 1
    band_reads = False

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
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize * self.channels

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Planes ``z0:z1`` as a NumPy array of shape (z1 - z0, Y, X); a 2D source returns its whole image."""
        block = np.asarray(self._read(z0, z1))
        if block.dtype != self.dtype:
            block = block.astype(self.dtype)
        return block

    def read_region(self, region: Sequence[slice]) -> np.ndarray:
        """The voxels of ``region``: one slice per axis with bounds inside the shape, a step only along Z.

        Readers override :meth:`_read_region` to read only the region from the file (rows of a raw file, strided
        netCDF or Zarr selections, the needed slice files).
        """
        block = np.asarray(self._read_region(tuple(region)))
        if block.dtype != self.dtype:
            block = block.astype(self.dtype)
        return block

    def plane_name(self, z: int) -> str:
        """Where plane ``z`` comes from, for messages (a slice file, or the source with the plane index)."""
        return f"{self.path} (plane z={z})" if self.ndim == 3 else self.path

    def _region(self, z0: int, z1: int) -> tuple[slice, ...]:
        """The region of planes ``z0:z1`` (of the whole image for a 2D source)."""
        if self.ndim == 2:
            return (slice(0, self.shape[0]), slice(0, self.shape[1]))
        return (slice(z0, z1), slice(0, self.shape[1]), slice(0, self.shape[2]))

    def _read(self, z0: int, z1: int) -> np.ndarray:
        if type(self)._read_region is Source._read_region:
            raise NotImplementedError(f"{type(self).__name__} implements neither _read nor _read_region")
        return self._read_region(self._region(z0, z1))

    def _read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        # Readers that only implement _read get regions by reading whole planes and cutting them.
        if self.ndim == 2:
            return np.asarray(self._read(0, 1))[region]
        zs, rest = region[0], (slice(None), *region[1:])
        step = zs.step or 1
        if step == 1:
            return np.asarray(self._read(zs.start, zs.stop))[rest]
        return np.concatenate([np.asarray(self._read(z, z + 1))[rest] for z in range(zs.start, zs.stop, step)])

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
        chunks = getattr(array, "chunks", None)
        self.band_reads = not chunks or array.ndim != 3 or int(chunks[1]) < array.shape[1]
        super().__init__(path, array.shape, array.dtype, **kwargs)

    def _read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        return self._array[region]

    def close(self) -> None:
        self._array = None


class _FileVoxels:
    """C-ordered voxels at a byte offset of a file, read region by region with positioned reads.

    Reads go into fresh arrays rather than through a memory map: every page of a map that a pass touches counts as
    resident memory of the process, so converting a 1 TB raw file through a map looks like a 1 TB process.

    ``shape`` is (Z, Y, X) or (Y, X), followed by a channel axis for colour data.
    """

    def __init__(self, path: str | os.PathLike[str], offset: int, shape: Sequence[int], dtype: np.dtype,
                 spatial_ndim: int) -> None:
        self.path, self.offset, self.dtype = str(path), int(offset), np.dtype(dtype)
        self.shape = (1, *shape) if spatial_ndim == 2 else tuple(shape)
        self.flat = spatial_ndim == 2
        self._fh = open(path, "rb", buffering=0)  # held open until close()
        self._lock = threading.Lock()

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        if self.flat:
            region = (slice(0, 1), *region)
        zs, ys, xs = region
        _, ny, nx = self.shape[:3]
        inner = self.shape[3:]
        row = nx * int(np.prod(inner, dtype=np.int64)) * self.dtype.itemsize
        plane = ny * row
        planes = range(zs.start, zs.stop, zs.step or 1)
        out = np.empty((len(planes), ys.stop - ys.start, xs.stop - xs.start, *inner), self.dtype)
        if xs.start == 0 and xs.stop == nx:
            if ys.start == 0 and ys.stop == ny and planes.step == 1:
                self._fill(out, self.offset + planes.start * plane)  # one read for the whole slab
            else:
                for i, z in enumerate(planes):
                    self._fill(out[i], self.offset + z * plane + ys.start * row)
        else:
            rows = np.empty((ys.stop - ys.start, nx, *inner), self.dtype)
            for i, z in enumerate(planes):
                self._fill(rows, self.offset + z * plane + ys.start * row)
                out[i] = rows[:, xs]
        return out[0] if self.flat else out

    def _fill(self, array: np.ndarray, position: int) -> None:
        view = memoryview(array.reshape(-1).view(np.uint8))
        with self._lock:
            self._fh.seek(position)
            done = 0
            while done < len(view):
                n = self._fh.readinto(view[done:])
                if not n:
                    raise InputError(
                        f"{self.path} ended at byte {position + done} while reading: it is shorter than its shape "
                        f"and type say (truncated, or still being written?); check the file"
                    )
                done += n

    def close(self) -> None:
        self._fh.close()


class FileSource(Source):
    """Uncompressed C-ordered voxels at a byte offset of a file (raw, MetaImage, NRRD, ``.npy`` data)."""

    band_reads = True

    def __init__(self, path: str | os.PathLike[str], *, offset: int, shape: Sequence[int], dtype: np.dtype,
                 kind: str, **kwargs: Any) -> None:
        self.kind = kind
        self._data = _FileVoxels(path, offset, shape, dtype, len(shape))
        try:
            super().__init__(path, shape, dtype, **kwargs)
        except BaseException:
            self._data.close()
            raise

    def _read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        return self._data.read(region)

    def close(self) -> None:
        self._data.close()


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


def _image_error(path: Path | str, exc: Exception) -> InputError:
    return InputError(
        f"{path} is not a readable image ({type(exc).__name__}: {exc}): check the file, or give it the extension "
        f"of its real format"
    )


def _needs_imagecodecs(exc: Exception) -> bool:
    """True for tifffile's error on a compression it cannot decode without the optional imagecodecs package."""
    return "imagecodecs" in str(exc)


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


def _grey_or_colours(path: Any, shape: tuple[int, ...], axes: str, colours: bool, what: str) -> None:
    """Refuse colour images unless a colour map reads them, and anything that is not 2D/3D."""
    spatial = len(axes.replace("S", ""))
    channels = shape[axes.index("S")] if "S" in axes else 1
    if "S" in axes and not colours:
        raise InputError(
            f"{path} holds {what} of shape {shape} (axes {axes}): rockseg reads one grey value per voxel in 2D "
            f"images or 3D stacks; save it as single-channel grayscale, or map its colours to labels with "
            f"--colormap"
        )
    if spatial not in (2, 3) or channels not in (1, 2, 3, 4):
        raise InputError(
            f"{path} holds {what} of shape {shape} (axes {axes}): rockseg reads 2D images and 3D stacks of one "
            f"grey value (or one colour) per voxel; save each channel or time point as its own file"
        )


# Pillow decodes the TIFF compressions tifffile leaves to the optional imagecodecs package (LZW, PackBits, JPEG),
# and PNG. Its modes, as (dtype, channels) of the arrays _pillow_array returns.
_PILLOW_MODES = {
    "1": ("uint8", 1), "L": ("uint8", 1), "P": ("uint8", 3), "PA": ("uint8", 4), "LA": ("uint8", 2),
    "RGB": ("uint8", 3), "RGBA": ("uint8", 4), "I;16": ("uint16", 1), "I;16L": ("uint16", 1),
    "I;16B": ("uint16", 1), "I;16N": ("uint16", 1), "I": ("int32", 1), "F": ("float32", 1),
}


def _pillow_open(path: Any) -> Any:
    from PIL import Image

    # The decompression-bomb guard is for images from strangers on the web; CT slices of 20000^2 are normal.
    Image.MAX_IMAGE_PIXELS = None
    return Image.open(path)


def _pillow_mode(image: Any) -> tuple[np.dtype, int]:
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        mode = "PA"
    if mode not in _PILLOW_MODES:
        raise InputError(f"{image.filename} has image mode {mode}, which rockseg does not read: save it as grey or RGB")
    dtype, channels = _PILLOW_MODES[mode]
    return np.dtype(dtype), channels


def _pillow_array(image: Any) -> np.ndarray:
    _, channels = _pillow_mode(image)
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA" if channels == 4 else "RGB")
    array = np.asarray(image)
    return array.astype(np.uint8) if array.dtype == np.bool_ else array


class _PillowPages:
    """Pages of a TIFF decoded by Pillow (for compressions tifffile cannot decode here)."""

    def __init__(self, path: Any) -> None:
        try:
            self._image = _pillow_open(path)
        except Exception as exc:  # Pillow raises many types for a broken file
            raise _tiff_error(path, exc) from None
        self.path = path

    def read(self, keys: Sequence[int] | None) -> np.ndarray:
        frames = []
        for key in keys if keys is not None else [0]:
            try:
                self._image.seek(key)
                frames.append(_pillow_array(self._image))
            except (OSError, EOFError, ValueError) as exc:
                raise _tiff_error(self.path, exc) from None
        return frames[0] if keys is None else np.stack(frames)

    def close(self) -> None:
        self._image.close()


class TiffSource(Source):
    """A multi-page TIFF (one 2D plane per page) or a single-image TIFF; colour ones only for a colour map.

    Uncompressed contiguous data (ImageJ stacks, including those over 4 GB) is read with positioned reads of just the
    region; otherwise page ranges are decoded on demand, by tifffile or, for compressions it cannot decode without
    imagecodecs (LZW...), by Pillow.
    """

    kind = "tiff"

    def __init__(self, path: Path, *, colours: bool = False) -> None:
        import tifffile

        self._tif = self._data = self._pillow = None
        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
            page_shape = tuple(series.keyframe.shape)
            npages = len(series.pages)
            offset = series.dataoffset
            compression = self._tif.pages.first.compression
            byteorder = self._tif.byteorder
        except (tifffile.TiffFileError, ValueError, IndexError, KeyError, struct.error) as exc:
            self.close()
            raise _tiff_error(path, exc) from None
        try:
            _grey_or_colours(path, shape, axes, colours, "an image")
            s_axis = axes.find("S")
            self.channels = shape[s_axis] if s_axis >= 0 else 1
            spatial = tuple(n for i, n in enumerate(shape) if i != s_axis)
            self._s_axis = s_axis  # blocks as read have the layout of the series: move channels last
            self._page_shape = page_shape
            if offset is not None and compression == 1 and s_axis in (-1, len(shape) - 1):
                self._data = _FileVoxels(path, offset, shape, dtype.newbyteorder(byteorder), len(spatial))
                self.band_reads = True
            elif len(spatial) == 3 and npages != shape[0]:
                raise InputError(
                    f"{path} stores its {shape} volume in {npages} page(s) of shape {page_shape}: rockseg reads "
                    f"TIFF stacks with one plane per page; re-save it as a multi-page TIFF"
                )
            voxel_size, unit = _tiff_voxel_size(self._tif, len(spatial))
            super().__init__(path, spatial, dtype, voxel_size=voxel_size, voxel_unit=unit)
        except BaseException:
            self.close()
            raise

    def _pages(self, keys: Sequence[int] | None) -> np.ndarray:
        if self._pillow is None:
            try:
                if keys is None:
                    return self._tif.asarray(series=0)
                return self._tif.asarray(key=list(keys), series=0).reshape((len(keys), *self._page_shape))
            except (KeyError, ValueError, struct.error) as exc:
                if not _needs_imagecodecs(exc):
                    raise _tiff_error(self.path, exc) from None
                self._pillow = _PillowPages(self.path)
        return self._pillow.read(keys)

    def _read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        if self._data is not None:
            return self._data.read(region)
        if self.ndim == 2:
            block, rest = self._pages(None), region
        else:
            block = self._pages(range(region[0].start, region[0].stop, region[0].step or 1))
            rest = (slice(None), *region[1:])
        if self._s_axis >= 0:
            block = np.moveaxis(block, self._s_axis, -1)
        return block[rest]

    def close(self) -> None:
        for handle in (getattr(self, "_data", None), getattr(self, "_pillow", None), getattr(self, "_tif", None)):
            if handle is not None:
                handle.close()


def _slice_header(path: str, *, colours: bool, first: bool) -> tuple[tuple[int, ...], np.dtype, Any]:
    """(shape, dtype, (voxel size, unit) or None) of one 2D slice file, from its header only."""
    if path.lower().endswith(TIFF_EXTENSIONS):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, dtype, axes = tuple(series.shape), _native(np.dtype(series.dtype)), series.axes
                voxel = _tiff_voxel_size(tif, 2) if first else None
        except (tifffile.TiffFileError, ValueError, IndexError, KeyError, struct.error) as exc:
            raise _tiff_error(path, exc) from None
        if "S" in axes:
            axes_order = [axes.index(a) for a in axes if a != "S"] + [axes.index("S")]
            shape, axes = tuple(shape[i] for i in axes_order), "".join(axes[i] for i in axes_order)
    else:
        try:
            with _pillow_open(path) as image:
                dtype, channels = _pillow_mode(image)
                shape = (image.size[1], image.size[0], *((channels,) if channels > 1 else ()))
                axes = "YXS" if channels > 1 else "YX"
        except InputError:
            raise
        except Exception as exc:  # Pillow raises many types for a broken file
            raise _image_error(path, exc) from None
        voxel = None
    if len(axes.replace("S", "")) != 2 or ("S" in axes and not colours):
        raise InputError(
            f"slice {path} has shape {shape} (axes {axes}): every file of a slice folder must be one 2D grayscale "
            f"image (or, with --colormap, one colour image); convert a multi-page TIFF by giving the file itself"
        )
    return shape, dtype, voxel


def _read_slice(path: str) -> np.ndarray:
    """The image of one slice file, channels last."""
    if path.lower().endswith(TIFF_EXTENSIONS):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                plane = series.asarray()
                if "S" in series.axes and series.axes.index("S") != len(series.axes) - 1:
                    plane = np.moveaxis(plane, series.axes.index("S"), -1)
                return plane
        except (KeyError, ValueError, struct.error, tifffile.TiffFileError) as exc:
            if not _needs_imagecodecs(exc):
                raise _tiff_error(path, exc) from None
        pages = _PillowPages(path)
        try:
            return pages.read(None)
        finally:
            pages.close()
    try:
        with _pillow_open(path) as image:
            return _pillow_array(image)
    except InputError:
        raise
    except Exception as exc:  # Pillow raises many types for a broken file
        raise _image_error(path, exc) from None


class SliceStackSource(Source):
    """2D slice files (TIFF or PNG; a folder, or the files matching a glob) stacked along Z in natural order.

    Every slice header is checked when the source opens, so slices of different sizes or types are refused before
    any output exists. Slices are decoded a few at a time in threads (decoders release the GIL).
    """

    kind = "tiff-stack"

    def __init__(self, path: str, files: Sequence[str], *, colours: bool = False) -> None:
        self.files = list(files)
        self._pool: ThreadPoolExecutor | None = None
        first_shape = first_dtype = None
        voxel = None
        for i, f in enumerate(self.files):
            shape, dtype, found = _slice_header(f, colours=colours, first=i == 0)
            if i == 0:
                first_shape, first_dtype, voxel = shape, dtype, found
            elif shape != first_shape or dtype != first_dtype:
                raise InputError(
                    f"slice {f} is {shape} {dtype} but {self.files[0]} is {first_shape} {first_dtype}: "
                    f"every slice of {path} must have the same size and type; remove or fix the odd ones"
                )
        voxel_size, unit = voxel if voxel is not None else (None, None)
        if voxel_size is not None:
            voxel_size = (voxel_size[1], *voxel_size)
        self.channels = first_shape[2] if len(first_shape) == 3 else 1
        self.kind = "tiff-stack" if self.files[0].lower().endswith(TIFF_EXTENSIONS) else "png-stack"
        super().__init__(path, (len(self.files), *first_shape[:2]), first_dtype, voxel_size=voxel_size,
                         voxel_unit=unit, attrs={"slices": len(self.files)}, slab_hint=None)

    def plane_name(self, z: int) -> str:
        return f"slice {self.files[z]}"

    def _read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        files = self.files[region[0]]
        inner = (self.channels,) if self.channels > 1 else ()
        out = np.empty((len(files), *(s.stop - s.start for s in region[1:]), *inner), self.dtype)
        plane_shape = (*self.shape[1:], *inner)

        def load(i: int) -> None:
            plane = _read_slice(files[i])
            if plane.shape != plane_shape:
                raise InputError(
                    f"slice {files[i]} changed while reading: it is now {plane.shape}, not {plane_shape}"
                )
            out[i] = plane[region[1:]]

        if len(files) == 1:
            load(0)
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_SLICE_THREADS, thread_name_prefix="rockseg-slice")
            for done in self._pool.map(load, range(len(files))):
                del done
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


TiffStackSource = SliceStackSource  # the name it had when only TIFF slices were read


class ImageSource(Source):
    """One 2D image file that Pillow reads (PNG): grey, or colour for a colour map."""

    kind = "png"

    def __init__(self, path: Path, *, colours: bool = False) -> None:
        shape, dtype, _ = _slice_header(str(path), colours=colours, first=True)
        self.channels = shape[2] if len(shape) == 3 else 1
        super().__init__(path, shape[:2], dtype)

    def _read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        return _read_slice(self.path)[region]


class RawSource(FileSource):
    """Headerless binary data (optionally after ``header_bytes`` of header), read region by region."""

    def __init__(self, path: Path, *, shape: Any, dtype: Any, byte_order: str = "little",
                 header_bytes: int = 0, voxel_size: Sequence[float] | None = None,
                 voxel_unit: str | None = None, describe: str | None = None, header: Path | None = None) -> None:
        if shape is None or dtype is None:
            raise InputError(
                f"{path} is a raw file with no header: give its --shape Z,Y,X and --dtype "
                f"(one of {', '.join(DTYPE_NAMES)}), and --byte-order / --header-bytes if needed, or put a "
                f"MetaImage .mhd or NRRD .nhdr header beside it"
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
        attrs: dict[str, Any] = {"byte_order": "big" if big else "little", "header_bytes": header_bytes}
        if header is not None:
            attrs["header"] = str(header)
        super().__init__(path, offset=header_bytes, shape=shape, dtype=dtype, kind="raw", voxel_size=voxel_size,
                         voxel_unit=voxel_unit, attrs=attrs)


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
                     header_bytes=header, voxel_size=voxel_size, voxel_unit=None, header=path,
                     describe=f"the header {path.name} (DimSize {fields['DimSize']}, {fields['ElementType']})")


def _nrrd_error(path: Path, problem: str) -> InputError:
    return InputError(
        f"{path} is not an NRRD header rockseg can read ({problem}): it needs 'type', 'dimension' (2 or 3), "
        f"'sizes', 'encoding: raw' and 'endian' for types over one byte"
    )


def _read_nrrd(path: Path) -> RawSource:
    """An NRRD header: ``.nhdr`` naming its data file, or ``.nrrd`` with the data after the header."""
    fields: dict[str, str] = {}
    header_end = 0
    with open(path, "rb") as fh:
        magic = fh.readline()
        header_end += len(magic)
        if not magic.startswith(b"NRRD000"):
            raise InputError(f"{path} is not an NRRD file (it does not start with NRRD000x): check the file")
        for raw_line in fh:
            header_end += len(raw_line)
            line = raw_line.decode("latin-1").rstrip("\r\n")
            if not line.strip():
                break  # a blank line ends the header; attached data follow
            if line.startswith("#") or ":=" in line:
                continue
            key, sep, value = line.partition(":")
            if not sep:
                raise _nrrd_error(path, f"line {line[:40]!r} is not 'field: value'")
            fields[key.strip().lower()] = value.strip()
    try:
        etype = _NRRD_TYPES[fields["type"].lower()]
        ndim = int(fields["dimension"])
        sizes = [int(v) for v in fields["sizes"].split()]
    except (KeyError, ValueError) as exc:
        raise _nrrd_error(path, f"{type(exc).__name__}: {exc}") from None
    if ndim not in (2, 3) or len(sizes) != ndim:
        raise _nrrd_error(path, f"dimension {ndim} with sizes {fields['sizes']}")
    encoding = fields.get("encoding", "").lower()
    if encoding != "raw":
        raise InputError(
            f"{path} holds {encoding or 'unknown'}-encoded data: rockseg streams raw NRRD data only; re-save it with "
            f"'encoding: raw' (e.g. unu save -e raw)"
        )
    endian = fields.get("endian", "little").lower()
    datafile = fields.get("data file", fields.get("datafile"))
    if datafile is None:
        data_path, header = path, header_end
    else:
        if datafile.split()[0].upper() == "LIST" or len(datafile.split()) > 1:
            raise InputError(f"{path} splits its data over several files: rockseg reads one data file per header")
        data_path, header = path.parent / datafile, 0
        if not data_path.exists():
            raise MissingInputError(f"{path} names data file {datafile} which does not exist beside it")
    try:
        line_skip = int(fields.get("line skip", fields.get("lineskip", 0)))
        byte_skip = int(fields.get("byte skip", fields.get("byteskip", 0)))
    except ValueError as exc:
        raise _nrrd_error(path, str(exc)) from None
    if line_skip:
        with open(data_path, "rb") as fh:
            fh.seek(header)
            for _ in range(line_skip):
                header += len(fh.readline())
    shape = tuple(reversed(sizes))
    if byte_skip == -1:  # NRRD convention: the data are the last bytes of the file
        header = data_path.stat().st_size - int(np.prod(shape)) * np.dtype(etype).itemsize
    else:
        header += byte_skip
    return RawSource(data_path, shape=shape, dtype=etype, byte_order=endian, header_bytes=max(header, 0),
                     header=path, **_nrrd_voxel_size(fields, ndim),
                     describe=f"the header {path.name} (sizes {fields['sizes']}, type {fields['type']})")


def _nrrd_voxel_size(fields: dict[str, str], ndim: int) -> dict[str, Any]:
    """Voxel size (Z, Y, X) from 'spacings' or the lengths of 'space directions', in micrometres when 'space units'
    says the unit."""
    values: list[float] | None = None
    try:
        if "space directions" in fields:
            vectors = re.findall(r"\(([^)]*)\)", fields["space directions"])
            values = [math.sqrt(sum(float(c) ** 2 for c in v.split(","))) for v in vectors]
        elif "spacings" in fields:
            values = [float(v) for v in fields["spacings"].split()]
    except ValueError:
        values = None
    if not values or len(values) != ndim or not all(math.isfinite(v) and v > 0 for v in values):
        return {}
    units = re.findall(r'"([^"]*)"', fields.get("space units", fields.get("units", "")))
    size, unit = _to_um(list(reversed(values)), units[0] if units and len(set(units)) == 1 else None)
    return {"voxel_size": size, "voxel_unit": unit}


def _read_vol_info(info: Path, data_path: Path) -> RawSource:
    """A PyHST / ESRF ``.vol`` volume (float32) described by the ``.vol.info`` file beside it."""
    fields: dict[str, str] = {}
    for line in info.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    try:
        shape = (int(fields["num_z"]), int(fields["num_y"]), int(fields["num_x"]))
    except (KeyError, ValueError):
        raise InputError(f"{info} has no NUM_X, NUM_Y and NUM_Z: give --shape and --dtype for {data_path}") from None
    order = "big" if fields.get("byteorder", "LOWBYTEFIRST").upper() == "HIGHBYTEFIRST" else "little"
    try:
        size = float(fields["voxelsize"])
        voxel = {"voxel_size": (size,) * 3, "voxel_unit": "um"} if size > 0 else {}
    except (KeyError, ValueError):
        voxel = {}
    return RawSource(data_path, shape=shape, dtype="float32", byte_order=order, header=info, **voxel,
                     describe=f"the header {info.name} (NUM_Z,Y,X {','.join(map(str, shape))}, float32)")


def _header_beside(path: Path) -> RawSource | None:
    """The source described by a MetaImage, NRRD or PyHST header beside raw file ``path`` whose data file it is."""
    candidates = [path.with_suffix(".mhd"), path.with_name(path.name + ".mhd"), path.with_suffix(".nhdr"),
                  path.with_name(path.name + ".nhdr")]
    for header in candidates:
        if header.is_file():
            source = _read_metaimage(header) if header.suffix == ".mhd" else _read_nrrd(header)
            if Path(source.path).resolve() == path.resolve():
                return source
            source.close()
    info = path.with_name(path.name + ".info")
    if info.is_file():
        return _read_vol_info(info, path)
    return None


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
            chunking = var.chunking() if var.ndim == 3 else None
            hint = int(chunking[0]) if isinstance(chunking, list) else None
            self.band_reads = chunking == "contiguous" or (hint is not None and int(chunking[1]) < var.shape[1])
            super().__init__(path, var.shape, dtype, voxel_size=voxel_size, voxel_unit=unit,
                             attrs={"variable": name}, slab_hint=hint)
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

    def _read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        block = np.asarray(self._var[region])
        if block.dtype.kind == "i" and self.dtype.kind == "u":
            block = block.view(block.dtype.str.replace("i", "u"))
        return block

    def close(self) -> None:
        ds = getattr(self, "_ds", None)
        if ds is not None and ds.isopen():
            ds.close()


class ColourSource(Source):
    """Integer labels of a colour-coded label image (or a grey-coded one), mapped through a :class:`ColourMap`.

    The labels are uint8 (uint16 when a label is over 255). A voxel whose colour is not in the map stops the read
    with an :class:`~rockseg.errors.InputError` naming the colour, where it is, and how to add it.
    """

    def __init__(self, inner: Source, colormap: ColourMap) -> None:
        self._inner, self.colormap = inner, colormap
        width, channels = colormap.width, inner.channels
        if inner.dtype.kind not in "biu":
            raise InputError(
                f"{inner.path} holds {inner.dtype} values: a colour map maps integer colours or grey values; leave "
                f"out --colormap for grey-value images"
            )
        if width == 1 and channels > 2:
            raise InputError(
                f"{inner.path} is a colour image ({channels} channels) but --colormap {colormap.text!r} gives grey "
                f"values: give colours as R,G,B, e.g. --colormap '0,0,255=0;0,255,0=1'"
            )
        if width > 1 and channels < 3:
            raise InputError(
                f"{inner.path} is a grey image but --colormap {colormap.text!r} gives colours: give its grey "
                f"values, e.g. --colormap '33=0;201=1'"
            )
        if width == 4 and channels == 3:
            raise InputError(
                f"{inner.path} has no alpha channel but --colormap {colormap.text!r} gives R,G,B,A colours: give "
                f"R,G,B"
            )
        bits = 8 * inner.dtype.itemsize
        if width * bits > 64:
            raise InputError(f"{inner.path} has {bits}-bit colour channels: rockseg maps 8- and 16-bit colours only")
        colours = np.array(colormap.colours, dtype=np.int64)
        if width > 1 and colours.max() > np.iinfo(inner.dtype).max:
            raise InputError(
                f"--colormap {colormap.text!r} has a channel value over {np.iinfo(inner.dtype).max}, which "
                f"{inner.path} ({inner.dtype} channels) cannot hold: check the colours"
            )
        self._bits = bits if width > 1 else 0
        keys = self._pack(colours.astype(np.uint64) if width > 1 else colours[:, 0])
        order = np.argsort(keys)
        self._keys = keys[order]
        top = max(colormap.labels)
        self._labels = np.asarray(colormap.labels, dtype=np.uint8 if top <= 255 else np.uint16)[order]
        attrs = dict(inner.attrs)
        attrs["colormap"] = colormap.text
        if colormap.names:
            attrs[ATTR_PHASES] = {str(k): v for k, v in sorted(colormap.names.items())}
        self.kind, self.band_reads = inner.kind, inner.band_reads
        super().__init__(inner.path, inner.shape, self._labels.dtype, voxel_size=inner.voxel_size,
                         voxel_unit=inner.voxel_unit, attrs=attrs, slab_hint=inner.slab_hint)

    def _pack(self, values: np.ndarray) -> np.ndarray:
        """One integer per colour: channels side by side in a uint64 (or the grey value itself as int64)."""
        if not self._bits:
            return values.astype(np.int64)
        packed = np.zeros(values.shape[:-1], np.uint64)
        for c in range(self.colormap.width):
            packed <<= np.uint64(self._bits)
            packed |= values[..., c].astype(np.uint64)
        return packed

    def _read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        block = self._inner.read_region(region)
        if self._inner.channels > 1:
            block = block[..., : self.colormap.width] if self._bits else block[..., 0]
        packed = self._pack(block)
        index = np.searchsorted(self._keys, packed)
        index[index == len(self._keys)] = 0
        found = self._keys[index] == packed
        if not found.all():
            self._unmapped(block, ~found, region)
        return self._labels[index]

    def _unmapped(self, block: np.ndarray, missing: np.ndarray, region: tuple[slice, ...]) -> None:
        where = np.argwhere(missing)[0]
        offsets = [s.start for s in region]
        steps = [s.step or 1 for s in region]
        position = [int(o + i * st) for o, i, st in zip(offsets, where, steps)]
        colour = block[tuple(where)]
        text = _format_colour(np.atleast_1d(colour))
        bad = block[missing]
        distinct = np.unique(bad.reshape(len(bad), -1), axis=0)
        others = [c for c in (_format_colour(d) for d in distinct[:6]) if c != text][:5]
        axes = "zyx"[-len(position) :]
        at = ", ".join(f"{a}={p}" for a, p in zip(axes, position))
        source = self._inner.plane_name(position[0]) if self.ndim == 3 else self.path
        raise InputError(
            f"{source}: colour {text} at ({at}) is not in --colormap"
            + (f" (nor {'; '.join(others)})" if others else "")
            + f": add it with its label, e.g. --colormap '{self.colormap.text};{text}=LABEL'"
        )

    def plane_name(self, z: int) -> str:
        return self._inner.plane_name(z)

    def close(self) -> None:
        self._inner.close()


class RegionSource(Source):
    """A region of another source (a crop, and/or every n-th plane), read straight from the file.

    ``region`` holds one slice per axis in the coordinates of ``inner``, bounds inside its shape, a step only along
    Z. The voxel size along Z is multiplied by the step.
    """

    def __init__(self, inner: Source, region: Sequence[slice]) -> None:
        self._inner, self.region = inner, tuple(region)
        shape = [len(range(s.start, s.stop, s.step or 1)) for s in self.region]
        step = (self.region[0].step or 1) if inner.ndim == 3 else 1
        voxel_size = inner.voxel_size
        if voxel_size is not None and step > 1:
            voxel_size = (voxel_size[0] * step, *voxel_size[1:])
        attrs = dict(inner.attrs)
        attrs[ATTR_REGION] = {
            "start": [s.start for s in self.region],
            "stop": [s.stop for s in self.region],
            "step": [s.step or 1 for s in self.region],
        }
        self.kind, self.band_reads = inner.kind, inner.band_reads
        super().__init__(inner.path, shape, inner.dtype, voxel_size=voxel_size, voxel_unit=inner.voxel_unit,
                         attrs=attrs, slab_hint=inner.slab_hint if step == 1 else None)

    def _inner_region(self, region: tuple[slice, ...]) -> tuple[slice, ...]:
        out = []
        for own, sub in zip(self.region, region):
            own_step, sub_step = own.step or 1, sub.step or 1
            last = sub.start + (sub.stop - sub.start - 1) // sub_step * sub_step
            step = own_step * sub_step
            out.append(slice(own.start + sub.start * own_step, own.start + last * own_step + 1,
                             step if step > 1 else None))
        return tuple(out)

    def _read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        return self._inner.read_region(self._inner_region(region))

    def plane_name(self, z: int) -> str:
        return self._inner.plane_name(self.region[0].start + z * (self.region[0].step or 1))

    def close(self) -> None:
        self._inner.close()


def select_region(
    source: Source,
    *,
    crop: str | Sequence[slice] | None = None,
    slices: str | slice | None = None,
) -> Source:
    """The part of ``source`` inside ``crop`` and ``slices``, read on demand (the source itself when both are None).

    Parameters
    ----------
    source : any :class:`Source`.
    crop : ``"Z0:Z1,Y0:Y1,X0:X1"`` (``"Y0:Y1,X0:X1"`` for a 2D image; see :func:`rockseg.io.stores.parse_crop`) or one
        slice per axis, in voxels of the source.
    slices : planes along Z, ``"START:STOP[:STEP]"`` (see :func:`parse_slices`) or a slice, in source planes. With
        both, a plane is kept when it is in both.

    Returns
    -------
    Source
        a region source of shape (planes, rows, columns); its ``source_region`` attribute records the ``start``,
        ``stop`` and ``step`` per axis in the source, and its Z voxel size is multiplied by the step.
    """
    if crop is None and slices is None:
        return source
    if crop is None or isinstance(crop, str):
        region = list(parse_crop(crop, source.shape))
    else:
        region = [slice(*s.indices(n)[:2]) for s, n in zip(crop, source.shape)]
        if len(region) != source.ndim or any(s.stop <= s.start for s in region):
            raise InputError(f"--crop {crop!r} must give one non-empty range per axis of {source.shape}")
    if slices is not None:
        if source.ndim != 3:
            raise InputError(f"--slices picks planes of a 3D volume, but {source.path} is one 2D image: leave it out")
        wanted = parse_slices(slices)
        first, stop, step = wanted.indices(source.shape[0])
        lo, hi = region[0].start, region[0].stop
        if first < lo:
            first += -(-(lo - first) // step) * step
        stop = min(stop, hi)
        if first >= stop:
            raise InputError(
                f"--slices {slices!r} keeps no plane of {source.path}"
                + (f" inside --crop Z range {lo}:{hi}" if crop is not None else f" (Z has {source.shape[0]} planes)")
                + f": give a range of planes that exist, e.g. 0:{source.shape[0]}"
            )
        stop = first + ((stop - first - 1) // step) * step + 1  # end right after the last kept plane
        region[0] = slice(first, stop, step if step > 1 else None)
    if all(s.start == 0 and s.stop == n and (s.step or 1) == 1 for s, n in zip(region, source.shape)):
        return source
    return RegionSource(source, region)


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _stack_files(folder: Path) -> list[str]:
    """The TIFF slices of a folder, or its PNG slices when it has no TIFF, in natural order."""
    for extensions in (TIFF_EXTENSIONS, PNG_EXTENSIONS):
        files = [str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions]
        if files:
            return sorted(files, key=_natural_key)
    return []


def open_source(
    path: str | os.PathLike[str],
    *,
    shape: str | Sequence[int] | None = None,
    dtype: Any = None,
    byte_order: str = "little",
    header_bytes: int = 0,
    variable: str | None = None,
    colormap: str | ColourMap | Mapping[Any, Any] | None = None,
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
                   variable=variable, colours=cmap is not None)
    if cmap is None:
        return source
    try:
        return ColourSource(source, cmap)
    except BaseException:
        source.close()
        raise


def _open(path: str | os.PathLike[str], *, shape: Any, dtype: Any, byte_order: str, header_bytes: int,
          variable: str | None, colours: bool) -> Source:
    text = os.fspath(path)
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


def _open_npy(path: Path) -> Source:
    """A ``.npy`` file: C-ordered data read region by region, Fortran-ordered data memory-mapped."""
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY":
        raise InputError(f"{path} is not a NumPy .npy file (no NumPy header): check the file or its extension")
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            shape, fortran, dtype = readers[version](fh) if version in readers else (None, True, None)
            offset = fh.tell()
    except (ValueError, SyntaxError) as exc:
        raise InputError(f"{path} has a broken NumPy header ({exc}): save the array again with numpy.save") from None
    if fortran or dtype is None or dtype.hasobject or len(shape) not in (2, 3):
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InputError(
                f"{path} is a .npy file rockseg cannot memory-map ({exc}): save a numeric array with numpy.save"
            ) from None
        return ArraySource(array, path=str(path), kind="npy")
    needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if path.stat().st_size < needed:
        raise InputError(
            f"{path} has {path.stat().st_size} bytes but its header ({shape} {dtype}) needs {needed}: the file is "
            f"truncated; copy or save it again"
        )
    return FileSource(path, offset=offset, shape=shape, dtype=dtype, kind="npy")


# --------------------------------------------------------------------------------------------------------------------
# Streaming


@contextlib.contextmanager
def _progress_bar(description: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(nbytes)``; a rich progress bar on stderr when ``enabled``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from rockseg.progress import stderr_progress

    with stderr_progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                         TimeRemainingColumn()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _read_checked(source: Source, z0: int, z1: int, rows: tuple[int, int] | None = None) -> np.ndarray:
    """Planes ``z0:z1`` (only ``rows`` of them when given); a failed read is an InputError naming where."""
    try:
        if rows is None:
            return source.read(z0, z1)
        return source.read_region((slice(z0, z1), slice(*rows), slice(0, source.shape[2])))
    except RocksegError:
        raise
    except (OSError, RuntimeError) as exc:  # netCDF and HDF5 report broken data as RuntimeError
        raise InputError(
            f"cannot read {source.plane_name(z0)}: {exc}; check the file (and that nothing is still writing it)"
        ) from None


def _slabs(source: Source, slab: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(z0, z1, block)`` over the whole source, ``slab`` planes at a time (one block for a 2D source)."""
    for z0, z1, _y0, _y1, block in _bands(source, slab, None):
        yield z0, z1, block


def _bands(source: Source, slab: int, band: int | None) -> Iterator[tuple[int, int, int, int, np.ndarray]]:
    """``(z0, z1, y0, y1, block)`` over the whole source: ``slab`` planes at a time, in bands of ``band`` rows
    (whole planes when ``band`` is None)."""
    if source.ndim == 2:
        block = _read_checked(source, 0, 1)
        _check_block(source, block, source.shape)
        yield 0, 1, 0, source.shape[0], block
        return
    depth, rows, cols = source.shape
    band = rows if band is None else min(band, rows)
    for z0 in range(0, depth, slab):
        z1 = min(depth, z0 + slab)
        for y0 in range(0, rows, band):
            y1 = min(rows, y0 + band)
            block = _read_checked(source, z0, z1, None if band == rows else (y0, y1))
            _check_block(source, block, (z1 - z0, y1 - y0, cols))
            yield z0, z1, y0, y1, block


_END = object()


def _prefetch(items: Iterator[Any], nbytes: int | None) -> Iterator[Any]:
    """``items``, each produced in a thread while the caller handles the previous one.

    Reading (a system call or a decoder, both without the GIL) then overlaps compression and writing. Items of
    more than ``_PREFETCH_BYTES`` (or of unknown size, None) are produced in turn instead, so that two of them are
    never in memory at once.
    """
    if nbytes is None or nbytes > _PREFETCH_BYTES:
        yield from items
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="rockseg-read")
    try:
        pending = pool.submit(next, items, _END)
        while True:
            item = pending.result()
            if item is _END:
                break
            pending = pool.submit(next, items, _END)
            yield item
    finally:
        pool.shutdown(wait=True)  # a read still running finishes before its generator is closed
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _stream(source: Source, slab: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """:func:`_slabs` with the next slab read ahead (see :func:`_prefetch`)."""
    plane = int(np.prod(source.shape[1:], dtype=np.int64)) * source.dtype.itemsize
    several = source.ndim == 3 and slab < source.shape[0]
    return _prefetch(_slabs(source, slab), slab * plane if several else None)


def _band_rows(source: Source, slab: int, unit: int) -> int:
    """Rows per read for a Zarr output: whole planes when a slab fits ``_SLAB_BYTES`` or the source reads whole
    planes anyway; else the most whole ``unit`` rows (a chunk or shard row) that fit, at least one unit."""
    rows = source.shape[1]
    row_bytes = slab * source.shape[2] * source.dtype.itemsize
    if not source.band_reads or rows * row_bytes <= _SLAB_BYTES:
        return rows
    return min(rows, max(unit, _SLAB_BYTES // row_bytes // unit * unit))


def _check_block(source: Source, block: np.ndarray, shape: tuple[int, ...]) -> None:
    if block.shape != shape:
        raise InputError(f"{source.path} gave a block of shape {block.shape} where {shape} was expected")


def _write_error(dest: Path, exc: OSError) -> OutputWriteError:
    code = exc.errno
    reason = exc.strerror or str(exc) or type(exc).__name__
    name = errno.errorcode.get(code, "") if code else ""
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = (f"free space on the disk of {dest.parent.absolute()} (or raise the quota), or write the output to "
               f"another disk, then run again")
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "write the output to a folder you may write to"
    else:
        fix = "check the disk and run again"
    return OutputWriteError(
        f"cannot write {dest}: {reason}{f' ({name})' if name else ''}; the partial output was removed: {fix}"
    )


@contextlib.contextmanager
def _writing(dest: Path) -> Iterator[None]:
    """Turn a failed write (full disk, quota, permissions...) into one OutputWriteError naming ``dest``."""
    try:
        yield
    except RocksegError:
        raise
    except OSError as exc:
        raise _write_error(dest, exc) from None


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
    })
    attrs.update(extra or {})
    return attrs


def write_zarr(
    source: Source | Any,
    dest: str | os.PathLike[str],
    *,
    chunks: Sequence[int] | str | None = None,
    shards: Sequence[int] | str | None = None,
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
    progress : show a progress bar on stderr.

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
    grid = shards or chunks
    slab = grid[0]
    if source.ndim == 3:
        band = _band_rows(source, slab, grid[1])
        several = band < source.shape[1] or slab < source.shape[0]
        nbytes = slab * band * source.shape[2] * source.dtype.itemsize if several else None
    else:
        band, nbytes = source.shape[0], None
    with _writing(dest), atomic_output(dest, overwrite=overwrite) as tmp:
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
    return zarr.open_array(store=str(dest), mode="r+")


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


def _write_file(path: Path, *parts: Any) -> None:
    """Write the buffers ``parts`` one after the other into a new file ``path``."""
    with open(path, "wb") as fh:
        for data in parts:
            fh.write(data)


def _morton_order(shape: Sequence[int]) -> list[tuple[int, ...]]:
    """The positions of a grid of ``shape`` in zarr's (compressed) Morton order: the bits of the coordinates
    interleaved, the first axis first, an axis dropping out once its bits are used up."""
    bits = [(int(n) - 1).bit_length() for n in shape]

    def code(position: tuple[int, ...]) -> int:
        out = shift = 0
        for bit in range(max(bits, default=0)):
            for axis, used in enumerate(bits):
                if bit < used:
                    out |= ((position[axis] >> bit) & 1) << shift
                    shift += 1
        return out

    return sorted(np.ndindex(*shape), key=code)


_EMPTY = np.iinfo(np.uint64).max  # a shard index entry for a chunk that is not stored


class _ChunkFiles:
    """The chunk (or shard) files of a new Zarr v3 array in a local folder, encoded and written without zarr.

    zarr's ``array[region] = block`` runs its codecs through asyncio on a few worker threads and writes each chunk
    to a temporary file that it then renames; on 16-bit data it reached about 200 MB/s here where one core
    compresses 280 MB/s. This writer encodes with the same numcodecs compressors the array's codecs use, with the
    same settings, in a pool of threads over whole chunks, and writes the bytes straight to the file zarr would
    read. With the sharding codec, the encoded chunks of a shard are laid out as zarr lays them out (Morton order,
    the index of offsets and lengths at the end with its CRC32C), one file per shard. The files are byte for byte
    what zarr writes (a test compares them). :meth:`of` returns None for codec chains it does not know, and the
    caller then writes through zarr.
    """

    def __init__(self, array: zarr.Array, root: Path, dtype: np.dtype, compressor: Any,
                 chunks: tuple[int, ...], shards: tuple[int, ...] | None) -> None:
        self.root = Path(root)
        self.shape = tuple(int(n) for n in array.shape)
        self.chunks = chunks
        self.shards = shards
        self.dtype = dtype
        self.fill = array.metadata.fill_value
        self._key = array.metadata.encode_chunk_key
        self._compressor = compressor
        self._folders: set[Path] = set()
        self._order = _morton_order([s // c for s, c in zip(shards, chunks)]) if shards else []

    @classmethod
    def of(cls, array: zarr.Array, root: Path) -> _ChunkFiles | None:
        """The writer for ``array`` (a store just created in the folder ``root``), or None when zarr must write."""
        meta = array.metadata
        if getattr(meta, "zarr_format", None) != 3 or not isinstance(array.store, zarr.storage.LocalStore):
            return None
        codecs = list(meta.codecs)
        grid = tuple(int(n) for n in meta.chunk_grid.chunk_shape)
        shards = None
        if len(codecs) == 1 and type(codecs[0]) is zarr.codecs.ShardingCodec:
            sharding = codecs[0]
            index = list(sharding.index_codecs)
            if (sharding.index_location.value != "end" or len(index) != 2
                    or type(index[0]) is not zarr.codecs.BytesCodec or index[0].endian.value != "little"
                    or type(index[1]) is not zarr.codecs.Crc32cCodec):
                return None
            if importlib.util.find_spec("google_crc32c") is None:  # zarr's CRC32C of the shard index
                return None
            codecs, shards, grid = list(sharding.codecs), grid, tuple(int(n) for n in sharding.chunk_shape)
        found = cls._codecs(codecs, np.dtype(array.dtype))
        if found is None:
            return None
        return cls(array, root, *found, chunks=grid, shards=shards)

    @staticmethod
    def _codecs(codecs: list[Any], dtype: np.dtype) -> tuple[np.dtype, Any] | None:
        """The stored dtype (byte order) and the numcodecs compressor (or None) of a chain ``bytes[, compressor]``;
        None for any other chain."""
        import numcodecs

        if not codecs or type(codecs[0]) is not zarr.codecs.BytesCodec or len(codecs) > 2:
            return None  # transposes, checksums and other chains are zarr's business
        endian = codecs[0].endian
        order = ">" if endian is not None and endian.value == "big" else "<"
        dtype = dtype.newbyteorder(order) if dtype.itemsize > 1 else dtype
        rest = codecs[1:]
        if not rest:
            return dtype, None
        if type(rest[0]) is zarr.codecs.BloscCodec:
            c = rest[0]
            shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
                       "bitshuffle": numcodecs.Blosc.BITSHUFFLE}[c.shuffle.value]
            return dtype, numcodecs.Blosc(cname=c.cname.value, clevel=c.clevel, shuffle=shuffle,
                                          blocksize=c.blocksize, typesize=c.typesize)
        if type(rest[0]) is zarr.codecs.ZstdCodec:
            return dtype, numcodecs.Zstd(level=rest[0].level, checksum=rest[0].checksum)
        return None

    def _path(self, index: tuple[int, ...]) -> Path:
        path = self.root / self._key(index)
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(path.parent)
        return path

    def submit(self, pool: ThreadPoolExecutor, writer: ThreadPoolExecutor, block: np.ndarray, origin: Sequence[int],
               acc: IntensityAccumulator | None) -> tuple[list[Any], list[Any]]:
        """Submit the chunks of ``block`` to ``pool`` (and, with shards, the shard files to ``writer``).

        ``block`` covers whole chunks (whole shards) from ``origin``, except at the far faces of the array.
        ``acc``: the statistics that the tasks update (thread-safe ones only), or None.

        Returns the futures of the chunk tasks, and those of the shard files (none without shards).
        """
        unit = self.shards or self.chunks
        first = [o // u for o, u in zip(origin, unit)]
        count = [-(-n // u) for n, u in zip(block.shape, unit)]
        chunks, files = [], []
        for offset in np.ndindex(*count):
            index = tuple(f + o for f, o in zip(first, offset))
            corner = tuple(o * u for o, u in zip(offset, unit))
            if self.shards is None:
                local = tuple(slice(c, c + n) for c, n in zip(corner, self.chunks))
                chunks.append(pool.submit(self._write, block, local, self._path(index), acc))
                continue
            parts = {}
            for position in self._order:  # the chunks of the shard that hold voxels of the array
                start = [c + p * n for c, p, n in zip(corner, position, self.chunks)]
                if all(o + s < n for o, s, n in zip(origin, start, self.shape)):
                    local = tuple(slice(s, s + n) for s, n in zip(start, self.chunks))
                    parts[position] = pool.submit(self._encode, block, local, acc)
            chunks.extend(parts.values())
            files.append(writer.submit(self._write_shard, self._path(index), parts))
        return chunks, files

    def _encode(self, block: np.ndarray, local: tuple[slice, ...], acc: IntensityAccumulator | None) -> Any:
        part = block[local]
        if part.shape == self.chunks:
            chunk = np.ascontiguousarray(part)
            if acc is not None:
                acc.update(chunk)
        else:  # an edge chunk is stored whole, filled beyond the array as zarr does
            chunk = np.full(self.chunks, self.fill, block.dtype)
            chunk[tuple(slice(0, n) for n in part.shape)] = part
            if acc is not None:
                acc.update(part)
        chunk = chunk.astype(self.dtype, copy=False)  # the stored byte order (a no-op on little-endian machines)
        return chunk if self._compressor is None else self._compressor.encode(chunk)

    def _write(self, block: np.ndarray, local: tuple[slice, ...], path: Path, acc: IntensityAccumulator | None) -> None:
        _write_file(path, self._encode(block, local, acc))

    def _write_shard(self, path: Path, parts: dict[tuple[int, ...], Any]) -> None:
        """Write one shard file: its chunks (futures of their bytes) in Morton order, then the index."""
        import google_crc32c

        index = np.full((*(s // c for s, c in zip(self.shards, self.chunks)), 2), _EMPTY, dtype="<u8")
        data, offset = [], 0
        for position, future in parts.items():
            encoded = memoryview(future.result()).cast("B")
            index[position] = (offset, encoded.nbytes)
            data.append(encoded)
            offset += encoded.nbytes
        table = index.tobytes()
        _write_file(path, *data, table, np.uint32(google_crc32c.value(table)).astype("<u4").tobytes())


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


def _check_export_outputs(dest: Path, kind: str, overwrite: bool) -> None:
    check_new_output(dest, overwrite=overwrite)
    if kind == "raw":
        check_new_output(dest.with_suffix(".mhd"), overwrite=overwrite)


def _export_source(source: Source, dest: Path, kind: str, *, overwrite: bool, progress: bool) -> None:
    writers = {"tiff": _write_tiff, "netcdf": _write_netcdf, "raw": _write_raw, "npy": _write_npy}
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
        for z0, z1, block in _stream(source, slab):
            block = block.astype(dtype, copy=False)
            if source.ndim == 2:
                var[...] = block
            else:
                var[z0:z1] = block
            advance(block.nbytes)


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
    colormap: str | ColourMap | Mapping[Any, Any] | None = None,
    phases: str | Mapping[Any, Any] | None = None,
    crop: str | Sequence[slice] | None = None,
    slices: str | slice | None = None,
    chunks: Sequence[int] | str | None = None,
    shards: Sequence[int] | str | None = None,
    compressor: str = "blosc-zstd",
    voxel_size: float | Sequence[float] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Convert a volume file to a Zarr store, or export it to another format (``rockseg convert SRC DEST``).

    Parameters
    ----------
    src : see :func:`open_source` (the raw options ``shape``, ``dtype``, ``byte_order``, ``header_bytes``, the
        netCDF ``variable`` and ``colormap`` are passed to it).
    dest : a ``.zarr`` store, or ``.tif``, ``.nc``, ``.raw`` (+ ``.mhd``), ``.npy`` (see :func:`export`).
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
    progress : show a progress bar on stderr.

    Returns
    -------
    dict
        ``dest``, ``source``, ``format`` (of the source), ``shape``, ``dtype``, ``bytes``, ``seconds`` and
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
    with open_source(src, shape=shape, dtype=dtype, byte_order=byte_order, header_bytes=header_bytes,
                     variable=variable, colormap=cmap) as opened:
        override = _check_voxel_size(voxel_size, opened.ndim)
        if override is not None:  # the source's voxels: a region with a Z step scales it
            opened.voxel_size, opened.voxel_unit = override, "um"
        source = select_region(opened, crop=crop, slices=slices)
        phase_names = {**(cmap.names if cmap is not None else {}), **names}
        extra = {ATTR_PHASES: {str(k): v for k, v in sorted(phase_names.items())}} if phase_names else None
        if kind == "zarr":
            chunks = _check_chunks(chunks, source.shape)
            write_zarr(source, dest, chunks=chunks, shards=shards, compressor=compressor, attrs=extra,
                       overwrite=overwrite, progress=progress)
        else:
            _export_source(source, dest, kind, overwrite=overwrite, progress=progress)
        seconds = time.perf_counter() - start
        rate = float(f"{source.nbytes / 1e6 / max(seconds, 1e-9):.3g}")
        summary = {
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
        if isinstance(source, RegionSource):
            summary["region"] = source.attrs[ATTR_REGION]
        if phase_names:
            summary["phases"] = {str(k): v for k, v in sorted(phase_names.items())}
        return summary
