"""Tests of rockseg.formats: every source format to Zarr, every export, and every bad-input error."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import tifffile
import zarr

from rockseg import formats
from rockseg.errors import InputError, MissingInputError, OutputExistsError, RocksegError
from rockseg.formats import (
    convert,
    export,
    open_source,
    parse_colormap,
    parse_dtype,
    parse_shape,
    parse_slices,
    write_zarr,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
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


# ---------------------------------------------------------------------------------------------------------------------
# Option parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [("400,500,600", (400, 500, 600)), (" 4, 5 ,6 ", (4, 5, 6)), ("64x32x16", (64, 32, 16)), ("7,9", (7, 9)),
     ((3, 4, 5), (3, 4, 5))],
)
def test_parse_shape(text, expected):
    assert parse_shape(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "4,5,x6", "4,5,6,7", "4", "0,5,6", "-1,5,6", "4.5,5,6", "4,,5,6,7"])
def test_parse_shape_rejects_junk(text):
    with pytest.raises(InputError, match="--shape"):
        parse_shape(text)


def test_parse_dtype():
    assert parse_dtype("uint8") == np.uint8
    assert parse_dtype("uint16").str == "<u2"
    assert parse_dtype("uint16", byte_order="big").str == ">u2"
    assert parse_dtype(">f4").str == ">f4"
    with pytest.raises(InputError, match="'uint12'.*uint8, int8, uint16"):
        parse_dtype("uint12")
    with pytest.raises(InputError, match="byte order"):
        parse_dtype("uint16", byte_order="middle")


# ---------------------------------------------------------------------------------------------------------------------
# Sources -> Zarr


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


def test_intensity_percentiles_uint8_exact(tmp_path):
    vol = rng.integers(0, 256, (20, 30, 40), dtype=np.uint8)
    np.save(tmp_path / "v.npy", vol)
    convert(tmp_path / "v.npy", tmp_path / "v.zarr", chunks=(3, 30, 40))
    stats = read_zarr(tmp_path / "v.zarr").attrs["intensity"]
    lo, hi = np.percentile(vol, [0.5, 99.5], method="inverted_cdf")
    assert (stats["p_low"], stats["p_high"]) == (lo, hi)
    assert stats["exact"] is True


def test_npy_is_memory_mapped_and_fortran_order_kept(tmp_path):
    vol = np.asfortranarray(random_volume((6, 7, 8), "uint16"))
    np.save(tmp_path / "f.npy", vol)
    with open_source(tmp_path / "f.npy") as src:
        assert isinstance(src._array, np.memmap)
        np.testing.assert_array_equal(src.read(2, 5), vol[2:5])
    convert(tmp_path / "f.npy", tmp_path / "f.zarr")
    np.testing.assert_array_equal(read_zarr(tmp_path / "f.zarr")[:], vol)


def test_default_chunks_clipped_3d_and_2d(tmp_path):
    np.save(tmp_path / "v3.npy", random_volume((10, 100, 30), "uint8"))
    np.save(tmp_path / "v2.npy", random_volume((700, 300), "uint8"))
    convert(tmp_path / "v3.npy", tmp_path / "v3.zarr")
    convert(tmp_path / "v2.npy", tmp_path / "v2.zarr")
    assert read_zarr(tmp_path / "v3.zarr").chunks == (10, 64, 30)
    assert read_zarr(tmp_path / "v2.zarr").chunks == (512, 300)
    np.testing.assert_array_equal(read_zarr(tmp_path / "v2.zarr")[:], np.load(tmp_path / "v2.npy"))


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("byte_order", ["little", "big"])
@pytest.mark.parametrize("header_bytes", [0, 37])
def test_raw_to_zarr_exact(tmp_path, dtype, byte_order, header_bytes):
    vol = random_volume((9, 11, 6), dtype)
    stored = vol.astype(np.dtype(dtype).newbyteorder("<" if byte_order == "little" else ">"))
    (tmp_path / "v.raw").write_bytes(b"H" * header_bytes + stored.tobytes())
    convert(tmp_path / "v.raw", tmp_path / "v.zarr", shape="9,11,6", dtype=dtype, byte_order=byte_order,
            header_bytes=header_bytes, chunks=(4, 4, 4))
    out = read_zarr(tmp_path / "v.zarr")
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out[:], vol)
    assert out.attrs["rockseg"]["byte_order"] == byte_order


def test_bin_extension_and_voxel_size_option(tmp_path):
    vol = random_volume((4, 5, 6), "float32")
    vol.tofile(tmp_path / "v.bin")
    convert(tmp_path / "v.bin", tmp_path / "v.zarr", shape=(4, 5, 6), dtype="float32", voxel_size=2.5)
    out = read_zarr(tmp_path / "v.zarr")
    np.testing.assert_array_equal(out[:], vol)
    assert out.attrs["voxel_size"] == [2.5, 2.5, 2.5] and out.attrs["voxel_unit"] == "um"


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


def test_big_endian_and_compressed_tiff_sources(tmp_path):
    vol = random_volume((6, 10, 12), "uint16")
    tifffile.imwrite(tmp_path / "be.tif", vol, byteorder=">", photometric="minisblack")
    tifffile.imwrite(tmp_path / "z.tif", vol, compression="zlib", photometric="minisblack")
    for name in ("be.tif", "z.tif"):
        with open_source(tmp_path / name) as src:
            assert src.shape == vol.shape and src.dtype == np.dtype("uint16")
            np.testing.assert_array_equal(src.read(1, 4), vol[1:4])
        convert(tmp_path / name, tmp_path / f"{name}.zarr", chunks=(4, 4, 4))
        np.testing.assert_array_equal(read_zarr(tmp_path / f"{name}.zarr")[:], vol)


def test_tiff_voxel_size_from_imagej_and_resolution_tags(tmp_path):
    vol = random_volume((3, 4, 5), "uint8")
    tifffile.imwrite(tmp_path / "ij.tif", vol, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"axes": "ZYX", "unit": "micron", "spacing": 0.75})
    tifffile.imwrite(tmp_path / "cm.tif", vol[0], resolution=(1e4 / 3.0, 1e4 / 2.0), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "none.tif", vol, photometric="minisblack")
    with open_source(tmp_path / "ij.tif") as s:
        assert s.voxel_size == pytest.approx((0.75, 0.5, 0.5)) and s.voxel_unit == "um"
    with open_source(tmp_path / "cm.tif") as s:
        assert s.shape == (4, 5) and s.voxel_size == pytest.approx((2.0, 3.0))
        np.testing.assert_array_equal(s.read(0, 1), vol[0])  # a 2D source returns its whole image
    with open_source(tmp_path / "none.tif") as s:
        assert s.voxel_size is None


def test_slice_folder_and_glob_in_natural_order(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    vol = random_volume((12, 5, 6), "uint8")
    for i in range(12):
        tifffile.imwrite(folder / f"slice{i}.tif", vol[i])
    (folder / "notes.txt").write_text("not a slice")
    convert(folder, tmp_path / "f.zarr", chunks=(5, 5, 5))
    convert(str(folder / "slice*.tif"), tmp_path / "g.zarr")
    np.testing.assert_array_equal(read_zarr(tmp_path / "f.zarr")[:], vol)  # slice2 before slice10
    np.testing.assert_array_equal(read_zarr(tmp_path / "g.zarr")[:], vol)
    assert read_zarr(tmp_path / "g.zarr").attrs["source"] == str(folder / "slice*.tif")


def test_metaimage_source(tmp_path):
    vol = random_volume((3, 4, 5), "int16")
    export(vol, tmp_path / "v.raw", voxel_size=(3.0, 2.0, 1.0))
    with open_source(tmp_path / "v.mhd") as src:
        assert src.voxel_size == (3.0, 2.0, 1.0)
        np.testing.assert_array_equal(src.read(0, 3), vol)


# ---------------------------------------------------------------------------------------------------------------------
# Exports


@pytest.fixture
def store(tmp_path):
    vol = random_volume((9, 10, 11), "uint16")
    vol[0, 0, 0] = 65535
    arr = zarr.create_array(store=str(tmp_path / "src.zarr"), shape=vol.shape, chunks=(4, 4, 4), dtype=vol.dtype)
    arr[:] = vol
    arr.attrs.update({"voxel_size": [3.0, 2.0, 1.0], "voxel_unit": "um"})
    return arr, vol


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


def test_convert_to_exports_from_a_source(tmp_path):
    vol = random_volume((5, 6, 7), "uint8")
    np.save(tmp_path / "v.npy", vol)
    for ext in ("tif", "nc", "raw", "npy"):
        summary = convert(tmp_path / "v.npy", tmp_path / f"o.{ext}", voxel_size=1.25)
        assert summary["dest"] == str(tmp_path / f"o.{ext}")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o.tif"), vol)
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), vol)
    with open_source(tmp_path / "o.nc") as src:
        assert src.voxel_size == (1.25, 1.25, 1.25)
        np.testing.assert_array_equal(src.read(0, 5), vol)


def test_export_to_zarr_and_write_zarr_from_numpy(tmp_path):
    vol = random_volume((5, 6, 7), "int16")
    export(vol, tmp_path / "e.zarr", voxel_size=2.0)
    out = write_zarr(vol, tmp_path / "w.zarr", chunks=(2, 3, 4), attrs={"phases": {"0": "pore"}})
    np.testing.assert_array_equal(read_zarr(tmp_path / "e.zarr")[:], vol)
    assert read_zarr(tmp_path / "e.zarr").attrs["voxel_size"] == [2.0, 2.0, 2.0]
    np.testing.assert_array_equal(out[:], vol)
    assert out.attrs["phases"] == {"0": "pore"} and out.chunks == (2, 3, 4)


class CountingSource(formats.Source):
    """A source that records what is read, to check that writers stream in slabs."""

    def __init__(self, vol):
        super().__init__("counting", vol.shape, vol.dtype)
        self.vol, self.reads = vol, []

    def _read(self, z0, z1):
        self.reads.append((z0, z1))
        return self.vol[z0:z1]


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


def test_progress_bar_runs(tmp_path, capsys):
    np.save(tmp_path / "v.npy", random_volume((3, 4, 5), "uint8"))
    convert(tmp_path / "v.npy", tmp_path / "v.zarr", progress=True)
    convert(tmp_path / "v.npy", tmp_path / "v.tif", progress=True)
    assert "v.zarr" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# Real data


@pytest.fixture
def versa():
    if not (VERSA / "images").is_dir() or not (VERSA / "slices_images.tif").is_file():
        pytest.skip(f"real test data not found in {VERSA}")
    return VERSA


def test_sandstone_slices_folder_equals_multipage_tiff(tmp_path, versa):
    convert(versa / "images", tmp_path / "folder.zarr", chunks=(4, 256, 256))
    convert(versa / "slices_images.tif", tmp_path / "stack.zarr")
    reference = tifffile.imread(versa / "slices_images.tif")
    folder, stack = read_zarr(tmp_path / "folder.zarr"), read_zarr(tmp_path / "stack.zarr")
    assert folder.shape == stack.shape == reference.shape == (10, 1024, 996)
    np.testing.assert_array_equal(folder[:], reference)
    np.testing.assert_array_equal(stack[:], reference)
    # each slice file holds one plane, in natural order of its file name
    np.testing.assert_array_equal(folder[4], tifffile.imread(versa / "images" / "Sandstone_Versa0180.tif"))
    assert folder.attrs["voxel_size"] == pytest.approx([2.2315] * 3, rel=1e-4)  # ImageJ micron resolution
    assert "voxel_size" not in stack.attrs  # the stacked file records no resolution
    stats = folder.attrs["intensity"]
    assert stats["mean"] == pytest.approx(reference.mean(), rel=1e-12)
    lo, hi = np.percentile(reference, [0.5, 99.5], method="inverted_cdf")
    assert (stats["min"], stats["max"], stats["p_low"], stats["p_high"]) == (
        reference.min(), reference.max(), lo, hi)


@pytest.mark.slow
def test_berea_tiff(tmp_path):
    if not BEREA.is_file():
        pytest.skip(f"real test data not found: {BEREA}")
    convert(BEREA, tmp_path / "berea.zarr", chunks=(100, 200, 400))
    out = read_zarr(tmp_path / "berea.zarr")
    reference = tifffile.imread(BEREA)
    np.testing.assert_array_equal(out[:], reference)
    assert out.attrs["intensity"]["mean"] == pytest.approx(0.19645, abs=5e-6)  # the porosity


# ---------------------------------------------------------------------------------------------------------------------
# Errors: right type, useful message, and nothing left behind


def expect_error(tmp_path, exc_type, pattern, src, dest_name="out.zarr", **kwargs):
    before = entries(tmp_path)
    with pytest.raises(exc_type, match=pattern) as info:
        convert(src, tmp_path / dest_name, **kwargs)
    assert isinstance(info.value, RocksegError)
    assert "\n" not in str(info.value)
    assert entries(tmp_path) == before  # no DEST, no temporary store
    return str(info.value)


def test_missing_source(tmp_path):
    msg = expect_error(tmp_path, MissingInputError, "does not exist", tmp_path / "nope.tif")
    assert "nope.tif" in msg
    expect_error(tmp_path, MissingInputError, "no file matches", str(tmp_path / "nothing*.tif"))


def test_raw_size_mismatch_names_expected_and_actual_bytes(tmp_path):
    np.zeros((10, 20, 30), np.uint16).tofile(tmp_path / "v.raw")
    msg = expect_error(tmp_path, InputError, "has 12000 bytes but .* needs 12600 bytes", tmp_path / "v.raw",
                       shape="10,21,30", dtype="uint16")
    assert "v.raw" in msg
    msg = expect_error(tmp_path, InputError, "needs 18000 bytes", tmp_path / "v.raw", shape="15,20,30",
                       dtype="uint16")
    assert "--shape 10,20,30" in msg
    msg = expect_error(tmp_path, InputError, "needs 24000 bytes", tmp_path / "v.raw", shape="10,20,30",
                       dtype="float32")
    assert "--dtype uint16" in msg


def test_raw_needs_shape_and_dtype_and_a_known_dtype(tmp_path):
    np.zeros(24, np.uint8).tofile(tmp_path / "v.raw")
    expect_error(tmp_path, InputError, "--shape Z,Y,X and --dtype", tmp_path / "v.raw")
    expect_error(tmp_path, InputError, "--shape Z,Y,X and --dtype", tmp_path / "v.raw", shape="2,3,4")
    expect_error(tmp_path, InputError, "v.raw: --dtype 'uint7' is not a voxel type.*uint8", tmp_path / "v.raw",
                 shape="2,3,4", dtype="uint7")
    expect_error(tmp_path, InputError, "v.raw: --shape 'two,3,4'", tmp_path / "v.raw", shape="two,3,4", dtype="uint8")
    expect_error(tmp_path, InputError, "v.raw: --byte-order 'middle'", tmp_path / "v.raw", shape="2,3,4",
                 dtype="uint8", byte_order="middle")


def test_slices_of_different_sizes(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    tifffile.imwrite(folder / "s1.tif", np.zeros((4, 5), np.uint8))
    tifffile.imwrite(folder / "s2.tif", np.zeros((4, 6), np.uint8))
    msg = expect_error(tmp_path, InputError, r"\(4, 6\) uint8 but .* is \(4, 5\) uint8", folder)
    assert "s2.tif" in msg


def test_files_that_are_not_what_their_extension_says(tmp_path):
    for name in ("fake.tif", "fake.nc", "fake.npy"):
        (tmp_path / name).write_text("just some text\n")
    expect_error(tmp_path, InputError, "fake.tif is not a readable TIFF", tmp_path / "fake.tif")
    expect_error(tmp_path, InputError, "fake.nc is not a readable netCDF", tmp_path / "fake.nc")
    expect_error(tmp_path, InputError, "fake.npy is not a NumPy", tmp_path / "fake.npy")
    folder = tmp_path / "slices"
    folder.mkdir()
    (folder / "a.tif").write_text("text")
    expect_error(tmp_path, InputError, "a.tif is not a readable TIFF", folder)


def test_rgb_tiff_refused(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((4, 5, 3), np.uint8), photometric="rgb")
    expect_error(tmp_path, InputError, "rgb.tif holds an image of shape .* grayscale", tmp_path / "rgb.tif")


def test_unknown_extensions_list_the_supported_ones(tmp_path):
    (tmp_path / "v.dat").write_bytes(b"12345678")
    msg = expect_error(tmp_path, InputError, "v.dat has an extension \\(.dat\\)", tmp_path / "v.dat")
    assert ".nc" in msg and ".tif" in msg and ".raw" in msg and ".npy" in msg and ".zarr" in msg
    np.save(tmp_path / "v.npy", np.zeros((2, 3, 4), np.uint8))
    msg = expect_error(tmp_path, InputError, "output .*out.h5 has an extension", tmp_path / "v.npy", "out.h5")
    assert ".zarr" in msg and ".tif" in msg


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    expect_error(tmp_path, InputError, "empty holds no .tif/.tiff slice files", tmp_path / "empty")


def test_bad_options_refused_before_any_output(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((2, 3, 4), np.uint8))
    expect_error(tmp_path, InputError, "--chunks 1,2 has 2 values", tmp_path / "v.npy", chunks=(1, 2))
    expect_error(tmp_path, InputError, "unknown compressor 'gzip'", tmp_path / "v.npy", compressor="gzip")
    expect_error(tmp_path, InputError, "v.npy is a NumPy file.*leave out --shape", tmp_path / "v.npy",
                 shape="2,3,4")
    expect_error(tmp_path, InputError, "--voxel-size", tmp_path / "v.npy", voxel_size=-1.0)
    expect_error(tmp_path, InputError, "--chunks applies to .zarr", tmp_path / "v.npy", "o.tif", chunks=(1, 1, 1))
    expect_error(tmp_path, MissingInputError, "create .*no-such-dir", tmp_path / "v.npy", "no-such-dir/o.zarr")


def test_existing_output_refused_unless_overwrite(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 4), np.uint8))
    np.save(tmp_path / "b.npy", np.ones((2, 3, 4), np.uint8))
    convert(tmp_path / "a.npy", tmp_path / "o.zarr")
    convert(tmp_path / "a.npy", tmp_path / "o.raw")
    expect_error(tmp_path, OutputExistsError, "o.zarr exists already.*--overwrite", tmp_path / "b.npy", "o.zarr")
    expect_error(tmp_path, OutputExistsError, "o.raw exists already", tmp_path / "b.npy", "o.raw")
    (tmp_path / "o.raw").unlink()  # a stale header alone is protected too
    expect_error(tmp_path, OutputExistsError, "o.mhd exists already", tmp_path / "b.npy", "o.raw")
    convert(tmp_path / "b.npy", tmp_path / "o.zarr", overwrite=True)
    np.testing.assert_array_equal(read_zarr(tmp_path / "o.zarr")[:], 1)
    assert entries(tmp_path) == {"a.npy", "b.npy", "o.zarr", "o.mhd"}


@pytest.mark.parametrize("dest", ["o.zarr", "o.tif", "o.nc", "o.raw", "o.npy"])
def test_failure_midway_leaves_nothing(tmp_path, dest):
    vol = np.ones((12, 4, 5), np.float32)
    vol[-1, -1, -1] = np.nan  # found only when the last slab is read
    np.save(tmp_path / "nan.npy", vol)
    if dest == "o.zarr":
        expect_error(tmp_path, InputError, "nan.npy: .*NaN", tmp_path / "nan.npy", dest, chunks=(4, 4, 5))
        return

    class Failing(CountingSource):
        def _read(self, z0, z1):
            if z1 == self.shape[0]:
                raise InputError("disk fell off")
            return super()._read(z0, z1)

    src = Failing(vol)
    src.slab_hint = 4
    before = entries(tmp_path)
    with pytest.raises(InputError, match="disk fell off"):
        export(src, tmp_path / dest)
    assert entries(tmp_path) == before


# ---------------------------------------------------------------------------------------------------------------------
# Colour-coded label images (--colormap)


def test_parse_colormap_forms_and_names():
    with pytest.raises(InputError, match="has 4 values but 0,0,255 has 3"):
        parse_colormap("0,0,255=0;#ffff00ff=3")
    cm = parse_colormap("0,0,255=0:pore; 0,255,0=1:clay;#ff0000=2;255,255,0=2")
    assert cm.colours == ((0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 0))
    assert cm.labels == (0, 1, 2, 2) and cm.names == {0: "pore", 1: "clay"} and cm.width == 3
    grey = parse_colormap("33=0;201=1;231=2;65=3")
    assert grey.width == 1 and grey.colours == ((33,), (201,), (231,), (65,))
    assert parse_colormap({(0, 0, 255): 0, (255, 0, 0): 7}).labels == (0, 7)
    assert parse_colormap("1,2,3,4=300;#FFFF00ff=3").colours == ((1, 2, 3, 4), (255, 255, 0, 255))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [("", "is empty"), ("0,0,255", "not COLOUR=LABEL"), ("0,0,x=1", "not COLOUR=LABEL"), ("1,2=0", "one grey value"),
     ("0,0,255=0;0,0,255=1", "given twice"), ("0,0,255=70000", "out of range"), ("0,0,255=-1", "out of range"),
     ("0,0,255=0:pore;0,0,254=0:void", "named both 'pore' and 'void'"), ("1=0;1,2,3=1", "has 3 values")],
)
def test_parse_colormap_rejects_junk(text, pattern):
    with pytest.raises(InputError, match=pattern) as info:
        parse_colormap(text)
    assert "--colormap" in str(info.value)


def rgb_labels(shape, palette, seed=0):
    """A random label volume and its colour image (palette: label -> colour tuple)."""
    labels = np.random.default_rng(seed).integers(0, len(palette), shape).astype(np.uint8)
    colours = np.array(palette, np.uint8)[labels]
    return labels, colours


PALETTE = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 0)]
PALETTE_TEXT = "0,0,255=0:pore;0,255,0=1:clay;255,0,0=2:quartz;255,255,0=3:pyrite"


@pytest.mark.parametrize("layout", ["contiguous", "zlib", "planar", "lzw-pillow"])
def test_colour_tiff_stack_to_labels(tmp_path, layout):
    labels, colours = rgb_labels((5, 12, 14), PALETTE)
    path = tmp_path / "mask.tif"
    if layout == "contiguous":
        tifffile.imwrite(path, colours, photometric="rgb")
    elif layout == "zlib":
        tifffile.imwrite(path, colours, photometric="rgb", compression="zlib")
    elif layout == "planar":
        tifffile.imwrite(path, np.moveaxis(colours, -1, 1), photometric="rgb", planarconfig="separate")
    else:  # LZW needs imagecodecs in tifffile, which is not installed here: Pillow decodes it
        from PIL import Image

        frames = [Image.fromarray(c) for c in colours]
        frames[0].save(path, compression="tiff_lzw", save_all=True, append_images=frames[1:])
    with open_source(path, colormap=PALETTE_TEXT) as src:
        assert src.shape == (5, 12, 14) and src.dtype == np.uint8
        np.testing.assert_array_equal(src.read(1, 4), labels[1:4])
        np.testing.assert_array_equal(src.read_region((slice(0, 5, 2), slice(3, 9), slice(0, 14))),
                                      labels[0:5:2, 3:9])
    summary = convert(path, tmp_path / "l.zarr", colormap=PALETTE_TEXT, chunks=(2, 8, 8))
    out = read_zarr(tmp_path / "l.zarr")
    np.testing.assert_array_equal(out[:], labels)
    assert out.attrs["phases"] == {"0": "pore", "1": "clay", "2": "quartz", "3": "pyrite"}
    assert out.attrs["rockseg"]["colormap"] == PALETTE_TEXT
    assert summary["phases"]["3"] == "pyrite"


def test_colour_png_slices_palette_rgba_and_big_labels(tmp_path):
    from PIL import Image

    labels, colours = rgb_labels((4, 9, 11), PALETTE, seed=3)
    folder = tmp_path / "png"
    folder.mkdir()
    for i, c in enumerate(colours):  # RGBA, with a fully opaque alpha the map ignores
        Image.fromarray(np.dstack([c, np.full(c.shape[:2], 255, np.uint8)])).save(folder / f"m{i + 1}.png")
    cmap = "0,0,255=0;0,255,0=1;255,0,0=1000;255,255,0=65535"  # labels over 255: uint16
    convert(folder, tmp_path / "a.zarr", colormap=cmap, phases="0=pore,1000=quartz")
    out = read_zarr(tmp_path / "a.zarr")
    expected = np.array([0, 1, 1000, 65535], np.uint16)[labels]
    assert out.dtype == np.uint16 and out.attrs["phases"] == {"0": "pore", "1000": "quartz"}
    np.testing.assert_array_equal(out[:], expected)
    # a palette PNG reads as its colours
    image = Image.fromarray(labels[0], mode="L").convert("P")
    image.putpalette([v for c in PALETTE for v in c])
    image.save(tmp_path / "pal.png")
    with open_source(tmp_path / "pal.png", colormap=PALETTE_TEXT) as src:
        assert src.kind == "png"
        np.testing.assert_array_equal(src.read(0, 1), labels[0])


def test_unmapped_colour_names_colour_place_and_fix(tmp_path):
    labels, colours = rgb_labels((4, 6, 7), PALETTE)
    colours[2, 3, 5] = (9, 8, 7)
    colours[3, 0, 0] = (1, 1, 1)
    folder = tmp_path / "masks"
    folder.mkdir()
    for i, c in enumerate(colours):
        tifffile.imwrite(folder / f"s{i}.tif", c, photometric="rgb")
    msg = expect_error(tmp_path, InputError, "colour 9,8,7 at \\(z=2, y=3, x=5\\) is not in --colormap", folder,
                       colormap=PALETTE_TEXT, chunks=(1, 6, 7))
    assert "s2.tif" in msg and f"--colormap '{PALETTE_TEXT};9,8,7=LABEL'" in msg
    # the colour missing from the whole slab is listed too
    msg = expect_error(tmp_path, InputError, "colour 9,8,7 .* \\(nor 1,1,1\\)", folder, colormap=PALETTE_TEXT)
    # a plane range that skips the bad planes converts
    convert(folder, tmp_path / "ok.zarr", colormap=PALETTE_TEXT, slices="0:2")
    np.testing.assert_array_equal(read_zarr(tmp_path / "ok.zarr")[:], labels[:2])


def test_colormap_form_must_match_the_image(tmp_path):
    labels, colours = rgb_labels((3, 4, 5), PALETTE)
    tifffile.imwrite(tmp_path / "rgb.tif", colours, photometric="rgb")
    np.save(tmp_path / "grey.npy", labels)
    np.save(tmp_path / "f.npy", labels.astype(np.float32))
    expect_error(tmp_path, InputError, "rgb.tif is a colour image \\(3 channels\\).*give colours as R,G,B",
                 tmp_path / "rgb.tif", colormap="0=0;1=1")
    expect_error(tmp_path, InputError, "grey.npy is a grey image.*give its grey values", tmp_path / "grey.npy",
                 colormap=PALETTE_TEXT)
    expect_error(tmp_path, InputError, "rgb.tif has no alpha channel", tmp_path / "rgb.tif",
                 colormap="0,0,255,255=0")
    expect_error(tmp_path, InputError, "f.npy holds float32 values: a colour map", tmp_path / "f.npy",
                 colormap="0=0")
    expect_error(tmp_path, InputError, "channel value over 255", tmp_path / "rgb.tif", colormap="0,0,256=0")
    # grey-coded labels in any grey source are remapped
    convert(tmp_path / "grey.npy", tmp_path / "g.zarr", colormap="0=10;1=11;2=12;3=13")
    np.testing.assert_array_equal(read_zarr(tmp_path / "g.zarr")[:], labels + 10)


def test_sandstone_colour_masks_equal_the_label_files(tmp_path, versa):
    masks = versa / "masks_original"
    if not masks.is_dir():
        pytest.skip(f"real test data not found in {masks}")
    # SOURCE.md of sandstone-versa: blue pore, green clay, red quartz, yellow pyrite
    convert(masks, tmp_path / "labels.zarr", colormap=PALETTE_TEXT, chunks=(3, 512, 512))
    out = read_zarr(tmp_path / "labels.zarr")
    tif_masks = sorted(masks.glob("*.tif"), key=lambda p: p.name)  # the folder's 9 RGB TIFF masks
    expected = np.stack([tifffile.imread(versa / "labels" / p.name) for p in tif_masks])
    assert out.shape == expected.shape == (9, 1024, 996) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:], expected)
    assert out.attrs["phases"] == {"0": "pore", "1": "clay", "2": "quartz", "3": "pyrite"}
    # slice 180 is a grey-coded PNG (SOURCE.md: 33 pore, 201 clay, 231 quartz, 65 pyrite)
    convert(masks / "Sandstone_Versa0180.png", tmp_path / "s180.zarr", colormap="33=0;201=1;231=2;65=3")
    np.testing.assert_array_equal(read_zarr(tmp_path / "s180.zarr")[:],
                                  tifffile.imread(versa / "labels" / "Sandstone_Versa0180.tif"))


# ---------------------------------------------------------------------------------------------------------------------
# Regions (--crop, --slices)


def test_parse_slices():
    assert parse_slices("100:200") == slice(100, 200)
    assert parse_slices("0:400:50") == slice(0, 400, 50)
    assert parse_slices("::3") == slice(None, None, 3)
    assert parse_slices("5") == slice(5, 6) and parse_slices("-1") == slice(-1, None)
    for bad in ("a:b", "1:2:3:4", "1:5:0", "1:5:-1", "1.5:3"):
        with pytest.raises(InputError, match="--slices"):
            parse_slices(bad)


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
    expect_error(tmp_path, InputError, "--slices '20:30' keeps no plane.*Z has 10 planes", tmp_path / "v.npy",
                 slices="20:30")
    expect_error(tmp_path, InputError, "--slices '0:4:3' keeps no plane .* inside --crop Z range 4:6",
                 tmp_path / "v.npy", slices="0:4:3", crop="4:6,:,:")
    expect_error(tmp_path, InputError, "i.npy is one 2D image", tmp_path / "i.npy", slices="0:1")
    expect_error(tmp_path, InputError, "--slices 'x'", tmp_path / "v.npy", slices="x")


# ---------------------------------------------------------------------------------------------------------------------
# Raw files with headers, .vol, NRRD


def test_raw_described_by_a_header_beside_it(tmp_path):
    vol = random_volume((5, 6, 7), "int16")
    export(vol, tmp_path / "scan.raw", voxel_size=(3.0, 2.0, 1.0))  # writes scan.mhd beside
    summary = convert(tmp_path / "scan.raw", tmp_path / "a.zarr")
    out = read_zarr(tmp_path / "a.zarr")
    np.testing.assert_array_equal(out[:], vol)
    assert out.attrs["voxel_size"] == [3.0, 2.0, 1.0] and summary["format"] == "raw"
    assert out.attrs["rockseg"]["header"] == str(tmp_path / "scan.mhd")
    # explicit options win over the header
    convert(tmp_path / "scan.raw", tmp_path / "b.zarr", shape="5,42,1", dtype="int16")
    assert read_zarr(tmp_path / "b.zarr").shape == (5, 42, 1)
    # a header describing another data file is not used
    (tmp_path / "other.raw").write_bytes(vol.tobytes())
    (tmp_path / "other.mhd").write_text((tmp_path / "scan.mhd").read_text())
    expect_error(tmp_path, InputError, "other.raw is a raw file with no header", tmp_path / "other.raw")


def test_nrrd_detached_attached_and_beside(tmp_path):
    vol = random_volume((4, 5, 6), "uint16")
    (tmp_path / "d.bin").write_bytes(b"#" * 10 + vol.astype(">u2").tobytes())
    (tmp_path / "d.nhdr").write_text(
        "NRRD0004\n# made by hand\ntype: unsigned short\ndimension: 3\nsizes: 6 5 4\n"
        "space directions: (0.002,0,0) (0,0.002,0) (0,0,0.005)\nspace units: \"mm\" \"mm\" \"mm\"\n"
        "encoding: raw\nendian: big\nbyte skip: 10\ndata file: d.bin\nkey:=value\n"
    )
    for src in (tmp_path / "d.nhdr", tmp_path / "d.bin"):
        with open_source(src) as s:
            np.testing.assert_array_equal(s.read(0, 4), vol)
            assert s.voxel_size == pytest.approx((5.0, 2.0, 2.0)) and s.voxel_unit == "um"
    header = b"NRRD0005\ntype: float\ndimension: 2\nsizes: 6 5\nspacings: 0.5 0.25\nencoding: raw\nendian: little\n\n"
    image = random_volume((5, 6), "float32")
    (tmp_path / "a.nrrd").write_bytes(header + image.tobytes())
    convert(tmp_path / "a.nrrd", tmp_path / "a.zarr")
    out = read_zarr(tmp_path / "a.zarr")
    np.testing.assert_array_equal(out[:], image)
    assert out.attrs["voxel_size"] == [0.25, 0.5] and "voxel_unit" not in out.attrs  # no unit recorded
    (tmp_path / "t.bin").write_bytes(b"line one\nline two\n" + vol.astype("<u2").tobytes() + b"tail")
    (tmp_path / "t.nhdr").write_text("NRRD0004\ntype: uint16\ndimension: 3\nsizes: 6 5 4\nencoding: raw\n"
                                     "endian: little\nline skip: 2\ndata file: t.bin\n")
    expect_error(tmp_path, InputError, "t.bin has .* bytes but the header t.nhdr .* needs", tmp_path / "t.nhdr")
    (tmp_path / "t.nhdr").write_text("NRRD0004\ntype: uint16\ndimension: 3\nsizes: 6 5 4\nencoding: raw\n"
                                     "endian: little\nbyte skip: -1\ndata file: u.bin\n")
    (tmp_path / "u.bin").write_bytes(b"junk" + vol.astype("<u2").tobytes())
    with open_source(tmp_path / "t.nhdr") as s:
        np.testing.assert_array_equal(s.read(0, 4), vol)


def test_nrrd_errors(tmp_path):
    (tmp_path / "g.nhdr").write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 2\nencoding: gzip\n"
                                     "data file: g.raw.gz\n")
    expect_error(tmp_path, InputError, "g.nhdr holds gzip-encoded data.*encoding: raw", tmp_path / "g.nhdr")
    (tmp_path / "x.nhdr").write_text("NRRD0004\ntype: complex\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n")
    expect_error(tmp_path, InputError, "x.nhdr is not an NRRD header rockseg can read", tmp_path / "x.nhdr")
    (tmp_path / "m.nhdr").write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n"
                                     "data file: missing.raw\n")
    expect_error(tmp_path, MissingInputError, "names data file missing.raw", tmp_path / "m.nhdr")
    (tmp_path / "fake.nrrd").write_text("just text\n")
    expect_error(tmp_path, InputError, "fake.nrrd is not an NRRD file", tmp_path / "fake.nrrd")


def test_vol_with_pyhst_info(tmp_path):
    vol = random_volume((3, 4, 5), "float32")
    vol.astype(">f4").tofile(tmp_path / "rec.vol")
    (tmp_path / "rec.vol.info").write_text("! PyHST_SLAVE VOLUME INFO FILE\nNUM_X =  5\nNUM_Y =  4\nNUM_Z =  3\n"
                                           "voxelSize =  0.65\nBYTEORDER = HIGHBYTEFIRST\nValMin = -1\n")
    convert(tmp_path / "rec.vol", tmp_path / "rec.zarr")
    out = read_zarr(tmp_path / "rec.zarr")
    np.testing.assert_array_equal(out[:], vol)
    assert out.attrs["voxel_size"] == [0.65] * 3
    vol.tofile(tmp_path / "plain.vol")  # no header: the options
    convert(tmp_path / "plain.vol", tmp_path / "p.zarr", shape="3,4,5", dtype="float32")
    np.testing.assert_array_equal(read_zarr(tmp_path / "p.zarr")[:], vol)


def test_raw_oversized_and_npy_truncated(tmp_path):
    np.zeros((10, 20, 30), np.uint8).tofile(tmp_path / "v.raw")
    msg = expect_error(tmp_path, InputError, "has 6000 bytes but .* needs 5400 bytes", tmp_path / "v.raw",
                       shape="9,20,30", dtype="uint8")
    assert "--shape 10,20,30" in msg and "--header-bytes 600" in msg
    np.save(tmp_path / "t.npy", np.zeros((10, 20, 30), np.uint16))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-100])
    expect_error(tmp_path, InputError, "t.npy has .* bytes but its header .* needs .*truncated", tmp_path / "t.npy")


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


# ---------------------------------------------------------------------------------------------------------------------
# Shards


def spy_on_writes(monkeypatch) -> list[str]:
    """Record the store keys of the chunk or shard files written, by rockseg's writer or by zarr."""
    writes = []
    original_file, original_set = formats._write_file, zarr.storage.LocalStore.set

    def write_file(path, *parts):
        writes.append("/".join(Path(path).parts[-4:]))
        original_file(path, *parts)

    async def spy(self, key, value):
        writes.append(key)
        return await original_set(self, key, value)

    monkeypatch.setattr(formats, "_write_file", write_file)
    monkeypatch.setattr(zarr.storage.LocalStore, "set", spy)
    return writes


def test_shards_round_trip_each_shard_written_once(tmp_path, monkeypatch):
    vol = random_volume((37, 50, 45), "uint16")
    np.save(tmp_path / "v.npy", vol)
    writes = spy_on_writes(monkeypatch)
    convert(tmp_path / "v.npy", tmp_path / "s.zarr", chunks=(8, 16, 16), shards=(16, 32, 48))
    out = read_zarr(tmp_path / "s.zarr")
    assert out.chunks == (8, 16, 16) and out.shards == (16, 32, 48)  # X shard clipped to 3 chunks covering 45
    np.testing.assert_array_equal(out[:], vol)
    data = [k for k in writes if k.startswith("c/")]
    assert len(data) == len(set(data)) == 3 * 2 * 1  # ceil(37/16) x ceil(50/32) x 1 shard files, each once
    files = [f for _, _, names in os.walk(tmp_path / "s.zarr" / "c") for f in names]
    assert len(files) == 6


def test_shards_must_be_whole_chunks(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((64, 64, 64), np.uint8))
    expect_error(tmp_path, InputError, "--shards 100,64,64 is not a whole number of chunks 64,64,64.*128,64,64",
                 tmp_path / "v.npy", shards="100,64,64")
    expect_error(tmp_path, InputError, "--shards 64,64 has 2 values", tmp_path / "v.npy", shards="64,64")
    expect_error(tmp_path, InputError, "--shards applies to .zarr outputs only", tmp_path / "v.npy", "o.tif",
                 shards="64,64,64")
    expect_error(tmp_path, InputError, "--shards 'a,b,c'", tmp_path / "v.npy", shards="a,b,c")


# ---------------------------------------------------------------------------------------------------------------------
# Failures while writing or reading: one clear error, nothing left behind


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_while_writing_zarr(tmp_path, monkeypatch):
    vol = random_volume((20, 8, 9), "uint8")
    np.save(tmp_path / "v.npy", vol)
    # chunk files written by rockseg's own writer
    calls = []
    original_file = formats._write_file

    def file_fills_up(path, *parts):
        calls.append(path)
        if len(calls) > 3:  # a few chunks fit, then the disk is full
            enospc()
        original_file(path, *parts)

    monkeypatch.setattr(formats, "_write_file", file_fills_up)
    monkeypatch.setattr(formats, "_WRITE_THREADS", 3)
    msg = expect_error(tmp_path, formats.OutputWriteError, "cannot write .*out.zarr: No space left on device",
                       tmp_path / "v.npy", chunks=(2, 4, 9))
    assert "ENOSPC" in msg and "free space on the disk of" in msg and "partial output was removed" in msg
    assert len(calls) > 3
    # shard files, written by the one shard-writing thread
    calls.clear()
    msg = expect_error(tmp_path, formats.OutputWriteError, "cannot write .*out.zarr: No space left on device",
                       tmp_path / "v.npy", chunks=(2, 4, 9), shards=(2, 8, 9))
    assert "ENOSPC" in msg and len(calls) > 3
    # chunks written by zarr, for codec chains rockseg's writer leaves to it
    calls.clear()
    original = zarr.storage.LocalStore.set

    async def fills_up(self, key, value):
        calls.append(key)
        if key.startswith("c/") and len(calls) > 3:  # metadata and a few chunks fit, then the disk is full
            enospc()
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", fills_up)
    monkeypatch.setattr(formats._ChunkFiles, "of", classmethod(lambda cls, array, root: None))
    msg = expect_error(tmp_path, formats.OutputWriteError, "cannot write .*out.zarr: No space left on device",
                       tmp_path / "v.npy", chunks=(2, 4, 9))
    assert "ENOSPC" in msg and len(calls) > 3


def test_no_chunk_is_written_after_a_failure(tmp_path, monkeypatch):
    """A failed run waits for its writer threads before removing the partial store, so none writes after."""
    import threading
    import time

    vol = random_volume((8, 40, 40), "uint16")
    np.save(tmp_path / "v.npy", vol)
    started, late = threading.Event(), []
    original = formats._write_file

    def slow_then_full(path, *parts):
        if not started.is_set():
            started.set()
            enospc()
        time.sleep(0.01)  # chunks already running when the failure is seen
        original(path, *parts)
        late.append(path.exists())

    monkeypatch.setattr(formats, "_write_file", slow_then_full)
    monkeypatch.setattr(formats, "_WRITE_THREADS", 4)
    expect_error(tmp_path, formats.OutputWriteError, "No space left", tmp_path / "v.npy", chunks=(2, 5, 5))
    assert len(late) < 4 * 8 * 8  # the chunks not started were cancelled
    assert entries(tmp_path) == {"v.npy"}  # and the running ones finished before the store was removed


@pytest.mark.parametrize("dest", ["o.tif", "o.nc", "o.raw", "o.npy"])
def test_full_disk_while_exporting(tmp_path, monkeypatch, dest):
    np.save(tmp_path / "v.npy", random_volume((6, 5, 4), "uint16"))
    kind = formats._dest_kind(Path(dest))
    writer = {"tiff": "_write_tiff", "netcdf": "_write_netcdf", "raw": "_write_raw", "npy": "_write_npy"}[kind]
    real = getattr(formats, writer)

    def half_then_full(source, tmp, slab, advance):
        real(source, tmp, slab, advance)  # the file is complete on disk, but the last write "failed"
        enospc()

    monkeypatch.setattr(formats, writer, half_then_full)
    msg = expect_error(tmp_path, formats.OutputWriteError, f"cannot write .*{dest}: No space left", tmp_path / "v.npy",
                       dest)
    assert "free space" in msg


def test_read_failure_names_the_source(tmp_path, monkeypatch):
    vol = random_volume((8, 5, 4), "uint8")
    vol.tofile(tmp_path / "v.raw")

    def broken(self, array, position):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(formats._FileVoxels, "_fill", broken)
    expect_error(tmp_path, InputError, "cannot read .*v.raw \\(plane z=0\\): .*Input/output error", tmp_path / "v.raw",
                 shape="8,5,4", dtype="uint8")


def test_cli_convert_options_and_one_line_errors(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from rockseg.cli import app

    runner = CliRunner()
    labels, colours = rgb_labels((6, 8, 9), PALETTE)
    tifffile.imwrite(tmp_path / "m.tif", colours, photometric="rgb")
    args = ["convert", str(tmp_path / "m.tif"), str(tmp_path / "l.zarr"), "--colormap", PALETTE_TEXT,
            "--phases", "3=fool's gold", "--crop", "1:6,:,2:", "--slices", "::2", "--chunks", "2,4,4",
            "--shards", "4,8,8"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = read_zarr(tmp_path / "l.zarr")
    np.testing.assert_array_equal(out[:], labels[2:6:2, :, 2:])  # planes 0, 2, 4... inside 1:6
    assert out.attrs["phases"]["3"] == "fool's gold" and out.attrs["phases"]["0"] == "pore"
    assert out.shards == (2, 8, 8)  # clipped to the chunks covering the 2 planes kept
    result = runner.invoke(app, ["convert", str(tmp_path / "m.tif"), str(tmp_path / "x.zarr"),
                                 "--colormap", "0,0,255=0"])
    assert result.exit_code == 2 and "is not in --colormap" in result.output and "m.tif" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "x.zarr").exists()
    monkeypatch.setattr(formats, "_write_raw", lambda *a: enospc())
    result = runner.invoke(app, ["convert", str(tmp_path / "l.zarr"), str(tmp_path / "e.raw")])
    assert result.exit_code == 2 and "No space left on device" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "e.raw").exists() and not (tmp_path / "e.mhd").exists()


def test_bigtiff_above_the_limit(tmp_path, monkeypatch):
    vol = random_volume((4, 5, 6), "uint16")
    monkeypatch.setattr(formats, "_BIGTIFF_THRESHOLD", vol.nbytes - 1)
    export(vol, tmp_path / "big.tif", voxel_size=(3.0, 2.0, 1.0))
    monkeypatch.setattr(formats, "_BIGTIFF_THRESHOLD", vol.nbytes)
    export(vol, tmp_path / "classic.tif")
    with tifffile.TiffFile(tmp_path / "big.tif") as tif, tifffile.TiffFile(tmp_path / "classic.tif") as classic:
        assert tif.is_bigtiff and not tif.is_imagej
        assert not classic.is_bigtiff and classic.is_imagej
    with open_source(tmp_path / "big.tif") as src:
        np.testing.assert_array_equal(src.read(0, 4), vol)
        assert src.voxel_size == pytest.approx((3.0, 2.0, 1.0))


# ---------------------------------------------------------------------------------------------------------------------
# Fast statistics and the reading pipeline


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "bool", "float32", "int32"])
def test_slab_statistics_equal_numpy(monkeypatch, dtype):
    from rockseg.io import intensity as normalization
    from rockseg.io.intensity import IntensityAccumulator

    monkeypatch.setattr(normalization, "_PIECE", 1000)  # many pieces per slab
    monkeypatch.setattr(normalization, "_HIST_PIECE", 999)
    vol = random_volume((7, 30, 40), "uint8") > 128 if dtype == "bool" else random_volume((7, 30, 40), dtype)
    acc = IntensityAccumulator(vol.dtype, total=vol.size)
    for z in range(0, 7, 3):
        acc.update(vol[z : z + 3])
    got = acc.result()
    values = vol.astype(np.float64)
    assert (got["min"], got["max"]) == (values.min(), values.max())
    assert got["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert got["std"] == pytest.approx(values.std(), rel=1e-9)
    lo, hi = np.percentile(values, [0.5, 99.5], method="inverted_cdf")
    if dtype in ("float32", "int32"):
        assert not got["exact"]
        assert got["p_low"] == pytest.approx(lo, rel=0.05, abs=1) and got["p_high"] == pytest.approx(hi, rel=0.05)
    else:
        assert got["exact"] and (got["p_low"], got["p_high"]) == (lo, hi)


def test_prefetch_gives_the_same_slabs_and_passes_errors(monkeypatch):
    vol = random_volume((23, 4, 5), "uint8")
    src = CountingSource(vol)
    slabs = list(formats._stream(src, 5))
    assert [(z0, z1) for z0, z1, _ in slabs] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    np.testing.assert_array_equal(np.concatenate([b for _, _, b in slabs]), vol)

    class Broken(CountingSource):
        def _read(self, z0, z1):
            if z0 >= 10:
                raise InputError("bad plane")
            return super()._read(z0, z1)

    stream = formats._stream(Broken(vol), 5)
    assert next(stream)[0] == 0 and next(stream)[0] == 5
    with pytest.raises(InputError, match="bad plane"):
        next(stream)
    stream = formats._stream(CountingSource(vol), 5)
    next(stream)
    stream.close()  # stopping early joins the reader thread
    monkeypatch.setattr(formats, "_PREFETCH_BYTES", 1)  # big slabs are read in turn
    assert len(list(formats._stream(CountingSource(vol), 5))) == 5


def test_fake_images_and_stores(tmp_path):
    for name in ("fake.png", "fake.mhd"):
        (tmp_path / name).write_text("just some text\n")
    (tmp_path / "fake.zarr").mkdir()
    expect_error(tmp_path, InputError, "fake.png is not a readable image", tmp_path / "fake.png")
    expect_error(tmp_path, InputError, "fake.mhd is not a MetaImage header", tmp_path / "fake.mhd")
    expect_error(tmp_path, InputError, "fake.zarr is not a Zarr array", tmp_path / "fake.zarr")
    folder = tmp_path / "pngs"
    folder.mkdir()
    (folder / "a.png").write_text("text")
    expect_error(tmp_path, InputError, "a.png is not a readable image", folder)


class BandSource(formats.Source):
    """A source that reads bands of rows cheaply and records the regions read."""

    band_reads = True

    def __init__(self, vol):
        super().__init__("bands", vol.shape, vol.dtype)
        self.vol, self.regions = vol, []

    def _read_region(self, region):
        self.regions.append(tuple((s.start, s.stop) for s in region))
        return self.vol[region]


def test_wide_slabs_are_written_in_bands_of_whole_chunk_rows(tmp_path, monkeypatch):
    vol = random_volume((10, 23, 6), "uint16")
    monkeypatch.setattr(formats, "_SLAB_BYTES", 4 * 8 * 6 * 2)  # room for 8 rows of a 4-plane slab
    src = BandSource(vol)
    write_zarr(src, tmp_path / "b.zarr", chunks=(4, 3, 6))
    np.testing.assert_array_equal(read_zarr(tmp_path / "b.zarr")[:], vol)
    assert src.regions[:3] == [((0, 4), (0, 6), (0, 6)), ((0, 4), (6, 12), (0, 6)), ((0, 4), (12, 18), (0, 6))]
    assert len(src.regions) == 3 * 4  # 3 slabs of 4 bands (6 rows = 2 chunk rows; 23 rows)
    # a shard row is the unit with shards: every shard is still written once
    writes = spy_on_writes(monkeypatch)
    src = BandSource(vol)
    write_zarr(src, tmp_path / "s.zarr", chunks=(2, 3, 6), shards=(4, 6, 6))
    np.testing.assert_array_equal(read_zarr(tmp_path / "s.zarr")[:], vol)
    assert all(y0 % 6 == 0 and (y1 - y0 == 6 or y1 == 23) for _, (y0, y1), _ in src.regions)  # whole shard rows
    data = [k for k in writes if k.startswith("c/")]
    assert len(data) == len(set(data)) == 3 * 4
    # a source that decodes whole planes is read in whole planes
    counting = CountingSource(vol)
    write_zarr(counting, tmp_path / "c.zarr", chunks=(4, 3, 6))
    assert counting.reads == [(0, 4), (4, 8), (8, 10)]
    # a raw file reads bands from the disk
    vol.tofile(tmp_path / "v.raw")
    convert(tmp_path / "v.raw", tmp_path / "r.zarr", shape=vol.shape, dtype="uint16", chunks=(4, 3, 6))
    np.testing.assert_array_equal(read_zarr(tmp_path / "r.zarr")[:], vol)


# ---------------------------------------------------------------------------------------------------------------------
# The parallel chunk writer


def chunk_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted((store / "c").rglob("*")) if p.is_file()}


@pytest.mark.parametrize("compressor", ["blosc-zstd", "zstd", "lz4", "none"])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
def test_chunk_files_are_byte_for_byte_what_zarr_writes(tmp_path, compressor, dtype):
    from rockseg.io.stores import compressors_for

    cases = [((13, 17, 19), (5, 6, 7), None), ((9, 16), (4, 16), None), ((4, 8, 8), (4, 8, 8), None),
             # shards: 3 x 2 x 3 chunks (a Morton order that skips codes), edge shards with chunks beyond the array
             ((20, 15, 40), (4, 6, 8), (12, 12, 24)), ((9, 16), (4, 4), (8, 16))]
    for shape, chunks, shards in cases:
        vol = random_volume(shape, dtype)
        vol.flat[:7] = 0  # a run zarr's own writer would also have to store
        ours = write_zarr(vol, tmp_path / "ours.zarr", chunks=chunks, shards=shards, compressor=compressor,
                          overwrite=True)
        theirs = zarr.create_array(store=str(tmp_path / "theirs.zarr"), shape=shape, chunks=chunks, shards=shards,
                                   dtype=vol.dtype, compressors=compressors_for(compressor), fill_value=0,
                                   zarr_format=3, overwrite=True, config={"write_empty_chunks": True})
        theirs[...] = vol
        assert ours.metadata.codecs == theirs.metadata.codecs
        mine, zarrs = chunk_files(tmp_path / "ours.zarr"), chunk_files(tmp_path / "theirs.zarr")
        assert len(mine) == int(np.prod([-(-n // c) for n, c in zip(shape, shards or chunks)]))  # edges included
        assert mine == zarrs
        np.testing.assert_array_equal(ours[...], vol)


def test_chunk_writer_leaves_other_codec_chains_to_zarr(tmp_path):
    plain = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(8, 8), chunks=(4, 4), dtype="uint16")
    sharded = zarr.create_array(store=str(tmp_path / "s.zarr"), shape=(8, 8), chunks=(4, 4), shards=(8, 8),
                                dtype="uint16")
    for array in (plain, sharded):
        assert formats._ChunkFiles.of(array, tmp_path / "a.zarr") is not None
    checked = zarr.create_array(store=str(tmp_path / "c.zarr"), shape=(8, 8), chunks=(4, 4), dtype="uint16",
                                compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()])
    index_first = zarr.create_array(store=str(tmp_path / "i.zarr"), shape=(8, 8), dtype="uint16", chunks=(8, 8),
                                    compressors=None,
                                    serializer=zarr.codecs.ShardingCodec(chunk_shape=(4, 4), index_location="start"))
    in_memory = zarr.create_array(store=zarr.storage.MemoryStore(), shape=(8, 8), chunks=(4, 4), dtype="uint16")
    for array in (checked, index_first, in_memory):
        assert formats._ChunkFiles.of(array, tmp_path / "x.zarr") is None


@pytest.mark.parametrize("dtype", ["uint16", "int8", "float32"])
def test_statistics_from_the_chunk_threads_equal_one_pass(tmp_path, monkeypatch, dtype):
    from rockseg.io.intensity import IntensityAccumulator

    monkeypatch.setattr(formats, "_WRITE_THREADS", 4)
    vol = random_volume((21, 30, 26), dtype)
    vol[3, 4, 5] = np.iinfo(dtype).max if dtype != "float32" else 1e6  # an outlier in one chunk
    out = write_zarr(vol, tmp_path / "v.zarr", chunks=(4, 7, 8))
    one = IntensityAccumulator(vol.dtype, total=vol.size)
    for z in range(0, 21, 4):  # slab by slab, in order, as one thread would
        one.update(vol[z : z + 4])
    assert out.attrs["intensity"] == one.result()  # exact, whatever the order the threads ran in


def test_accumulator_updates_from_threads_in_any_order():
    from concurrent.futures import ThreadPoolExecutor

    from rockseg.io.intensity import IntensityAccumulator

    vol = random_volume((40, 33, 35), "int16")
    acc = IntensityAccumulator(vol.dtype)
    assert acc.exact
    pieces = [vol[z, y : y + 5] for z in range(40) for y in range(0, 33, 5)]
    order = rng.permutation(len(pieces))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: acc.update(pieces[i]), order))
    assert acc.count == vol.size
    np.testing.assert_array_equal(acc._hist, np.bincount(vol.reshape(-1).astype(np.int64) + 32768, minlength=65536))
    assert not IntensityAccumulator(np.dtype("float32")).exact
