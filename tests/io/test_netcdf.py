"""Tests of rockseg.io.netcdf: netCDF3 and netCDF4 variables, their voxel sizes and the variable errors."""

from __future__ import annotations

import netCDF4
import numpy as np
import pytest

from rockseg.errors import InputError
from rockseg.io.conversion import convert
from tests.io.samples import entries, random_volume, read_zarr, rng, write_netcdf


def test_netcdf4_to_zarr_picks_the_3d_variable_and_voxel_size(tmp_path):
    vol = random_volume((7, 8, 9), "uint16")
    vol[0, 0, :3] = 65535  # the netCDF default fill value must come through as data
    write_netcdf(tmp_path / "t.nc", {
        "z": (np.arange(7.0), ("tomo_zdim",), {}),
        "tomo": (vol, ("tomo_zdim", "tomo_ydim", "tomo_xdim"), {}),
        "slice": (vol[0], ("tomo_ydim", "tomo_xdim"), {}),
    }, global_attrs={"voxel_size_xyz": np.array([0.003, 0.002, 0.001]), "voxel_unit": "mm"})
    summary = convert(tmp_path / "t.nc", tmp_path / "t.zarr", chunks=(3, 3, 3))
    out = read_zarr(tmp_path / "t.zarr")
    assert summary["format"] == "netcdf" and out.dtype == np.uint16
    np.testing.assert_array_equal(out[:], vol)
    assert out.attrs["voxel_size"] == pytest.approx([1.0, 2.0, 3.0])  # (Z, Y, X) in micrometres
    assert out.attrs["voxel_unit"] == "um"
    assert out.attrs["rockseg"]["variable"] == "tomo"


def test_netcdf3_classic_with_unsigned_bytes_and_shorts(tmp_path):
    labels = rng.integers(0, 256, (5, 6, 7), dtype=np.uint8)
    grey = random_volume((5, 6, 7), "int16")
    write_netcdf(tmp_path / "c.nc", {
        "labels": (labels, ("z", "y", "x"), {"_Unsigned": "true", "_store_dtype": np.dtype("i1")}),
        "grey": (grey, ("z", "y", "x"), {"voxel_size": 4.0, "voxel_unit": "um"}),
    }, fmt="NETCDF3_CLASSIC")
    with netCDF4.Dataset(tmp_path / "c.nc") as ds:
        assert ds.data_model == "NETCDF3_CLASSIC"
    convert(tmp_path / "c.nc", tmp_path / "l.zarr", variable="labels")
    convert(tmp_path / "c.nc", tmp_path / "g.zarr", variable="grey")
    out_l, out_g = read_zarr(tmp_path / "l.zarr"), read_zarr(tmp_path / "g.zarr")
    assert out_l.dtype == np.uint8 and out_g.dtype == np.int16
    np.testing.assert_array_equal(out_l[:], labels)
    np.testing.assert_array_equal(out_g[:], grey)
    assert out_g.attrs["voxel_size"] == [4.0, 4.0, 4.0]


def test_netcdf_variable_errors_list_the_variables(tmp_path):
    a = random_volume((3, 4, 5), "uint8")
    write_netcdf(tmp_path / "two.nc", {"tomo": (a, ("z", "y", "x"), {}), "mask": (a, ("z", "y", "x"), {})})
    before = entries(tmp_path)
    with pytest.raises(InputError, match=r"2 3D variables \(tomo, mask\).*--variable"):
        convert(tmp_path / "two.nc", tmp_path / "o.zarr")
    with pytest.raises(InputError, match=r"no variable 'tomogram'.*tomo \(3, 4, 5\) uint8, mask") as info:
        convert(tmp_path / "two.nc", tmp_path / "o.zarr", variable="tomogram")
    assert "two.nc" in str(info.value)
    assert entries(tmp_path) == before
