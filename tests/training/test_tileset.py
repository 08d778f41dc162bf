"""Tests of rockseg.training.tileset: the tiles, training regions and attributes written, reading them back (versions
1, 2 and 3), the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from rockseg.errors import InputError, MissingInputError, OutputExistsError
from rockseg.io.intensity import intensity_stats
from rockseg.training import make_tiles, read_tiles
from tests.training.helpers import check_disjoint_inside_slabs, check_patches, overlapping_pairs, read_origins, two_phase, write

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def test_3d_tiles_split_counts_and_attrs(vol, tmp_path):
    img_path, lab_path, image, labels = vol
    out = tmp_path / "tiles.zarr"
    summary = make_tiles(img_path, lab_path, out, dims=3, size=16, seed=3)
    attrs = check_patches(out, image, labels, (16, 16, 16))
    group = zarr.open_group(str(out), mode="r")
    assert group["train/image"].shape == (16, 16, 16, 16)  # 2 * 16*32*32 / 16**3 = 8, raised to the minimum 16
    assert group["val/image"].shape == (16, 16, 16, 16)  # same slab volume -> same count
    assert attrs["format"] == "rockseg-tiles" and attrs["dims"] == 3 and attrs["size"] == 16
    assert attrs["classes"] == 2 and attrs["phases"] == {"0": "phase0", "1": "phase1"}
    assert attrs["intensity"] == intensity_stats(image)
    assert attrs["rockseg"]["version"]
    assert attrs["source"] == {"image": str(img_path.resolve()), "labels": str(lab_path.resolve())}
    # All axes are 32 long: the split takes the first longest axis, with a one-tile (16) validation slab.
    assert attrs["split"] == {"axis": 0, "axis_name": "Z", "region": [[0, 32]] * 3, "train": [0, 16],
                              "val": [16, 32]}
    train_o, val_o = group["train/origins"][...], group["val/origins"][...]
    assert (train_o[:, 0] + 16 <= 16).all() and (val_o[:, 0] >= 16).all()
    assert overlapping_pairs(train_o, val_o, (16, 16, 16)) == 0
    assert sum(attrs["class_counts"]["train"]) == 16 * 16**3
    assert attrs["class_counts"]["train"][1] == int(group["train/labels"][...].sum())
    assert summary["train"] == 16 and summary["val"] == 16 and summary["classes"] == 2
    assert summary["fractions"]["val"]["phase1"] == pytest.approx(group["val/labels"][...].mean())


def test_2d_tiles_from_a_stack_split_whole_slices(vol, tmp_path):
    img_path, lab_path, image, labels = vol
    out = tmp_path / "tiles2d.zarr"
    summary = make_tiles(img_path, lab_path, out, dims=2, size=16)
    attrs = check_patches(out, image, labels, (1, 16, 16))
    group = zarr.open_group(str(out), mode="r")
    # 6 of 32 slices (round(0.2 * 32)) go to validation; count = ceil(2 * 26*32*32 / 16**2) = 208,
    # validation in proportion: round(208 * 6 / 26) = 48.
    assert attrs["split"]["axis"] == 0 and attrs["split"]["train"] == [0, 26] and attrs["split"]["val"] == [26, 32]
    assert group["train/image"].shape == (208, 16, 16) and group["val/labels"].shape == (48, 16, 16)
    assert summary["train"] == 208 and summary["val"] == 48
    train_z, val_z = group["train/origins"][:, 0], group["val/origins"][:, 0]
    assert train_z.max() < 26 <= val_z.min()
    assert len(set(val_z.tolist())) > 1  # patches come from several validation slices


def test_overwrite(vol, tmp_path):
    img_path, lab_path, _, _ = vol
    out = tmp_path / "t.zarr"
    make_tiles(img_path, lab_path, out, dims=3, size=16, count=16)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        make_tiles(img_path, lab_path, out, dims=3, size=16, count=20)
    make_tiles(img_path, lab_path, out, dims=3, size=16, count=20, overwrite=True)
    assert zarr.open_group(str(out))["train/image"].shape[0] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.zarr", "lab.zarr", "t.zarr"]


def test_read_tiles_rejects_other_stores(vol, tmp_path):
    img_path, _, _, _ = vol
    with pytest.raises(InputError, match="not a rockseg tile set"):
        read_tiles(img_path)
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w").attrs["x"] = 1
    with pytest.raises(InputError, match="format='rockseg-tiles'"):
        read_tiles(tmp_path / "g.zarr")
    with pytest.raises(MissingInputError, match="rockseg tile"):
        read_tiles(tmp_path / "none.zarr")


def test_real_sandstone_slices_2d(tmp_path):
    src = DATA / "sandstone-versa"
    if not (src / "slices_images.tif").exists():
        pytest.skip(f"real data not found at {src}")
    import tifffile

    image = tifffile.imread(src / "slices_images.tif")[:, :256, :256]
    labels = tifffile.imread(src / "slices_labels.tif")[:, :256, :256]
    img_path = write(tmp_path / "i.zarr", image, voxel_size=[2.2315] * 3, voxel_unit="um")
    lab_path = write(tmp_path / "l.zarr", labels)
    out = tmp_path / "t.zarr"
    s = make_tiles(img_path, lab_path, out, dims=2, size=64, count=24,
                   phases={0: "pore", 1: "clay", 2: "quartz", 3: "pyrite"})
    attrs = check_patches(out, image, labels, (1, 64, 64))
    assert s["classes"] == attrs["classes"] == 4
    assert attrs["split"]["train"] == [0, 8] and attrs["split"]["val"] == [8, 10]  # whole slices to validation
    assert attrs["voxel_size"] == [2.2315] * 3 and attrs["voxel_unit"] == "um"
    assert s["val"] == 6  # round(24 * 2 / 8)


@pytest.mark.parametrize("balance", [True, False])
@pytest.mark.parametrize("axis, index", [("z", 0), ("y", 1), ("x", 2)])
def test_2d_tiles_across_each_axis_are_the_right_slices(tmp_path, axis, index, balance):
    image, labels = two_phase((24, 32, 40), seed=4)
    img_path, lab_path = write(tmp_path / "i.zarr", image), write(tmp_path / "l.zarr", labels)
    out = tmp_path / "t.zarr"
    s = make_tiles(img_path, lab_path, out, dims=2, size=16, count=40, axis=axis, balance=balance)
    attrs, arrays = read_tiles(out)
    origins = read_origins(out)
    assert attrs["slice_axis"] == axis == s["slice_axis"] and attrs["format_version"] == 3
    assert attrs["sampling"]["method"] == ("balanced" if balance else "uniform")
    # Whole slices across the slice axis go to validation: round(0.2 * length) of them.
    length = image.shape[index]
    assert attrs["split"]["axis"] == index
    assert attrs["split"]["val"] == [length - round(0.2 * length), length]
    for part in ("train", "val"):
        for o, ti, tl in zip(origins[part], arrays[f"{part}/image"], arrays[f"{part}/labels"]):
            index_ = [slice(int(a), int(a) + 16) for a in o]
            index_[index] = int(o[index])  # a plane across the slice axis, remaining axes in order
            np.testing.assert_array_equal(ti, image[tuple(index_)])
            np.testing.assert_array_equal(tl, labels[tuple(index_)])
    extent = tuple(1 if i == index else 16 for i in range(3))
    check_disjoint_inside_slabs(attrs, arrays, origins, extent)
    assert len(set(origins["val"][:, index].tolist())) > 1  # several validation slices


def test_axis_z_on_a_2d_image_and_3d_tiles_record_the_slice_axis(tmp_path):
    image, labels = two_phase((48, 40), seed=1)
    img_path, lab_path = write(tmp_path / "i.zarr", image), write(tmp_path / "l.zarr", labels)
    make_tiles(img_path, lab_path, tmp_path / "a.zarr", dims=2, size=16, count=16, axis="Z")
    assert read_tiles(tmp_path / "a.zarr")[0]["slice_axis"] == "z"
    image, labels = two_phase((32, 32, 32))
    img_path, lab_path = write(tmp_path / "i3.zarr", image), write(tmp_path / "l3.zarr", labels)
    make_tiles(img_path, lab_path, tmp_path / "b.zarr", dims=3, size=16, count=16)
    assert read_tiles(tmp_path / "b.zarr")[0]["slice_axis"] is None


def test_two_pairs_with_different_shapes_dtypes_and_intensities(tmp_path):
    image_a, labels_a = two_phase((24, 32, 32), seed=1)
    image_b, labels_b = two_phase((32, 24, 40), seed=2)
    image_b = image_b.astype(np.uint16) * 100 + 1000  # another scanner: other grey values and dtype
    paths = [write(tmp_path / n, d) for n, d in
             (("a.zarr", image_a), ("la.zarr", labels_a), ("b.zarr", image_b), ("lb.zarr", labels_b))]
    out = tmp_path / "t.zarr"
    s = make_tiles(paths[0::2], paths[1::2], out, dims=3, size=8, count=40, seed=3)
    attrs, arrays = read_tiles(out)
    assert set(arrays) == {f"{p}/{k}" for p in ("train", "val") for k in ("image", "labels", "source")}
    # Splits: a along Y (first longest) [0, 24) | [24, 32); b along X [0, 32) | [32, 40).
    # Training slabs 24*24*32 = 18432 and 32*24*32 = 24576 voxels (3:4): 40 -> 17.14, 22.86 -> 17, 23.
    # Validation: round(40 * 12288 / 43008) = 11 over equal slabs (6144 each): 5.5, 5.5 -> 6, 5 (tie: first).
    assert [src["counts"] for src in attrs["sources"]] == [{"train": 17, "val": 6}, {"train": 23, "val": 5}]
    assert attrs["counts"] == {"train": 40, "val": 11} and s["train"] == 40 and s["val"] == 11 and s["sources"] == 2
    np.testing.assert_array_equal(arrays["train/source"], [0] * 17 + [1] * 23)
    np.testing.assert_array_equal(arrays["val/source"], [0] * 6 + [1] * 5)
    assert arrays["train/source"].dtype == np.uint8
    a, b = attrs["sources"]
    assert a["split"]["axis"] == 1 and a["split"]["val"] == [24, 32]
    assert b["split"]["axis"] == 2 and b["split"]["val"] == [32, 40]
    assert a["intensity"] == intensity_stats(image_a) and b["intensity"] == intensity_stats(image_b)
    assert a["image"] == str(paths[0].resolve()) and b["labels"] == str(paths[3].resolve())
    # Readers of version 1 see the first pair.
    assert attrs["intensity"] == a["intensity"] and attrs["split"] == a["split"] == s["split"]
    assert attrs["source"] == {"image": a["image"], "labels": a["labels"]}
    # Mixed dtypes: float32 tiles, each equal to its own source at its origin.
    assert arrays["train/image"].dtype == np.float32
    origins = read_origins(out)
    sources = [(image_a, labels_a), (image_b, labels_b)]
    for part in ("train", "val"):
        for o, si, ti, tl in zip(origins[part], arrays[f"{part}/source"], arrays[f"{part}/image"],
                                 arrays[f"{part}/labels"]):
            index = tuple(slice(int(v), int(v) + 8) for v in o)
            np.testing.assert_array_equal(ti, sources[si][0][index].astype(np.float32))
            np.testing.assert_array_equal(tl, sources[si][1][index])
    check_disjoint_inside_slabs(attrs, arrays, origins, (8, 8, 8))
    assert attrs["class_counts"]["train"] == np.bincount(arrays["train/labels"].ravel()).tolist()


def write_version_1(path: Path, dims: int = 2) -> dict:
    """A tile set as rockseg wrote it before format version 2 (no source arrays, one pair)."""
    rng = np.random.default_rng(0)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    for part, n in (("train", 6), ("val", 2)):
        group.create_array(f"{part}/image", shape=(n,) + (16,) * dims, dtype=np.uint8)[...] = rng.integers(
            0, 255, (n,) + (16,) * dims)
        group.create_array(f"{part}/labels", shape=(n,) + (16,) * dims, dtype=np.uint8)[...] = rng.integers(
            0, 2, (n,) + (16,) * dims)
        group.create_array(f"{part}/origins", shape=(n, 3), dtype=np.int64)[...] = 0
    attrs = {
        "format": "rockseg-tiles", "format_version": 1, "dims": dims, "size": 16, "classes": 2,
        "phases": {"0": "pore", "1": "grain"}, "intensity": {"p_low": 3.0, "p_high": 250.0},
        "split": {"axis": 0, "axis_name": "Z", "region": [[0, 10], [0, 64], [0, 64]], "train": [0, 8],
                  "val": [8, 10]},
        "counts": {"train": 6, "val": 2}, "seed": 0, "source": {"image": "/d/i.zarr", "labels": "/d/l.zarr"},
    }
    group.attrs.update(attrs)
    return attrs


def test_version_1_tile_sets_still_read(tmp_path):
    old = write_version_1(tmp_path / "v1.zarr")
    attrs, arrays = read_tiles(tmp_path / "v1.zarr")
    assert attrs["format_version"] == 1 and attrs["slice_axis"] == "z"
    assert attrs["sampling"]["method"] == "uniform"
    assert attrs["sources"] == [{"image": "/d/i.zarr", "labels": "/d/l.zarr", "intensity": old["intensity"],
                                 "split": old["split"], "counts": old["counts"]}]
    assert set(arrays) == {f"{p}/{k}" for p in ("train", "val") for k in ("image", "labels", "source")}
    np.testing.assert_array_equal(arrays["train/source"], np.zeros(6, np.uint8))
    assert arrays["val/source"].dtype == np.uint8 and arrays["val/source"].shape == (2,)
    group = zarr.open_group(str(tmp_path / "v1.zarr"))
    np.testing.assert_array_equal(arrays["train/image"], group["train/image"][...])
    write_version_1(tmp_path / "v1-3d.zarr", dims=3)
    assert read_tiles(tmp_path / "v1-3d.zarr")[0]["slice_axis"] is None


def test_read_tiles_rejects_newer_versions_and_bad_source_arrays(vol, tmp_path):
    img_path, lab_path, _, _ = vol
    out = tmp_path / "t.zarr"
    make_tiles(img_path, lab_path, out, dims=3, size=16, count=16)
    group = zarr.open_group(str(out), mode="r+")
    group["val/source"][0] = 1  # there is only source 0
    with pytest.raises(InputError, match="val/source .* does not index the 1 source"):
        read_tiles(out)
    group.attrs["format_version"] = 4
    with pytest.raises(InputError, match="format version 4, newer than this rockseg reads.*upgrade rockseg"):
        read_tiles(out)


def test_cli_tile_contract_pairs_and_odd_count(tmp_path):
    from typer.testing import CliRunner

    from rockseg.cli import app

    runner = CliRunner()
    image, labels = two_phase((24, 32, 40), seed=6)
    paths = [str(write(tmp_path / n, d)) for n, d in (("i.zarr", image), ("l.zarr", labels))]
    result = runner.invoke(app, ["tile", *paths, "-o", str(tmp_path / "a.zarr"), "--dims", "3", "--size", "8",
                                 "--count", "16"])
    assert result.exit_code == 0, result.output
    attrs, _ = read_tiles(tmp_path / "a.zarr")
    assert attrs["sampling"]["method"] == "balanced" and len(attrs["sources"]) == 1

    result = runner.invoke(app, ["tile", *paths, paths[0], "-o", str(tmp_path / "b.zarr")])
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "got 3 path(s)" in lines[0] and "give the label store after each image" in lines[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "b.zarr").exists()

    result = runner.invoke(app, ["tile", *paths, *paths, "-o", str(tmp_path / "c.zarr"), "--dims", "2",
                                 "--axis", "x", "--size", "8", "--count", "20", "--no-balance",
                                 "--crop", "0:16,:,:", "--crop", "8:24,:,0:20"])
    assert result.exit_code == 0, result.output
    assert "across x" in result.stdout and "2 image/label pair(s)" in result.stdout
    attrs, arrays = read_tiles(tmp_path / "c.zarr")
    assert attrs["slice_axis"] == "x" and attrs["sampling"]["method"] == "uniform"
    assert [s["split"]["region"] for s in attrs["sources"]] == [[[0, 16], [0, 32], [0, 40]],
                                                               [[8, 24], [0, 32], [0, 20]]]
    check_disjoint_inside_slabs(attrs, arrays, read_origins(tmp_path / "c.zarr"), (8, 8, 1))


def test_the_training_region_of_each_pair_is_stored_whole_and_only_it(tmp_path):
    from rockseg.training.tileset import read_regions

    image_a, labels_a = two_phase((24, 32, 32), seed=1)
    image_b, labels_b = two_phase((32, 24, 40), seed=2)
    image_b = image_b.astype(np.uint16) * 100
    paths = [write(tmp_path / n, d) for n, d in
             (("a.zarr", image_a), ("la.zarr", labels_a), ("b.zarr", image_b), ("lb.zarr", labels_b))]
    out = tmp_path / "t.zarr"
    s = make_tiles(paths[0::2], paths[1::2], out, dims=3, size=8, count=40, crop=[None, "2:30,:,:"])
    attrs, arrays = read_tiles(out)
    # a splits along Y: training Y [0, 24); b (cropped to Z 2:30) along X: training X [0, 32).
    want = [[[0, 24], [0, 24], [0, 32]], [[2, 30], [0, 24], [0, 32]]]
    assert [src["train_region"] for src in attrs["sources"]] == want
    voxels = 24 * 24 * 32 + 28 * 24 * 32
    assert s["regions"] is True and s["region_bytes"] == 24 * 24 * 32 * 2 + 28 * 24 * 32 * 3
    assert attrs["regions"]["stored"] and attrs["regions"]["bytes"] == s["region_bytes"]
    regions = read_regions(out, attrs)
    for (origin, img, lab), bounds, image, labels in zip(regions, want, (image_a, image_b), (labels_a, labels_b)):
        box = tuple(slice(a, b) for a, b in bounds)
        assert origin == tuple(a for a, _ in bounds) and img.dtype == image.dtype and lab.dtype == np.uint8
        np.testing.assert_array_equal(img, image[box])
        np.testing.assert_array_equal(lab, labels[box])
    assert sum(attrs["regions"]["class_counts"]) == voxels
    # The region holds every fixed training patch and no validation voxel: it ends where the validation slab starts.
    origins = read_origins(out)
    for s_, src in enumerate(attrs["sources"]):
        lo, hi = np.array(src["train_region"]).T
        o = origins["train"][arrays["train/source"] == s_]
        assert ((o >= lo) & (o + 8 <= hi)).all()
        axis = src["split"]["axis"]
        assert hi[axis] == src["split"]["val"][0]


def test_regions_over_the_bound_are_not_stored_and_older_sets_have_none(vol, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from rockseg.cli import app
    from rockseg.training import tileset

    img_path, lab_path, _, _ = vol
    region_bytes = 16 * 32 * 32 * 2  # training slab Z [0, 16) of a uint8 image and its labels
    monkeypatch.setattr(tileset, "REGION_MAX_BYTES", region_bytes - 1)
    s = make_tiles(img_path, lab_path, tmp_path / "a.zarr", dims=3, size=16, count=16)
    attrs, _ = read_tiles(tmp_path / "a.zarr")
    assert s["regions"] is False and s["region_bytes"] == region_bytes and not attrs["regions"]["stored"]
    assert tileset.read_regions(tmp_path / "a.zarr", attrs) is None
    assert "regions" not in zarr.open_group(str(tmp_path / "a.zarr"))
    result = CliRunner().invoke(app, ["tile", str(img_path), str(lab_path), "-o", str(tmp_path / "b.zarr"),
                                      "--size", "16", "--count", "16"])
    assert result.exit_code == 0 and "train will use the fixed patches" in result.stdout
    monkeypatch.setattr(tileset, "REGION_MAX_BYTES", region_bytes)
    assert make_tiles(img_path, lab_path, tmp_path / "c.zarr", dims=3, size=16, count=16)["regions"] is True
    # Versions 1 and 2 had no regions; they still read, with none.
    group = zarr.open_group(str(tmp_path / "c.zarr"), mode="r+")
    group.attrs["format_version"] = 2
    del group.attrs["regions"]
    del group["regions"]
    attrs, arrays = read_tiles(tmp_path / "c.zarr")
    assert attrs["format_version"] == 2 and len(arrays["train/image"]) == 16
    assert tileset.read_regions(tmp_path / "c.zarr", attrs) is None
    write_version_1(tmp_path / "v1.zarr")
    assert tileset.read_regions(tmp_path / "v1.zarr", read_tiles(tmp_path / "v1.zarr")[0]) is None
