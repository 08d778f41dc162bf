"""Tests of rockseg.formats: every source format to Zarr, every export, and every bad-input error."""

from __future__ import annotations

import os
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import tifffile
import zarr

from rockseg import formats
from rockseg.errors import InputError, MissingInputError, OutputExistsError, RocksegError
from rockseg.formats import convert, export, open_source, parse_dtype, parse_shape, write_zarr

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
