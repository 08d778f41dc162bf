"""Tests of rockseg.tiling: patch sampling, the disjoint validation split, attributes and input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from rockseg import tiling
from rockseg.errors import InputError, MissingInputError, OutputExistsError
from rockseg.normalization import intensity_stats
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
