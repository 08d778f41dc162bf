"""What every reader returns: a :class:`Source`, a volume read region by region on demand, and the sources that
every format shares.

- :class:`Source`: shape, native dtype, voxel size (micrometres when the unit is known), attributes, and
  :meth:`Source.read` / :meth:`Source.read_region`, which a reader implements through ``_read`` or ``_read_region``;
- :class:`ArraySource`: an array already open (NumPy, memory-mapped or not, or a Zarr store: :func:`_array_source`);
- :class:`FileSource`: uncompressed C-ordered voxels at a byte offset of a file, read with positioned reads
  (:class:`_FileVoxels`), never through a memory map;
- :class:`RegionSource` and :func:`select_region`: a crop and/or every n-th plane of another source, read straight
  from its file.

Voxel sizes are kept in micrometres: a source's :attr:`Source.voxel_size` is per axis (Z, Y, X) in ``"um"`` when
the file says its unit, and the value as recorded (with ``voxel_unit`` None) when it does not.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from rockseg.errors import InputError
from rockseg.io.options import DTYPE_NAMES, _native, parse_slices
from rockseg.io.stores import ATTR_REGION, ATTR_VOXEL_SIZE, ATTR_VOXEL_UNIT, parse_crop

_UNIT_TO_UM = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0,
    "micrometer": 1.0, "micrometre": 1.0, "micrometers": 1.0, "micrometres": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4,
    "m": 1e6, "meter": 1e6, "metre": 1e6,
    "inch": 25400.0, "in": 25400.0,
}


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
        region = list(parse_crop(crop, source.shape, volume=source.path))
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
