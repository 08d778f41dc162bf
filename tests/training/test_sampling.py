"""Tests of rockseg.training.sampling: the disjoint validation split, patch counts and class-balanced corners."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from rockseg.training import make_tiles, read_tiles
from rockseg.training import pairs, sampling
from tests.training.helpers import check_disjoint_inside_slabs, check_patches, overlapping_pairs, read_origins, two_phase, write


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


def test_scan_block_grows_the_thinnest_axis_in_whole_chunks():
    # (4, 4) -> (8, 4) -> (8, 8) (48 voxels inside a (100, 6) region) -> (16, 8): 96 >= 64.
    assert sampling.scan_block((4, 4), (100, 6), voxels=64) == (16, 8)
    assert sampling.scan_block((8, 8), (4, 4), voxels=64) == (8, 8)  # one chunk covers the region


def test_class_index_counts_and_draws_uniformly_across_blocks():
    labels = np.zeros((9, 8), np.uint8)
    labels[1, 1] = labels[2, 3] = labels[3, 0] = 1  # three voxels of label 1 in block (0, 0)
    labels[6, 6] = 1  # one in block (1, 1)
    labels[8, 0] = 2  # outside the region: never drawn
    region = (slice(1, 8), slice(0, 8))  # not aligned with the (4, 4) blocks
    index = sampling.ClassIndex(lambda r: labels[r], region, (4, 4), lab_path=Path("l.zarr"))
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
    index = sampling.ClassIndex(lambda r: labels[r], region, (8, 8), lab_path=Path("l.zarr"))
    origins = sampling.balanced_origins(index, region, (8, 8), 400, np.random.default_rng(0))
    assert ((origins >= 0) & (origins + 8 <= [24, 32])).all()
    # Label 1 is drawn about half the time (400 draws, sd 10); its patch is centred: corner (10 - 4, 10 - 4).
    # No voxel of label 0 gives that corner, since that would need its centre at (10, 10).
    assert 150 < int((origins == [6, 6]).all(1).sum()) < 250
    labels[10, 10], labels[0, 31] = 0, 1  # at a corner of the region: the patch is shifted inside
    index = sampling.ClassIndex(lambda r: labels[r], region, (8, 8), lab_path=Path("l.zarr"))
    origins = sampling.balanced_origins(index, region, (8, 8), 100, np.random.default_rng(0))
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
    monkeypatch.setattr(pairs, "REGION_BYTES", 0)
    make_tiles(img_path, lab_path, tmp_path / "b.zarr", dims=2, size=8, count=30, axis="x", seed=1)
    a, b = read_tiles(tmp_path / "a.zarr")[1], read_tiles(tmp_path / "b.zarr")[1]
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    # Blocks of one chunk (16**3) instead of the whole slab: other draws, still exact tiles inside the slabs.
    monkeypatch.setattr(sampling, "BLOCK_VOXELS", 1)
    out = tmp_path / "c.zarr"
    make_tiles(img_path, lab_path, out, dims=2, size=8, count=30, axis="x", seed=1)
    attrs = check_patches(out, image, labels, (8, 8, 1))
    c = read_tiles(out)[1]
    check_disjoint_inside_slabs(attrs, c, read_origins(out), (8, 8, 1))
    assert not np.array_equal(a["train/image"], c["train/image"])


def test_share_counts():
    assert sampling.share_counts(10, [1, 1, 2]) == [3, 2, 5]
    assert sampling.share_counts(7, [5]) == [7]
    assert sampling.share_counts(3, [1, 1000, 1000]) == [1, 1, 1]  # every source gets a patch
    assert sampling.share_counts(2, [1, 1, 1]) == [1, 1, 1]  # more sources than patches: one each
    counts = sampling.share_counts(101, [3, 7, 11, 13])
    assert sum(counts) == 101 and all(abs(c - 101 * w / 34) < 1 for c, w in zip(counts, [3, 7, 11, 13]))
