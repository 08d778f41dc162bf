"""Tests of rockseg.io.exporters: TIFF, netCDF, raw + MetaImage and NumPy exports, streamed, and full disks."""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import pytest
import tifffile

from rockseg.errors import OutputWriteError
from rockseg.io import exporters
from rockseg.io.conversion import convert
from rockseg.io.exporters import export
from rockseg.io.opening import open_source
from rockseg.io.zarr_writer import write_zarr
from tests.io.samples import CountingSource, enospc, entries, expect_error, random_volume, read_zarr


def test_export_tiff(tmp_path, store):
    arr, vol = store
    assert export(arr, tmp_path / "o.tif") == tmp_path / "o.tif"
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o.tif"), vol)
    with tifffile.TiffFile(tmp_path / "o.tif") as tif:
        assert len(tif.pages) == 9
        assert tif.imagej_metadata["spacing"] == 3.0 and tif.imagej_metadata["unit"] == "um"
        num, den = tif.pages.first.tags["XResolution"].value
        assert den / num == pytest.approx(1.0, rel=1e-6)
    with open_source(tmp_path / "o.tif") as src:
        assert src.voxel_size == pytest.approx((3.0, 2.0, 1.0), rel=1e-6)


@pytest.mark.parametrize("dtype", ["int16", "float64", "bool"])
def test_export_tiff_other_types(tmp_path, dtype):
    vol = random_volume((4, 5, 6), "uint8") > 100 if dtype == "bool" else random_volume((4, 5, 6), dtype)
    export(vol, tmp_path / "o.tiff", voxel_size=0.5)
    back = tifffile.imread(tmp_path / "o.tiff")
    expected = vol.astype(np.uint8) if dtype == "bool" else vol
    assert back.dtype == expected.dtype
    np.testing.assert_array_equal(back, expected)
    with open_source(tmp_path / "o.tiff") as src:
        assert src.voxel_size == pytest.approx((0.5, 0.5, 0.5))


def test_export_netcdf(tmp_path, store):
    arr, vol = store
    export(arr, tmp_path / "o.nc")
    with netCDF4.Dataset(tmp_path / "o.nc") as ds:
        assert ds.data_model == "NETCDF4"
        var = ds.variables["volume"]
        var.set_auto_mask(False)
        assert var.dimensions == ("z", "y", "x") and var.dtype == np.uint16
        np.testing.assert_array_equal(var[:], vol)
        assert list(ds.voxel_size_xyz) == [1.0, 2.0, 3.0] and ds.voxel_unit == "um"
    convert(tmp_path / "o.nc", tmp_path / "back.zarr")
    back = read_zarr(tmp_path / "back.zarr")
    np.testing.assert_array_equal(back[:], vol)
    assert back.attrs["voxel_size"] == [3.0, 2.0, 1.0]


def test_export_raw_with_metaimage_header(tmp_path, store):
    arr, vol = store
    export(arr, tmp_path / "o.raw")
    np.testing.assert_array_equal(np.fromfile(tmp_path / "o.raw", dtype="<u2").reshape(vol.shape), vol)
    header = dict(line.split(" = ") for line in (tmp_path / "o.mhd").read_text().splitlines())
    assert header["DimSize"] == "11 10 9"
    assert header["ElementType"] == "MET_USHORT"
    assert header["ElementSpacing"] == "1.0 2.0 3.0"
    assert header["ElementDataFile"] == "o.raw" and header["HeaderSize"] == "0"
    assert header["BinaryDataByteOrderMSB"] == "False"
    assert entries(tmp_path) == {"src.zarr", "o.raw", "o.mhd"}


def test_export_npy_and_2d(tmp_path, store):
    arr, vol = store
    export(arr, tmp_path / "o.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), vol)
    image = random_volume((7, 8), "float32")
    for ext in ("npy", "tif", "nc", "raw"):
        export(image, tmp_path / f"i.{ext}")
    np.testing.assert_array_equal(np.load(tmp_path / "i.npy"), image)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "i.tif"), image)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "i.raw", "<f4").reshape(7, 8), image)
    with netCDF4.Dataset(tmp_path / "i.nc") as ds:
        assert ds.variables["volume"].dimensions == ("y", "x")
        np.testing.assert_array_equal(ds.variables["volume"][:], image)
    assert "NDims = 2" in (tmp_path / "i.mhd").read_text()


def test_export_to_zarr_and_write_zarr_from_numpy(tmp_path):
    vol = random_volume((5, 6, 7), "int16")
    export(vol, tmp_path / "e.zarr", voxel_size=2.0)
    out = write_zarr(vol, tmp_path / "w.zarr", chunks=(2, 3, 4), attrs={"phases": {"0": "pore"}})
    np.testing.assert_array_equal(read_zarr(tmp_path / "e.zarr")[:], vol)
    assert read_zarr(tmp_path / "e.zarr").attrs["voxel_size"] == [2.0, 2.0, 2.0]
    np.testing.assert_array_equal(out[:], vol)
    assert out.attrs["phases"] == {"0": "pore"} and out.chunks == (2, 3, 4)


def test_writers_stream_slab_by_slab(tmp_path):
    vol = random_volume((23, 4, 5), "uint8")
    src = CountingSource(vol)
    write_zarr(src, tmp_path / "a.zarr", chunks=(5, 4, 5))
    assert src.reads == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    arr = read_zarr(tmp_path / "a.zarr")
    for ext in ("tif", "nc", "raw", "npy"):
        src = CountingSource(vol)
        src.slab_hint = 5
        export(src, tmp_path / f"a.{ext}")
        assert max(z1 - z0 for z0, z1 in src.reads) == 5 and len(src.reads) == 5
    np.testing.assert_array_equal(arr[:], vol)


def test_bigtiff_above_the_limit(tmp_path, monkeypatch):
    vol = random_volume((4, 5, 6), "uint16")
    monkeypatch.setattr(exporters, "_BIGTIFF_THRESHOLD", vol.nbytes - 1)
    export(vol, tmp_path / "big.tif", voxel_size=(3.0, 2.0, 1.0))
    monkeypatch.setattr(exporters, "_BIGTIFF_THRESHOLD", vol.nbytes)
    export(vol, tmp_path / "classic.tif")
    with tifffile.TiffFile(tmp_path / "big.tif") as tif, tifffile.TiffFile(tmp_path / "classic.tif") as classic:
        assert tif.is_bigtiff and not tif.is_imagej
        assert not classic.is_bigtiff and classic.is_imagej
    with open_source(tmp_path / "big.tif") as src:
        np.testing.assert_array_equal(src.read(0, 4), vol)
        assert src.voxel_size == pytest.approx((3.0, 2.0, 1.0))


@pytest.mark.parametrize("dest", ["o.tif", "o.nc", "o.raw", "o.npy"])
def test_full_disk_while_exporting(tmp_path, monkeypatch, dest):
    np.save(tmp_path / "v.npy", random_volume((6, 5, 4), "uint16"))
    kind = exporters._dest_kind(Path(dest))
    writer = {"tiff": "_write_tiff", "netcdf": "_write_netcdf", "raw": "_write_raw", "npy": "_write_npy"}[kind]
    real = getattr(exporters, writer)

    def half_then_full(source, tmp, slab, advance):
        real(source, tmp, slab, advance)  # the file is complete on disk, but the last write "failed"
        enospc()

    monkeypatch.setattr(exporters, writer, half_then_full)
    msg = expect_error(tmp_path, OutputWriteError, f"cannot write .*{dest}: No space left", tmp_path / "v.npy",
                       dest)
    assert "free space" in msg
