"""Tests of rockseg.io.options: the option parsers, and the chunk and shard checks as convert applies them."""

from __future__ import annotations

import numpy as np
import pytest

from rockseg.errors import InputError
from rockseg.io.conversion import convert
from rockseg.io.options import parse_dtype, parse_shape, parse_slices
from tests.io.samples import expect_error, random_volume, read_zarr


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


def test_parse_slices():
    assert parse_slices("100:200") == slice(100, 200)
    assert parse_slices("0:400:50") == slice(0, 400, 50)
    assert parse_slices("::3") == slice(None, None, 3)
    assert parse_slices("5") == slice(5, 6) and parse_slices("-1") == slice(-1, None)
    for bad in ("a:b", "1:2:3:4", "1:5:0", "1:5:-1", "1.5:3"):
        with pytest.raises(InputError, match="--slices"):
            parse_slices(bad)


def test_default_chunks_clipped_3d_and_2d(tmp_path):
    np.save(tmp_path / "v3.npy", random_volume((10, 100, 30), "uint8"))
    np.save(tmp_path / "v2.npy", random_volume((700, 300), "uint8"))
    convert(tmp_path / "v3.npy", tmp_path / "v3.zarr")
    convert(tmp_path / "v2.npy", tmp_path / "v2.zarr")
    assert read_zarr(tmp_path / "v3.zarr").chunks == (10, 64, 30)
    assert read_zarr(tmp_path / "v2.zarr").chunks == (512, 300)
    np.testing.assert_array_equal(read_zarr(tmp_path / "v2.zarr")[:], np.load(tmp_path / "v2.npy"))


def test_shards_must_be_whole_chunks(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((64, 64, 64), np.uint8))
    expect_error(tmp_path, InputError, "--shards 100,64,64 is not a whole number of chunks 64,64,64.*128,64,64",
                 tmp_path / "v.npy", shards="100,64,64")
    expect_error(tmp_path, InputError, "--shards 64,64 has 2 values", tmp_path / "v.npy", shards="64,64")
    expect_error(tmp_path, InputError, "--shards applies to .zarr outputs only", tmp_path / "v.npy", "o.tif",
                 shards="64,64,64")
    expect_error(tmp_path, InputError, "--shards 'a,b,c'", tmp_path / "v.npy", shards="a,b,c")
