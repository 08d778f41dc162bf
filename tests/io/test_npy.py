"""Tests of rockseg.io.npy: NumPy files read region by region, or memory-mapped when Fortran-ordered."""

from __future__ import annotations

import numpy as np
import pytest

from rockseg.io.conversion import convert
from rockseg.io.opening import open_source
from tests.io.samples import entries, random_volume, read_zarr


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_npy_to_zarr_exact_with_uneven_chunks(tmp_path, dtype):
    vol = random_volume((13, 17, 19), dtype)
    np.save(tmp_path / "vol.npy", vol)
    summary = convert(tmp_path / "vol.npy", tmp_path / "vol.zarr", chunks=(5, 6, 7))
    out = read_zarr(tmp_path / "vol.zarr")
    assert out.metadata.zarr_format == 3
    assert out.dtype == vol.dtype and out.shape == vol.shape and out.chunks == (5, 6, 7)
    np.testing.assert_array_equal(out[:], vol)
    assert summary["shape"] == [13, 17, 19] and summary["dtype"] == dtype and summary["format"] == "npy"
    assert summary["seconds"] >= 0 and summary["MB/s"] > 0 and summary["mb_per_s"] == summary["MB/s"]
    attrs = dict(out.attrs)
    assert attrs["source"] == str((tmp_path / "vol.npy").absolute())
    assert attrs["dtype"] == dtype
    assert attrs["rockseg"]["version"]
    stats = attrs["intensity"]
    assert stats["min"] == vol.min() and stats["max"] == vol.max()
    assert stats["mean"] == pytest.approx(vol.astype(np.float64).mean(), rel=1e-12)
    assert stats["std"] == pytest.approx(vol.astype(np.float64).std(), rel=1e-9)
    assert "voxel_size" not in attrs  # a .npy records none
    assert entries(tmp_path) == {"vol.npy", "vol.zarr"}


def test_npy_is_memory_mapped_and_fortran_order_kept(tmp_path):
    vol = np.asfortranarray(random_volume((6, 7, 8), "uint16"))
    np.save(tmp_path / "f.npy", vol)
    with open_source(tmp_path / "f.npy") as src:
        assert isinstance(src._array, np.memmap)
        np.testing.assert_array_equal(src.read(2, 5), vol[2:5])
    convert(tmp_path / "f.npy", tmp_path / "f.zarr")
    np.testing.assert_array_equal(read_zarr(tmp_path / "f.zarr")[:], vol)
