"""HDF5 and NeXus files (what synchrotron beamlines write) as sources and as an export target, through h5py.

- :class:`Hdf5Source`: one 2D or 3D numeric dataset (the one named by ``dataset``, else the only 3D one, else the
  only 2D one; several candidates are listed in the error), read slab by slab along its chunks so that chunked and
  compressed datasets of any size stay bounded in memory; the voxel size from rockseg's own attributes or the usual
  beamline ones (DXchange ``resolution``, ``pixel_size`` / ``voxel_size`` with ``units``).
- :func:`write_hdf5`: an export, the volume as dataset ``/volume`` (chunked, gzip level 1 with shuffle: every HDF5
  reader decodes it) with ``voxel_size`` (Z, Y, X) and ``voxel_unit`` attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rockseg.errors import InputError
from rockseg.io.sources import Source, _to_um, _voxel_from_attrs
from rockseg.io.stores import ATTR_VOXEL_SIZE, ATTR_VOXEL_UNIT
from rockseg.io.streaming import _stream_into

HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf", ".he5", ".nxs")

# The dataset an export writes, and the chunk cache of a read (one slab of chunks is read at a time).
EXPORT_DATASET = "volume"
_CHUNK_CACHE_BYTES = 64 << 20
# Places where beamline files record the voxel size (DXchange: APS 2-BM, 32-ID; TomoPy and tomocupy outputs).
_VOXEL_PATHS = ("measurement/instrument/detection_system/objective/resolution",
                "measurement/instrument/detector/pixel_size", "pixel_size", "voxel_size")


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        raise InputError("reading or writing HDF5 needs the h5py package: pip install h5py") from None
    return h5py


class Hdf5Source(Source):
    """A 2D or 3D numeric dataset of an HDF5 (or NeXus) file, read slab by slab.

    A chunked dataset is read in slabs of its own chunk length along Z (``slab_hint``), each chunk decoded once.
    """

    kind = "hdf5"

    def __init__(self, path: Path, dataset: str | None = None) -> None:
        h5py = _h5py()
        try:
            self._file = h5py.File(path, "r", rdcc_nbytes=_CHUNK_CACHE_BYTES)
        except OSError as exc:
            raise InputError(
                f"{path} is not a readable HDF5 file ({exc}): check the file, or give it the extension of its real "
                f"format"
            ) from None
        try:
            name = self._pick(path, dataset)
            self._data = self._file[name]
            chunks = self._data.chunks
            hint = int(chunks[0]) if chunks and self._data.ndim == 3 else None
            self.band_reads = chunks is None or self._data.ndim != 3 or int(chunks[1]) < self._data.shape[1]
            voxel_size, unit = self._voxel_size(self._data)
            super().__init__(path, self._data.shape, self._data.dtype, voxel_size=voxel_size, voxel_unit=unit,
                             attrs={"dataset": name}, slab_hint=hint)
        except BaseException:
            self.close()
            raise

    def _candidates(self) -> dict[str, Any]:
        h5py = _h5py()
        found: dict[str, Any] = {}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biuf" and obj.ndim in (2, 3):
                found["/" + name] = obj

        self._file.visititems(visit)
        return found

    def _describe(self, found: dict[str, Any]) -> str:
        return ", ".join(f"{n} {tuple(d.shape)} {d.dtype}" for n, d in found.items()) or "none"

    def _pick(self, path: Path, dataset: str | None) -> str:
        found = self._candidates()
        if dataset is not None:
            name = "/" + dataset.lstrip("/")
            if name not in found:
                what = "has no 2D or 3D numeric dataset" if name in self._file else "has no dataset"
                raise InputError(
                    f"{path} {what} {dataset!r}: choose one with --dataset: {self._describe(found)}"
                )
            return name
        for ndim in (3, 2):
            names = [n for n, d in found.items() if d.ndim == ndim]
            if len(names) == 1:
                return names[0]
            if len(names) > 1:
                listed = self._describe({n: found[n] for n in names})
                raise InputError(f"{path} has {len(names)} {ndim}D datasets: choose one with --dataset: {listed}")
        raise InputError(f"{path} has no 2D or 3D numeric dataset to convert")

    def _voxel_size(self, data: Any) -> tuple[tuple[float, ...] | None, str | None]:
        """rockseg's attributes on the dataset or its parents, else a beamline's recorded pixel size (cubic)."""
        ndim = data.ndim
        holder = data
        while True:
            attrs = {k: _plain(v) for k, v in holder.attrs.items()}
            if ATTR_VOXEL_SIZE in attrs:
                size, unit = _voxel_from_attrs({ATTR_VOXEL_SIZE: attrs[ATTR_VOXEL_SIZE],
                                                ATTR_VOXEL_UNIT: attrs.get(ATTR_VOXEL_UNIT, attrs.get("units"))},
                                               ndim)
                if size is not None:
                    return size, unit
            if holder.name == "/":
                break
            holder = holder.parent
        for where in _VOXEL_PATHS:
            item = self._file.get(where)
            if item is None or not hasattr(item, "shape") or item.size != 1 or item.dtype.kind not in "iuf":
                continue
            value = float(np.asarray(item[()]).ravel()[0])
            if value > 0 and np.isfinite(value):
                return _to_um([value] * ndim, _plain(item.attrs.get("units", item.attrs.get("unit", "um"))))
        return None, None

    def _read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        return self._data[region]

    def close(self) -> None:
        handle = getattr(self, "_file", None)
        if handle is not None and handle.id.valid:
            handle.close()


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a Python value (bytes decoded, arrays as lists)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.ndim else _plain(value[()])
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_hdf5(source: Source, tmp: Path, slab: int, advance: Callable[[int], None]) -> None:
    """Write ``source`` as dataset ``/volume`` of a new HDF5 file ``tmp``, slab by slab (the exporters' writer)."""
    h5py = _h5py()
    dtype = np.dtype(np.uint8) if source.dtype == np.bool_ else source.dtype
    chunks = tuple(min(n, c) for n, c in zip(source.shape, (max(1, min(slab, 64)), 256, 256)[-source.ndim :]))
    with h5py.File(tmp, "w") as fh:
        data = fh.create_dataset(EXPORT_DATASET, shape=source.shape, dtype=dtype, chunks=chunks,
                                 compression="gzip", compression_opts=1, shuffle=True)
        fh.attrs["source"] = source.path
        if source.voxel_size is not None:
            data.attrs[ATTR_VOXEL_SIZE] = np.array(source.voxel_size, np.float64)
            if source.voxel_unit:
                data.attrs[ATTR_VOXEL_UNIT] = source.voxel_unit
        _stream_into(data, source, slab, dtype, advance)
