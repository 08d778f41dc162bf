"""Tests of rockseg.tiling: patch sampling, the disjoint validation split, attributes and input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from rockseg import tiling
from rockseg.errors import InputError, MissingInputError, OutputExistsError
from rockseg.io.intensity import intensity_stats
from rockseg.tiling import make_tiles, read_tiles

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def two_phase(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A grey image (uint8) and its two-phase labels: a threshold of smoothed noise, plus noise."""
    rng = np.random.default_rng(seed)
    labels = (ndi.gaussian_filter(rng.standard_normal(shape), 2) > 0).astype(np.uint8)
    image = (60 + 80 * labels + rng.normal(0, 12, shape)).clip(0, 255).astype(np.uint8)
    return image, labels


def write(path: Path, data: np.ndarray, **attrs) -> Path:
    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=(16,) * data.ndim)
    arr[...] = data
    arr.attrs.update(attrs)
    return path


@pytest.fixture
def vol(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    image, labels = two_phase((32, 32, 32))
    return write(tmp_path / "img.zarr", image), write(tmp_path / "lab.zarr", labels), image, labels


def boxes(origins: np.ndarray, extent: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    return origins, origins + np.array(extent)


def overlapping_pairs(a: np.ndarray, b: np.ndarray, extent: tuple[int, ...]) -> int:
    """Number of (a, b) patch pairs whose boxes share at least one voxel."""
    lo_a, hi_a = boxes(a, extent)
    lo_b, hi_b = boxes(b, extent)
    inter = (lo_a[:, None] < hi_b[None]) & (lo_b[None] < hi_a[:, None])
    return int(inter.all(-1).sum())


def check_patches(out: Path, image: np.ndarray, labels: np.ndarray, extent: tuple[int, ...]) -> dict:
    """Every stored tile equals the image/labels at its recorded origin; return the group attrs."""
    group = zarr.open_group(str(out), mode="r")
    for part in ("train", "val"):
        origins = group[f"{part}/origins"][...]
        img, lab = group[f"{part}/image"][...], group[f"{part}/labels"][...]
        assert img.dtype == image.dtype and lab.dtype == np.uint8
        assert len(origins) == len(img) == len(lab)
        for o, ti, tl in zip(origins, img, lab):
            index = tuple(slice(int(a), int(a) + e) for a, e in zip(o, extent))
            np.testing.assert_array_equal(ti, image[index].reshape(ti.shape))
            np.testing.assert_array_equal(tl, labels[index].reshape(tl.shape))
    return dict(group.attrs)


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


def test_2d_single_image_splits_along_y(tmp_path):
    image, labels = two_phase((64, 40), seed=1)
    img_path, lab_path = write(tmp_path / "i.zarr", image), write(tmp_path / "l.zarr", labels)
    out = tmp_path / "t.zarr"
    make_tiles(img_path, lab_path, out, dims=2, size=16, count=20, val_fraction=0.1)
    attrs = check_patches(out, image, labels, (16, 16))
    # round(0.1 * 64) = 6 is less than a tile: the validation slab is one tile (16) thick.
    assert attrs["split"]["axis"] == 0 and attrs["split"]["axis_name"] == "Y"
    assert attrs["split"]["train"] == [0, 48] and attrs["split"]["val"] == [48, 64]
    group = zarr.open_group(str(out), mode="r")
    assert group["train/image"].shape == (20, 16, 16)
    assert group["val/image"].shape == (7, 16, 16)  # round(20 * 16*40 / (48*40)) = 7
    assert overlapping_pairs(group["train/origins"][...], group["val/origins"][...], (16, 16)) == 0


def test_2d_single_slice_stack_splits_along_y(tmp_path):
    image, labels = two_phase((1, 48, 40), seed=2)
    img_path, lab_path = write(tmp_path / "i.zarr", image), write(tmp_path / "l.zarr", labels)
    out = tmp_path / "t.zarr"
    make_tiles(img_path, lab_path, out, dims=2, size=16, count=16)
    attrs = check_patches(out, image, labels, (1, 16, 16))
    assert attrs["split"]["axis"] == 1 and attrs["split"]["val"] == [32, 48]
    group = zarr.open_group(str(out), mode="r")
    assert overlapping_pairs(group["train/origins"][...], group["val/origins"][...], (1, 16, 16)) == 0


def test_crop_restricts_sampling_and_picks_longest_axis(vol, tmp_path):
    img_path, lab_path, image, labels = vol
    out = tmp_path / "t.zarr"
    crop = (slice(4, 30), slice(None), slice(2, 26))
    make_tiles(img_path, lab_path, out, dims=3, size=8, crop=crop, count=40)
    attrs = check_patches(out, image, labels, (8, 8, 8))
    split = attrs["split"]
    assert split["region"] == [[4, 30], [0, 32], [2, 26]]
    # Y (32) is the longest axis; round(0.2 * 32) = 6 is less than a tile, so validation gets 8.
    assert split["axis"] == 1 and split["train"] == [0, 24] and split["val"] == [24, 32]
    group = zarr.open_group(str(out), mode="r")
    for part in ("train", "val"):
        o = group[f"{part}/origins"][...]
        lo = np.array([4, split[part][0], 2])
        hi = np.array([30, split[part][1], 26]) - 8
        assert ((o >= lo) & (o <= hi)).all()
    assert overlapping_pairs(group["train/origins"][...], group["val/origins"][...], (8, 8, 8)) == 0


def test_validation_slab_is_at_least_one_tile(vol, tmp_path):
    img_path, lab_path, _, _ = vol
    make_tiles(img_path, lab_path, tmp_path / "t.zarr", dims=3, size=8, count=16, val_fraction=0.05)
    split = dict(zarr.open_group(str(tmp_path / "t.zarr")).attrs)["split"]
    assert split["val"] == [24, 32] and split["train"] == [0, 24]


def test_phases_from_labels_attrs_and_argument(tmp_path):
    image, labels = two_phase((32, 32, 32))
    labels = labels * 2  # labels 0 and 2: classes must be 3, with a name for the absent label 1
    img_path = write(tmp_path / "i.zarr", image, intensity={"p_low": 10.0, "p_high": 200.0, "std": 1.0})
    lab_path = write(tmp_path / "l.zarr", labels, phases={"0": "pore", "2": "quartz"})
    s = make_tiles(img_path, lab_path, tmp_path / "a.zarr", dims=3, size=16)
    attrs = dict(zarr.open_group(str(tmp_path / "a.zarr")).attrs)
    assert attrs["classes"] == 3 and s["classes"] == 3
    assert attrs["phases"] == {"0": "pore", "1": "phase1", "2": "quartz"}
    assert attrs["intensity"] == {"p_low": 10.0, "p_high": 200.0, "std": 1.0}  # taken from the image store
    assert attrs["class_counts"]["train"][1] == 0
    make_tiles(img_path, lab_path, tmp_path / "b.zarr", dims=3, size=16, phases={0: "void", 2: "grain"})
    assert dict(zarr.open_group(str(tmp_path / "b.zarr")).attrs)["phases"] == {
        "0": "void", "1": "phase1", "2": "grain"}


def test_seed_reproducible_and_patchwise_reading_matches(vol, tmp_path, monkeypatch):
    img_path, lab_path, _, _ = vol
    make_tiles(img_path, lab_path, tmp_path / "a.zarr", dims=2, size=16, count=30, seed=5)
    monkeypatch.setattr(tiling, "REGION_BYTES", 0)  # read every patch from the stores
    make_tiles(img_path, lab_path, tmp_path / "b.zarr", dims=2, size=16, count=30, seed=5)
    make_tiles(img_path, lab_path, tmp_path / "c.zarr", dims=2, size=16, count=30, seed=6)
    _, a = read_tiles(tmp_path / "a.zarr")
    _, b = read_tiles(tmp_path / "b.zarr")
    _, c = read_tiles(tmp_path / "c.zarr")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["train/image"], c["train/image"])


def test_overwrite(vol, tmp_path):
    img_path, lab_path, _, _ = vol
    out = tmp_path / "t.zarr"
    make_tiles(img_path, lab_path, out, dims=3, size=16, count=16)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        make_tiles(img_path, lab_path, out, dims=3, size=16, count=20)
    make_tiles(img_path, lab_path, out, dims=3, size=16, count=20, overwrite=True)
    assert zarr.open_group(str(out))["train/image"].shape[0] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.zarr", "lab.zarr", "t.zarr"]


@pytest.mark.parametrize(
    "case, kwargs, match",
    [
        ("shape", {}, r"shape \(32, 32, 30\).*same shape"),
        ("float", {}, "float32.*integers"),
        ("ok", {"size": 64}, "--size 64 does not fit.*use --size 32"),
        ("ok", {"size": 24}, "too small for a disjoint validation split"),
        ("ok", {"size": 12}, "not a multiple of 8.*use 8 or 16"),
        ("ok", {"dims": 4}, "--dims 4"),
        ("ok", {"val_fraction": 1.0}, "--val-fraction"),
        ("ok", {"count": 0}, "--count 0"),
        ("ok", {"crop": (slice(0, 8), slice(0, 8), slice(0, 12)), "size": 8}, r"region \(8, 8, 12\).*axis X"),
        ("ok", {"crop": (slice(0, 8), slice(None))}, "--crop has 2 ranges"),
        ("ok", {"phases": {300: "x"}}, "phase label 300"),
        ("uint16", {}, "value 300.*relabel"),
        ("single", {}, "only label 1.*two phases"),
        ("2d", {"dims": 3}, "--dims 3 needs a"),
    ],
)
def test_bad_inputs_leave_nothing_behind(tmp_path, case, kwargs, match):
    image, labels = two_phase((32, 32, 32))
    if case == "shape":
        labels = labels[..., :30]
    elif case == "float":
        labels = labels.astype(np.float32)
    elif case == "uint16":
        labels = labels.astype(np.uint16)
        labels[20, 20, 20] = 300  # inside the validation slab, found while sampling
    elif case == "single":
        labels = np.ones_like(labels)
    elif case == "2d":
        image, labels = image[0], labels[0]
    img_path, lab_path = write(tmp_path / "i.zarr", image), write(tmp_path / "l.zarr", labels)
    args = {"dims": 3, "size": 16, "count": 16, **kwargs}
    if case == "uint16":
        args["count"] = 400  # dense sampling so that a patch surely covers the bad voxel
    with pytest.raises(InputError, match=match):
        make_tiles(img_path, lab_path, tmp_path / "t.zarr", **args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.zarr", "l.zarr"]


def test_missing_input_and_output_is_input(vol, tmp_path):
    img_path, lab_path, _, _ = vol
    with pytest.raises(MissingInputError, match="nope.zarr does not exist"):
        make_tiles(tmp_path / "nope.zarr", lab_path, tmp_path / "t.zarr")
    with pytest.raises(InputError, match="one of the inputs"):
        make_tiles(img_path, lab_path, lab_path, overwrite=True)
    assert (lab_path / "zarr.json").exists()


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


# ---------------------------------------------------------------------------------- 2D slices across any axis
def slab_bounds(attrs: dict, part: str, source: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest allowed patch corner of the ``part`` slab of a source (before subtracting extent)."""
    split = attrs["sources"][source]["split"]
    lo = np.array([a for a, _ in split["region"]])
    hi = np.array([b for _, b in split["region"]])
    lo[split["axis"]], hi[split["axis"]] = split[part]
    return lo, hi


def check_disjoint_inside_slabs(attrs: dict, arrays: dict, origins: dict, extent: tuple[int, ...]) -> None:
    """Per source: every patch lies inside its own slab and no validation patch overlaps a training patch."""
    for s in range(len(attrs["sources"])):
        per = {part: origins[part][arrays[f"{part}/source"] == s] for part in ("train", "val")}
        assert len(per["train"]) and len(per["val"])
        for part, o in per.items():
            lo, hi = slab_bounds(attrs, part, s)
            assert ((o >= lo) & (o + np.array(extent) <= hi)).all(), (part, s)
        assert overlapping_pairs(per["train"], per["val"], extent) == 0


def read_origins(out: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(out), mode="r")
    return {part: group[f"{part}/origins"][...] for part in ("train", "val")}


@pytest.mark.parametrize("balance", [True, False])
@pytest.mark.parametrize("axis, index", [("z", 0), ("y", 1), ("x", 2)])
def test_2d_tiles_across_each_axis_are_the_right_slices(tmp_path, axis, index, balance):
    image, labels = two_phase((24, 32, 40), seed=4)
    img_path, lab_path = write(tmp_path / "i.zarr", image), write(tmp_path / "l.zarr", labels)
    out = tmp_path / "t.zarr"
    s = make_tiles(img_path, lab_path, out, dims=2, size=16, count=40, axis=axis, balance=balance)
    attrs, arrays = read_tiles(out)
    origins = read_origins(out)
    assert attrs["slice_axis"] == axis == s["slice_axis"] and attrs["format_version"] == 2
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


def test_2d_tiles_from_a_single_slice_across_y_split_along_the_longest_in_plane_axis(tmp_path):
    image, labels = two_phase((24, 32, 40), seed=5)
    img_path, lab_path = write(tmp_path / "i.zarr", image), write(tmp_path / "l.zarr", labels)
    out = tmp_path / "t.zarr"
    make_tiles(img_path, lab_path, out, dims=2, size=8, count=20, axis="y", crop=(slice(None), slice(7, 8), slice(None)))
    attrs, arrays = read_tiles(out)
    # One slice thick across y: the split takes X (40 > 24), round(0.2 * 40) = 8 columns for validation.
    assert attrs["split"]["axis"] == 2 and attrs["split"]["val"] == [32, 40]
    origins = read_origins(out)
    assert (np.concatenate(list(origins.values()))[:, 1] == 7).all()
    check_disjoint_inside_slabs(attrs, arrays, origins, (8, 1, 8))
    np.testing.assert_array_equal(arrays["val/image"][0], image[origins["val"][0][0]:][:8, 7, 32:40])


@pytest.mark.parametrize(
    "shape, kwargs, match",
    [
        ((48, 40), {"dims": 2, "axis": "y"}, "--axis y: image .* 2D .*drop --axis"),
        ((32, 32, 32), {"dims": 3, "axis": "x"}, "--axis x applies to 2D slices only"),
        ((32, 32, 32), {"dims": 2, "axis": "w"}, "--axis 'w' is not valid: choose z, y or x"),
    ],
)
def test_bad_axis(tmp_path, shape, kwargs, match):
    image, labels = two_phase(shape)
    img_path, lab_path = write(tmp_path / "i.zarr", image), write(tmp_path / "l.zarr", labels)
    with pytest.raises(InputError, match=match):
        make_tiles(img_path, lab_path, tmp_path / "t.zarr", size=16, count=16, **kwargs)
    assert not (tmp_path / "t.zarr").exists()


def test_axis_z_on_a_2d_image_and_3d_tiles_record_the_slice_axis(tmp_path):
    image, labels = two_phase((48, 40), seed=1)
    img_path, lab_path = write(tmp_path / "i.zarr", image), write(tmp_path / "l.zarr", labels)
    make_tiles(img_path, lab_path, tmp_path / "a.zarr", dims=2, size=16, count=16, axis="Z")
    assert read_tiles(tmp_path / "a.zarr")[0]["slice_axis"] == "z"
    image, labels = two_phase((32, 32, 32))
    img_path, lab_path = write(tmp_path / "i3.zarr", image), write(tmp_path / "l3.zarr", labels)
    make_tiles(img_path, lab_path, tmp_path / "b.zarr", dims=3, size=16, count=16)
    assert read_tiles(tmp_path / "b.zarr")[0]["slice_axis"] is None


# ---------------------------------------------------------------------------------- class-balanced sampling
def test_scan_block_grows_the_thinnest_axis_in_whole_chunks():
    # (4, 4) -> (8, 4) -> (8, 8) (48 voxels inside a (100, 6) region) -> (16, 8): 96 >= 64.
    assert tiling.scan_block((4, 4), (100, 6), voxels=64) == (16, 8)
    assert tiling.scan_block((8, 8), (4, 4), voxels=64) == (8, 8)  # one chunk covers the region


def test_class_index_counts_and_draws_uniformly_across_blocks():
    labels = np.zeros((9, 8), np.uint8)
    labels[1, 1] = labels[2, 3] = labels[3, 0] = 1  # three voxels of label 1 in block (0, 0)
    labels[6, 6] = 1  # one in block (1, 1)
    labels[8, 0] = 2  # outside the region: never drawn
    region = (slice(1, 8), slice(0, 8))  # not aligned with the (4, 4) blocks
    index = tiling.ClassIndex(lambda r: labels[r], region, (4, 4), lab_path=Path("l.zarr"))
    assert len(index.blocks) == 4 and index.blocks[0] == (slice(1, 4), slice(0, 4))
    np.testing.assert_array_equal(index.totals, np.bincount(labels[region].ravel(), minlength=256))
    np.testing.assert_array_equal(index.present, [0, 1])
    draws = index.sample(np.ones(8000, np.int64), np.random.default_rng(0))
    assert (labels[tuple(draws.T)] == 1).all()
    _, freq = np.unique(draws, axis=0, return_counts=True)
    # Uniform over the 4 voxels (2000 each, sd 39), although block (0, 0) holds 3 of them.
    assert len(freq) == 4 and (np.abs(freq - 2000) < 200).all()
    zeros = index.sample(np.zeros(500, np.int64), np.random.default_rng(1))
    assert (labels[tuple(zeros.T)] == 0).all() and (zeros[:, 0] >= 1).all() and (zeros[:, 0] < 8).all()


def test_balanced_origins_centre_the_voxel_and_clip_to_the_region():
    labels = np.zeros((32, 32), np.uint8)
    labels[10, 10] = 1
    region = (slice(0, 24), slice(0, 32))
    index = tiling.ClassIndex(lambda r: labels[r], region, (8, 8), lab_path=Path("l.zarr"))
    origins = tiling.balanced_origins(index, region, (8, 8), 400, np.random.default_rng(0))
    assert ((origins >= 0) & (origins + 8 <= [24, 32])).all()
    # Label 1 is drawn about half the time (400 draws, sd 10); its patch is centred: corner (10 - 4, 10 - 4).
    # No voxel of label 0 gives that corner, since that would need its centre at (10, 10).
    assert 150 < int((origins == [6, 6]).all(1).sum()) < 250
    labels[10, 10], labels[0, 31] = 0, 1  # at a corner of the region: the patch is shifted inside
    index = tiling.ClassIndex(lambda r: labels[r], region, (8, 8), lab_path=Path("l.zarr"))
    origins = tiling.balanced_origins(index, region, (8, 8), 100, np.random.default_rng(0))
    assert (origins == [0, 24]).all(1).sum() > 20


def rare_phase(shape: tuple[int, int, int] = (32, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """Two common phases and two blocks of label 2, one in each slab of a 3D split with --size 8 (Z at 24):
    (180 + 144) / 32768 = 0.99% of the volume."""
    image, labels = two_phase(shape, seed=7)
    labels[8:14, 10:16, 12:17] = 2
    labels[26:30, 20:26, 5:11] = 2
    return image, labels


def test_balanced_sampling_shows_a_rare_phase_much_more_often(tmp_path):
    image, labels = rare_phase()
    assert labels.size * 0.009 < (labels == 2).sum() < labels.size * 0.011
    img_path, lab_path = write(tmp_path / "i.zarr", image), write(tmp_path / "l.zarr", labels)
    share = {}
    for balance in (True, False):
        out = tmp_path / f"t{balance}.zarr"
        make_tiles(img_path, lab_path, out, dims=3, size=8, count=200, balance=balance, seed=2)
        attrs = check_patches(out, image, labels, (8, 8, 8))
        _, arrays = read_tiles(out)
        check_disjoint_inside_slabs(attrs, arrays, read_origins(out), (8, 8, 8))
        for part in ("train", "val"):
            fractions = np.bincount(arrays[f"{part}/labels"].ravel(), minlength=3) / arrays[f"{part}/labels"].size
            np.testing.assert_allclose(attrs["class_fractions"][part], fractions)
            assert attrs["class_counts"][part] == np.bincount(arrays[f"{part}/labels"].ravel()).tolist()
            share[balance, part] = fractions[2]
        share[balance] = np.mean([share[balance, "train"], share[balance, "val"]])
        assert attrs["sampling"] == {"method": "balanced" if balance else "uniform",
                                     "balanced_share": 0.5 if balance else 0.0}
    # Expected: about 1/6 of the patches hold a whole block of label 2 (1/3 of the balanced half) -> ~6%,
    # against ~2% for uniform positions.
    assert share[True] > 2 * share[False], share
    for part in ("train", "val"):
        assert share[True, part] > 0.03 and share[True, part] > share[False, part], share


def test_balanced_sampling_reads_the_same_from_memory_and_from_the_stores(tmp_path, monkeypatch):
    image, labels = rare_phase()
    img_path, lab_path = write(tmp_path / "i.zarr", image), write(tmp_path / "l.zarr", labels)
    make_tiles(img_path, lab_path, tmp_path / "a.zarr", dims=2, size=8, count=30, axis="x", seed=1)
    monkeypatch.setattr(tiling, "REGION_BYTES", 0)
    make_tiles(img_path, lab_path, tmp_path / "b.zarr", dims=2, size=8, count=30, axis="x", seed=1)
    a, b = read_tiles(tmp_path / "a.zarr")[1], read_tiles(tmp_path / "b.zarr")[1]
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    # Blocks of one chunk (16**3) instead of the whole slab: other draws, still exact tiles inside the slabs.
    monkeypatch.setattr(tiling, "BLOCK_VOXELS", 1)
    out = tmp_path / "c.zarr"
    make_tiles(img_path, lab_path, out, dims=2, size=8, count=30, axis="x", seed=1)
    attrs = check_patches(out, image, labels, (8, 8, 1))
    c = read_tiles(out)[1]
    check_disjoint_inside_slabs(attrs, c, read_origins(out), (8, 8, 1))
    assert not np.array_equal(a["train/image"], c["train/image"])


# ---------------------------------------------------------------------------------- several image/label pairs
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


def test_pairs_share_phase_names_and_keep_a_common_dtype(tmp_path):
    image, labels = two_phase((32, 32, 32))
    img_a = write(tmp_path / "a.zarr", image)
    lab_a = write(tmp_path / "la.zarr", labels, phases={"0": "pore", "1": "grain"})
    img_b = write(tmp_path / "b.zarr", image[:, ::-1].copy())
    lab_b = write(tmp_path / "lb.zarr", labels[:, ::-1] * 2, phases={"1": "grain", "2": "pyrite"})
    s = make_tiles([img_a, img_b], [lab_a, lab_b], tmp_path / "t.zarr", dims=2, size=16, count=20)
    attrs, arrays = read_tiles(tmp_path / "t.zarr")
    assert attrs["phases"] == {"0": "pore", "1": "grain", "2": "pyrite"} and s["classes"] == 3
    assert arrays["train/image"].dtype == np.uint8  # both uint8: kept
    lab_c = write(tmp_path / "lc.zarr", labels, phases={"0": "pore", "1": "quartz"})
    with pytest.raises(InputError, match=r"lc.zarr name label 1 'quartz' but labels .*la.zarr name it 'grain'"):
        make_tiles([img_a, img_b], [lab_a, lab_c], tmp_path / "u.zarr", dims=2, size=16, count=20)
    assert not (tmp_path / "u.zarr").exists()
    make_tiles([img_a, img_b], [lab_a, lab_c], tmp_path / "u.zarr", dims=2, size=16, count=20,
               phases={0: "void", 1: "solid"})  # names given: the stores' names do not matter
    assert read_tiles(tmp_path / "u.zarr")[0]["phases"] == {"0": "void", "1": "solid"}


def test_bad_pairs(tmp_path):
    image, labels = two_phase((32, 32, 32))
    img3, lab3 = write(tmp_path / "i3.zarr", image), write(tmp_path / "l3.zarr", labels)
    img2, lab2 = write(tmp_path / "i2.zarr", image[0]), write(tmp_path / "l2.zarr", labels[0])
    out = tmp_path / "t.zarr"
    with pytest.raises(InputError, match="2 images but 1 label stores"):
        make_tiles([img3, img3], [lab3], out, dims=2, size=16)
    with pytest.raises(InputError, match="i2.zarr has 2 axes but image .*i3.zarr has 3.*same number of axes"):
        make_tiles([img3, img2], [lab3, lab2], out, dims=2, size=16)
    with pytest.raises(InputError, match="--crop was given 3 times for 2 image/label pairs"):
        make_tiles([img3, img3], [lab3, lab3], out, dims=2, size=16, crop=["0:8,:,:"] * 3)
    with pytest.raises(InputError, match="tile takes IMAGE LABELS pairs but got 3 path"):
        tiling.split_pairs([img3, lab3, img2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i2.zarr", "i3.zarr", "l2.zarr", "l3.zarr"]


def test_share_counts():
    assert tiling.share_counts(10, [1, 1, 2]) == [3, 2, 5]
    assert tiling.share_counts(7, [5]) == [7]
    assert tiling.share_counts(3, [1, 1000, 1000]) == [1, 1, 1]  # every source gets a patch
    assert tiling.share_counts(2, [1, 1, 1]) == [1, 1, 1]  # more sources than patches: one each
    counts = tiling.share_counts(101, [3, 7, 11, 13])
    assert sum(counts) == 101 and all(abs(c - 101 * w / 34) < 1 for c, w in zip(counts, [3, 7, 11, 13]))


# ---------------------------------------------------------------------------------- reading older tile sets
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
    group.attrs["format_version"] = 3
    with pytest.raises(InputError, match="format version 3, newer than this rockseg reads.*upgrade rockseg"):
        read_tiles(out)


# ---------------------------------------------------------------------------------- command line
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
