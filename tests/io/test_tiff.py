"""Tests of rockseg.io.tiff: TIFF stacks, slice folders and globs, their voxel sizes, and real TIFF data."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from rockseg.errors import InputError
from rockseg.io.conversion import convert
from rockseg.io.opening import open_source
from tests.io.samples import BEREA, expect_error, random_volume, read_zarr


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


def test_slices_of_different_sizes(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    tifffile.imwrite(folder / "s1.tif", np.zeros((4, 5), np.uint8))
    tifffile.imwrite(folder / "s2.tif", np.zeros((4, 6), np.uint8))
    msg = expect_error(tmp_path, InputError, r"\(4, 6\) uint8 but .* is \(4, 5\) uint8", folder)
    assert "s2.tif" in msg


def test_rgb_tiff_refused(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((4, 5, 3), np.uint8), photometric="rgb")
    expect_error(tmp_path, InputError, "rgb.tif holds an image of shape .* grayscale", tmp_path / "rgb.tif")


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


@pytest.mark.skipif(not (BEREA.parents[1] / "icl-mixedwet-250" / "MW_fw0.tif").exists(),
                    reason="../shared/data/icl-mixedwet-250 is not here")
def test_palette_lzw_tiff_from_a_lab_converts_to_its_labels(tmp_path):
    # A palette (colour-mapped) LZW TIFF as ImageJ/Avizo write them: the stored indices are the labels 0, 1, 2
    src = BEREA.parents[1] / "icl-mixedwet-250" / "MW_fw0.tif"
    convert(src, tmp_path / "icl.zarr")
    out = read_zarr(tmp_path / "icl.zarr")
    with tifffile.TiffFile(src) as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE and tif.pages[0].compression == 5  # LZW
        want = tif.asarray()
    assert out.shape == (250, 300, 300) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, want)
    assert set(np.unique(out)) == {0, 1, 2}
