"""Tests of rockseg.io.sources: region reads of every source, Zarr array sources, and regions (--crop, --slices)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from rockseg.errors import InputError
from rockseg.io.conversion import convert
from rockseg.io.opening import open_source
from tests.io.samples import expect_error, random_volume, read_zarr, write_netcdf


@pytest.mark.parametrize("src_format", [2, 3])
def test_zarr_source_rechunk_recompress_keeps_phases_and_voxel_size(tmp_path, src_format):
    vol = random_volume((11, 12, 13), "uint8") % 4
    src = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=vol.shape, chunks=(4, 5, 6), dtype=vol.dtype,
                            zarr_format=src_format)
    src[:] = vol
    src.attrs.update({"phases": {"0": "pore", "1": "clay"}, "voxel_size": [1.5, 1.5, 1.5], "voxel_unit": "um"})
    for compressor in ("zstd", "none"):
        dest = tmp_path / f"out-{compressor}.zarr"
        summary = convert(tmp_path / "in.zarr", dest, chunks=(7, 7, 7), compressor=compressor)
        out = read_zarr(dest)
        assert summary["format"] == "zarr" and out.chunks == (7, 7, 7) and out.metadata.zarr_format == 3
        np.testing.assert_array_equal(out[:], vol)
        assert out.attrs["phases"] == {"0": "pore", "1": "clay"}
        assert out.attrs["voxel_size"] == [1.5, 1.5, 1.5]
    assert read_zarr(tmp_path / "out-none.zarr").compressors == ()


def test_sources_read_regions_without_memory_maps(tmp_path):
    vol = random_volume((6, 7, 8), "uint16")
    vol.astype(">u2").tofile(tmp_path / "v.raw")
    np.save(tmp_path / "v.npy", vol)
    tifffile.imwrite(tmp_path / "v.tif", vol, photometric="minisblack")
    for src, options in ((tmp_path / "v.raw", {"shape": vol.shape, "dtype": "uint16", "byte_order": "big"}),
                         (tmp_path / "v.npy", {}), (tmp_path / "v.tif", {})):
        with open_source(src, **options) as s:
            assert not any(isinstance(v, np.memmap) for v in vars(s).values())
            for region in [np.s_[0:6, 0:7, 0:8], np.s_[1:5:3, 2:3, 0:8], np.s_[5:6, 0:7, 3:5]]:
                block = s.read_region(region)
                assert block.dtype == np.uint16 and block.dtype.isnative
                np.testing.assert_array_equal(block, vol[region])


def region_sources(tmp_path, vol):
    """The same volume in every source format that reads regions its own way."""
    paths = {}
    vol.tofile(tmp_path / "v.raw")
    paths["raw"] = dict(src=tmp_path / "v.raw", shape=vol.shape, dtype=vol.dtype.name)
    np.save(tmp_path / "v.npy", vol)
    paths["npy"] = dict(src=tmp_path / "v.npy")
    tifffile.imwrite(tmp_path / "c.tif", vol, photometric="minisblack")
    paths["tiff-contiguous"] = dict(src=tmp_path / "c.tif")
    tifffile.imwrite(tmp_path / "z.tif", vol, photometric="minisblack", compression="zlib")
    paths["tiff-pages"] = dict(src=tmp_path / "z.tif")
    (tmp_path / "slices").mkdir()
    for i, plane in enumerate(vol):
        tifffile.imwrite(tmp_path / "slices" / f"s{i}.tif", plane)
    paths["slices"] = dict(src=tmp_path / "slices")
    write_netcdf(tmp_path / "v.nc", {"tomo": (vol, ("z", "y", "x"), {})})
    paths["netcdf"] = dict(src=tmp_path / "v.nc")
    arr = zarr.create_array(store=str(tmp_path / "v.zarr"), shape=vol.shape, chunks=(3, 4, 5), dtype=vol.dtype)
    arr[:] = vol
    paths["zarr"] = dict(src=tmp_path / "v.zarr")
    return paths


def test_regions_of_every_source_equal_numpy_slicing(tmp_path):
    vol = random_volume((11, 13, 17), "uint16")
    cases = [("2:9,3:11,4:15", None, np.s_[2:9, 3:11, 4:15]),  # rows and columns cropped
             ("1:10,:,:", "::4", np.s_[4:10:4]),  # planes in both: 0, 4, 8... of the source inside 1:10
             (":,5:6,:", "3:11:3", np.s_[3:11:3, 5:6]),  # full rows
             (None, "-2:", np.s_[-2:]),
             ("0:1,0:1,16:17", None, np.s_[0:1, 0:1, 16:17])]
    for kind, options in region_sources(tmp_path, vol).items():
        for i, (crop, slices, expected) in enumerate(cases):
            dest = tmp_path / f"{kind}-{i}.zarr"
            summary = convert(dest=dest, crop=crop, slices=slices, chunks=(2, 3, 4), **options)
            out = read_zarr(dest)
            np.testing.assert_array_equal(out[:], vol[expected], err_msg=f"{kind} {crop} {slices}")
            starts = [s.indices(n)[0] for s, n in zip(np.index_exp[expected] + (slice(None),) * 3, vol.shape)]
            assert summary["region"]["start"] == starts and out.attrs["source_region"] == summary["region"]


def test_region_voxel_size_stats_and_2d(tmp_path):
    vol = random_volume((20, 6, 7), "uint8")
    np.save(tmp_path / "v.npy", vol)
    convert(tmp_path / "v.npy", tmp_path / "s.zarr", slices="2:20:5", voxel_size=(1.0, 2.0, 3.0))
    out = read_zarr(tmp_path / "s.zarr")
    assert out.attrs["voxel_size"] == [5.0, 2.0, 3.0]  # planes 5 apart
    assert out.attrs["source_region"] == {"start": [2, 0, 0], "stop": [18, 6, 7], "step": [5, 1, 1]}
    assert out.attrs["intensity"]["mean"] == pytest.approx(vol[2:20:5].mean(), rel=1e-12)
    image = random_volume((30, 40), "float32")
    np.save(tmp_path / "i.npy", image)
    convert(tmp_path / "i.npy", tmp_path / "i.tif", crop="5:25,-10:")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "i.tif"), image[5:25, -10:])
    # the whole volume as a "region" is the source itself
    convert(tmp_path / "v.npy", tmp_path / "w.zarr", crop=":,:,:")
    assert "source_region" not in read_zarr(tmp_path / "w.zarr").attrs


def test_region_errors(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((10, 6, 7), np.uint8))
    np.save(tmp_path / "i.npy", np.zeros((6, 7), np.uint8))
    expect_error(tmp_path, InputError, "--crop '1:2,3:4' has 2 ranges but the volume has 3 axes", tmp_path / "v.npy",
                 crop="1:2,3:4")
    expect_error(tmp_path, InputError, "range '5:5' is empty", tmp_path / "v.npy", crop="5:5,:,:")
    # a bound past the axis is a mistake, refused (Python slices would clip it and convert a smaller region)
    expect_error(tmp_path, InputError, r"range '0:8' reaches past axis y of .*v\.npy, which has 6 voxels: give "
                 r"bounds within -6\.\.6", tmp_path / "v.npy", crop=":,0:8,:")
    expect_error(tmp_path, InputError, "range '-11:' reaches past axis z", tmp_path / "v.npy", crop="-11:,:,:")
    expect_error(tmp_path, InputError, "range ':9' reaches past axis x of .*i.npy", tmp_path / "i.npy",
                 crop=":,:9")
    expect_error(tmp_path, InputError, "--slices '20:30' keeps no plane.*Z has 10 planes", tmp_path / "v.npy",
                 slices="20:30")
    expect_error(tmp_path, InputError, "--slices '0:4:3' keeps no plane .* inside --crop Z range 4:6",
                 tmp_path / "v.npy", slices="0:4:3", crop="4:6,:,:")
    expect_error(tmp_path, InputError, "i.npy is one 2D image", tmp_path / "i.npy", slices="0:1")
    expect_error(tmp_path, InputError, "--slices 'x'", tmp_path / "v.npy", slices="x")
