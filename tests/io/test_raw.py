"""Tests of rockseg.io.raw: raw files with options or a header beside them, MetaImage, NRRD and PyHST .vol."""

from __future__ import annotations

import numpy as np
import pytest

from rockseg.errors import InputError, MissingInputError
from rockseg.io.conversion import convert
from rockseg.io.exporters import export
from rockseg.io.opening import open_source
from tests.io.samples import expect_error, random_volume, read_zarr


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


def test_raw_oversized_and_npy_truncated(tmp_path):
    np.zeros((10, 20, 30), np.uint8).tofile(tmp_path / "v.raw")
    msg = expect_error(tmp_path, InputError, "has 6000 bytes but .* needs 5400 bytes", tmp_path / "v.raw",
                       shape="9,20,30", dtype="uint8")
    assert "--shape 10,20,30" in msg and "--header-bytes 600" in msg
    np.save(tmp_path / "t.npy", np.zeros((10, 20, 30), np.uint16))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-100])
    expect_error(tmp_path, InputError, "t.npy has .* bytes but its header .* needs .*truncated", tmp_path / "t.npy")


def test_metaimage_source(tmp_path):
    vol = random_volume((3, 4, 5), "int16")
    export(vol, tmp_path / "v.raw", voxel_size=(3.0, 2.0, 1.0))
    with open_source(tmp_path / "v.mhd") as src:
        assert src.voxel_size == (3.0, 2.0, 1.0)
        np.testing.assert_array_equal(src.read(0, 3), vol)


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
