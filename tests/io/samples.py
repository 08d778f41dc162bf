"""Sample volumes and files, and the helpers that the tests of rockseg.io share."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import zarr

from rockseg.errors import RocksegError
from rockseg.io import chunk_encoder
from rockseg.io.conversion import convert
from rockseg.io.sources import Source

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
VERSA = DATA / "sandstone-versa"
BEREA = DATA / "berea-400" / "berea_pore.tif"
rng = np.random.default_rng(1234)


def random_volume(shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.normal(100, 30, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape, dtype=dtype, endpoint=False)


def entries(folder: Path) -> set[str]:
    return set(os.listdir(folder))


def read_zarr(path) -> zarr.Array:
    return zarr.open_array(store=str(path), mode="r")


def expect_error(tmp_path, exc_type, pattern, src, dest_name="out.zarr", **kwargs):
    before = entries(tmp_path)
    with pytest.raises(exc_type, match=pattern) as info:
        convert(src, tmp_path / dest_name, **kwargs)
    assert isinstance(info.value, RocksegError)
    assert "\n" not in str(info.value)
    assert entries(tmp_path) == before  # no DEST, no temporary store
    return str(info.value)


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def write_netcdf(path, variables, *, fmt="NETCDF4", global_attrs=None):
    """variables: name -> (array, dims, attrs); arrays of any ndim."""
    with netCDF4.Dataset(path, "w", format=fmt) as ds:
        for array, dims, _ in variables.values():
            for d, n in zip(dims, array.shape):
                if d not in ds.dimensions:
                    ds.createDimension(d, n)
        for name, (array, dims, attrs) in variables.items():
            store_dtype = attrs.pop("_store_dtype", array.dtype)
            var = ds.createVariable(name, store_dtype, dims)
            var.set_auto_maskandscale(False)
            for k, v in attrs.items():
                var.setncattr(k, v)
            var[...] = array.view(store_dtype) if store_dtype != array.dtype else array
        for k, v in (global_attrs or {}).items():
            ds.setncattr(k, v)


PALETTE = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 0)]
PALETTE_TEXT = "0,0,255=0:pore;0,255,0=1:clay;255,0,0=2:quartz;255,255,0=3:pyrite"


def rgb_labels(shape, palette, seed=0):
    """A random label volume and its colour image (palette: label -> colour tuple)."""
    labels = np.random.default_rng(seed).integers(0, len(palette), shape).astype(np.uint8)
    colours = np.array(palette, np.uint8)[labels]
    return labels, colours


class CountingSource(Source):
    """A source that records what is read, to check that writers stream in slabs."""

    def __init__(self, vol):
        super().__init__("counting", vol.shape, vol.dtype)
        self.vol, self.reads = vol, []

    def _read(self, z0, z1):
        self.reads.append((z0, z1))
        return self.vol[z0:z1]


class BandSource(Source):
    """A source that reads bands of rows cheaply and records the regions read."""

    band_reads = True

    def __init__(self, vol):
        super().__init__("bands", vol.shape, vol.dtype)
        self.vol, self.regions = vol, []

    def _read_region(self, region):
        self.regions.append(tuple((s.start, s.stop) for s in region))
        return self.vol[region]


def spy_on_writes(monkeypatch) -> list[str]:
    """Record the store keys of the chunk or shard files written, by rockseg's writer or by zarr."""
    writes = []
    original_file, original_set = chunk_encoder._write_file, zarr.storage.LocalStore.set

    def write_file(path, *parts):
        writes.append("/".join(Path(path).parts[-4:]))
        original_file(path, *parts)

    async def spy(self, key, value):
        writes.append(key)
        return await original_set(self, key, value)

    monkeypatch.setattr(chunk_encoder, "_write_file", write_file)
    monkeypatch.setattr(zarr.storage.LocalStore, "set", spy)
    return writes
