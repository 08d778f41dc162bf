"""Headerless binary volumes as sources, and the headers that describe them: raw files with ``--shape`` and
``--dtype``, MetaImage (``.mhd`` / ``.mha``), NRRD (``.nhdr`` / ``.nrrd``, raw encoding) and PyHST ``.vol.info``.

A raw file's size is checked against its shape and type before anything is read, with the options that would fit in
the error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rockseg.errors import InputError, MissingInputError
from rockseg.io.options import DTYPE_NAMES, _parse_byte_order, parse_dtype, parse_shape
from rockseg.io.sources import FileSource, _to_um

RAW_EXTENSIONS = (".raw", ".bin", ".vol")
METAIMAGE_EXTENSIONS = (".mhd", ".mha")
NRRD_EXTENSIONS = (".nhdr", ".nrrd")

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
