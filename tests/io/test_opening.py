"""Tests of rockseg.io.opening: the reader chosen by the kind of path, and the errors for paths it cannot read."""

from __future__ import annotations

import numpy as np

from rockseg.errors import InputError, MissingInputError
from tests.io.samples import expect_error


def test_missing_source(tmp_path):
    msg = expect_error(tmp_path, MissingInputError, "does not exist", tmp_path / "nope.tif")
    assert "nope.tif" in msg
    expect_error(tmp_path, MissingInputError, "no file matches", str(tmp_path / "nothing*.tif"))


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


def test_unknown_extensions_list_the_supported_ones(tmp_path):
    (tmp_path / "v.dat").write_bytes(b"12345678")
    msg = expect_error(tmp_path, InputError, "v.dat has an extension \\(.dat\\)", tmp_path / "v.dat")
    assert ".nc" in msg and ".tif" in msg and ".raw" in msg and ".npy" in msg and ".zarr" in msg
    np.save(tmp_path / "v.npy", np.zeros((2, 3, 4), np.uint8))
    msg = expect_error(tmp_path, InputError, "output .*out.vtk has an extension", tmp_path / "v.npy", "out.vtk")
    assert ".zarr" in msg and ".tif" in msg and ".h5" in msg


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    expect_error(tmp_path, InputError, "empty holds no .tif/.tiff slice files", tmp_path / "empty")
