"""Fixtures of the rockseg.io tests: a small Zarr store with a voxel size, and the real sandstone data."""

from __future__ import annotations

import pytest
import zarr

from tests.io.samples import VERSA, random_volume


@pytest.fixture
def store(tmp_path):
    vol = random_volume((9, 10, 11), "uint16")
    vol[0, 0, 0] = 65535
    arr = zarr.create_array(store=str(tmp_path / "src.zarr"), shape=vol.shape, chunks=(4, 4, 4), dtype=vol.dtype)
    arr[:] = vol
    arr.attrs.update({"voxel_size": [3.0, 2.0, 1.0], "voxel_unit": "um"})
    return arr, vol


@pytest.fixture
def versa():
    if not (VERSA / "images").is_dir() or not (VERSA / "slices_images.tif").is_file():
        pytest.skip(f"real test data not found in {VERSA}")
    return VERSA
