"""Tests of rockseg.io.colour: the --colormap parser and colour-coded label images read as labels."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from rockseg.errors import InputError
from rockseg.io.colour import parse_colormap
from rockseg.io.conversion import convert
from rockseg.io.opening import open_source
from tests.io.samples import PALETTE, PALETTE_TEXT, expect_error, read_zarr, rgb_labels


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
