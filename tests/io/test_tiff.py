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


MIXEDWET = BEREA.parents[1] / "icl-mixedwet-250" / "MW_fw0.tif"


@pytest.mark.skipif(not MIXEDWET.exists(), reason="../shared/data/icl-mixedwet-250 is not here")
def test_palette_lzw_tiff_matches_pillow_and_its_published_fractions(tmp_path):
    # Independent reference: Pillow's own LZW decoder, palette indices of every page; SOURCE.md's phase fractions
    from PIL import Image

    convert(MIXEDWET, tmp_path / "icl.zarr")
    out = read_zarr(tmp_path / "icl.zarr")[:]
    with Image.open(MIXEDWET) as image:
        for z in (0, 1, 124, 249):
            image.seek(z)
            assert image.mode == "P"
            np.testing.assert_array_equal(out[z], np.asarray(image))
    fractions = np.bincount(out.ravel(), minlength=3) / out.size
    np.testing.assert_allclose(fractions, [0.016, 0.211, 0.773], atol=5e-4)


def _without_imagecodecs(monkeypatch):
    """tifffile as if the imagecodecs package were not installed (its codec cache emptied, the import failing)."""
    import types

    monkeypatch.setattr(tifffile.tifffile, "imagecodecs", types.ModuleType("imagecodecs"))  # no codec in it
    monkeypatch.setattr(tifffile.TIFF.DECOMPRESSORS, "_codecs", {1: tifffile.TIFF.DECOMPRESSORS._codecs.get(1)})


def test_palette_lzw_without_imagecodecs_still_gives_indices(tmp_path, monkeypatch):
    # Pillow decodes LZW when imagecodecs is missing: the palette indices must come back, not their colours
    vol = random_volume((4, 9, 10), "uint8") % 3
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :3] = [[65535, 0, 0], [0, 65535, 0], [0, 0, 65535]]
    tifffile.imwrite(tmp_path / "p.tif", vol, photometric="palette", colormap=cmap, compression="lzw")
    _without_imagecodecs(monkeypatch)
    convert(tmp_path / "p.tif", tmp_path / "p.zarr")
    np.testing.assert_array_equal(read_zarr(tmp_path / "p.zarr")[:], vol)


def test_a_codec_that_is_really_missing_is_named_with_its_package(tmp_path, monkeypatch):
    vol = random_volume((3, 8, 8), "uint8")
    tifffile.imwrite(tmp_path / "z.tif", vol, compression="png", photometric="minisblack")
    _without_imagecodecs(monkeypatch)
    with pytest.raises(InputError, match=r"z\.tif uses PNG compression.*imagecodecs.*pip install imagecodecs"):
        convert(tmp_path / "z.tif", tmp_path / "z.zarr")
    assert not (tmp_path / "z.zarr").exists()


@pytest.mark.parametrize("name,options", [
    ("lzw", {"compression": "lzw"}),
    ("deflate", {"compression": "zlib"}),
    ("zstd", {"compression": "zstd"}),
    ("tiled", {"tile": (16, 16), "compression": "lzw"}),
    ("bigtiff", {"bigtiff": True, "compression": "zlib"}),
    ("predictor", {"compression": "lzw", "predictor": True}),
])
def test_tiffs_as_labs_write_them(tmp_path, name, options):
    vol = random_volume((5, 40, 36), "uint16")
    tifffile.imwrite(tmp_path / f"{name}.tif", vol, photometric="minisblack", **options)
    convert(tmp_path / f"{name}.tif", tmp_path / f"{name}.zarr", chunks=(2, 16, 16))
    np.testing.assert_array_equal(read_zarr(tmp_path / f"{name}.zarr")[:], vol)


def test_jpeg_tiff_decodes_like_pillow(tmp_path):
    from PIL import Image

    vol = (random_volume((3, 32, 32), "uint8") // 64 * 64).astype(np.uint8)
    tifffile.imwrite(tmp_path / "j.tif", vol, photometric="minisblack", compression="jpeg")
    convert(tmp_path / "j.tif", tmp_path / "j.zarr")
    out = read_zarr(tmp_path / "j.zarr")[:]
    with Image.open(tmp_path / "j.tif") as image:
        for z in range(3):
            image.seek(z)
            assert np.abs(out[z].astype(int) - np.asarray(image).astype(int)).max() <= 1  # lossy: decoders agree


def test_ome_tiff_and_imagej_hyperstack_voxel_sizes(tmp_path):
    vol = random_volume((4, 6, 7), "uint8")
    tifffile.imwrite(tmp_path / "o.ome.tif", vol, ome=True, compression="zlib",
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0,
                               "PhysicalSizeZUnit": "nm"})
    tifffile.imwrite(tmp_path / "hyper.tif", vol[:, None], imagej=True, metadata={"axes": "ZCYX", "spacing": 3.0, "unit": "um"},
                     resolution=(1 / 1.5, 1 / 1.5))
    with open_source(tmp_path / "o.ome.tif") as s:
        assert s.voxel_size == pytest.approx((0.002, 0.5, 0.5)) and s.voxel_unit == "um"
        np.testing.assert_array_equal(s.read(0, 4), vol)
    with open_source(tmp_path / "hyper.tif") as s:  # one channel: a plain stack
        assert s.shape == vol.shape and s.voxel_size == pytest.approx((3.0, 1.5, 1.5))
        np.testing.assert_array_equal(s.read(0, 4), vol)
    two = np.stack([vol, vol], axis=1)
    tifffile.imwrite(tmp_path / "two.tif", two, imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(InputError, match=r"two\.tif holds .* \(axes ZCYX\).*save each channel"):
        open_source(tmp_path / "two.tif")


def test_rgb_lzw_pages_read_through_a_colour_map(tmp_path):
    labels = random_volume((3, 8, 9), "uint8") % 2
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    rgb[labels == 1] = (255, 0, 0)
    rgb[labels == 0] = (0, 0, 255)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb", compression="lzw")
    convert(tmp_path / "rgb.tif", tmp_path / "rgb.zarr", colormap="0,0,255=0:pore;255,0,0=1:solid")
    np.testing.assert_array_equal(read_zarr(tmp_path / "rgb.zarr")[:], labels)
