"""Tests of rockseg.training.regions: fresh random patches from the training regions, where they come from, that they
never touch a validation voxel, balanced draws, and reproducible, resumable training with them."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr

from rockseg.training import TrainConfig, make_tiles, read_tiles, train
from rockseg.training import loop, regions as training_regions
from rockseg.training.augment import PRESETS
from tests.training.helpers import TINY, cell_parity, decode, position_coded, weights, write, write_coded

#: Grey values of the position-coded images are normalised to v / SCALE.
SCALE = 2**15


def coded_tile_set(tmp_path, shapes, **options):
    """A tile set of position-coded pairs, one per shape, numbered on from one pair to the next (grey values
    0 .. SCALE - 1, normalised to v / SCALE); returns its path and the first grey value of each pair."""
    starts = np.cumsum([0, *(int(np.prod(shape)) for shape in shapes)])
    imgs, labs = [], []
    for k, (shape, start) in enumerate(zip(shapes, starts)):
        image, labels = position_coded(shape, int(start))
        imgs.append(write_coded(tmp_path / f"i{k}.zarr", image, SCALE))
        labs.append(write(tmp_path / f"l{k}.zarr", labels))
    out = tmp_path / "t.zarr"
    make_tiles(imgs, labs, out, **options)
    return out, starts


def coords_of(x: np.ndarray, shapes, starts) -> tuple[int, np.ndarray]:
    """The pair and the voxel coordinates (ndim, *patch) of a normalised patch of a :func:`coded_tile_set`."""
    v = decode(x, SCALE)
    k = int(np.searchsorted(starts, v.flat[0], side="right")) - 1
    return k, np.stack(np.unravel_index(v - starts[k], shapes[k]))


def load(path):
    attrs, _ = read_tiles(path)
    return attrs, training_regions._load_regions(path, attrs, [s["intensity"] for s in attrs["sources"]])


def inside(coords: np.ndarray, bounds) -> np.ndarray:
    """Whether each voxel of ``coords`` (ndim, ...) lies in ``bounds`` ([[start, stop], ...])."""
    return np.logical_and.reduce([(c >= a) & (c < b) for c, (a, b) in zip(coords, bounds)])


@pytest.mark.parametrize("dims, axis, extent", [(3, None, (8, 8, 8)), (2, "y", (8, 1, 8))])
def test_random_patches_come_from_where_their_origin_says(tmp_path, dims, axis, extent):
    shape = (24, 16, 20)
    path, starts = coded_tile_set(tmp_path, [shape], dims=dims, axis=axis, size=8, count=16)
    image, labels = position_coded(shape)
    attrs, regions = load(path)
    bounds = attrs["sources"][0]["train_region"]
    # 3D splits the longest axis Z at 24 - 8 (round(0.2 * 24) = 5, raised to a patch); 2D across y splits y at
    # 16 - round(0.2 * 16) = 13 (whole slices).
    assert bounds == ([[0, 16], [0, 16], [0, 20]] if dims == 3 else [[0, 24], [0, 13], [0, 20]])
    assert regions.extent == extent and regions.share == 0.5
    source, origins = regions.draw(300, np.random.default_rng(0))
    assert (source == 0).all()
    lo, hi = np.array(bounds).T
    assert ((origins >= lo) & (origins + extent <= hi)).all()
    patches, patch_labels = regions.read(source, origins)
    for o, img, lab in zip(origins, patches, patch_labels):
        box = tuple(slice(int(a), int(a) + e) for a, e in zip(o, extent))
        np.testing.assert_array_equal(img, image[box].reshape(img.shape))
        np.testing.assert_array_equal(lab, labels[box].reshape(lab.shape))
    # A batch is normalised with the pair's statistics (grey value v -> v / voxels) exactly as the stored tiles are.
    x, y = training_regions._region_batch(regions, 4, augment=PRESETS["none"], rng=np.random.default_rng(1),
                                          pin=False)
    source, origins = regions.draw(4, np.random.default_rng(1))
    assert x.shape == (4, 1, *(8,) * dims) and y.dtype == torch.int64
    for xi, yi, o in zip(x[:, 0].numpy(), y.numpy(), origins):
        _, coords = coords_of(xi, [shape], starts)
        assert (coords.reshape(3, -1).min(1) == o).all()
        np.testing.assert_array_equal(yi, cell_parity(coords))


def test_balanced_patches_centre_a_rare_phase_as_often_as_the_other_phases(tmp_path):
    image, labels = position_coded((24, 24, 24))
    labels[5, 9, 13] = 2  # one voxel of a third phase in the training region (Z [0, 16))
    img, lab = write_coded(tmp_path / "i.zarr", image, SCALE), write(tmp_path / "l.zarr", labels)
    centred = {}
    for balance in (True, False):
        make_tiles(img, lab, tmp_path / f"t{balance}.zarr", dims=3, size=8, count=16, balance=balance)
        attrs, regions = load(tmp_path / f"t{balance}.zarr")
        assert attrs["sources"][0]["train_region"] == [[0, 16], [0, 24], [0, 24]]
        # Batches of one: half of them balanced on average; a third of those centred on label 2 at (5, 9, 13).
        rng = np.random.default_rng(3)
        origins = np.concatenate([regions.draw(1, rng)[1] for _ in range(600)])
        centred[balance] = int((origins == [1, 5, 9]).all(1).sum())
    assert 70 < centred[True] < 130, centred  # 100 expected, sd 9
    assert centred[False] < 5, centred  # uniform: 1 in 9 * 17 * 17 corners


def record_batches(monkeypatch) -> list[tuple[np.ndarray, np.ndarray]]:
    """Record every batch the training loop prepares."""
    seen = []
    original = loop._Run._batch

    def batch(self, epoch, order, g):
        x, y = original(self, epoch, order, g)
        seen.append((x[:, 0].numpy().copy(), y.numpy().copy()))
        return x, y

    monkeypatch.setattr(loop._Run, "_batch", batch)
    return seen


@pytest.mark.parametrize("dims, axis", [(3, None), (2, "x")])
def test_random_patches_drawn_by_training_never_touch_a_validation_voxel(tmp_path, monkeypatch, dims, axis):
    shapes = [(24, 16, 20), (16, 20, 24)]
    path, starts = coded_tile_set(tmp_path, shapes, dims=dims, axis=axis, size=8, count=16)
    attrs, _ = read_tiles(path)
    seen = record_batches(monkeypatch)
    s = train(path, tmp_path / "m.pt", config=TrainConfig(**{**TINY, "epochs": 2, "steps_per_epoch": 6,
                                                             "augment": "none", "batch_size": 4}))
    assert s["sampling"] == "random" and len(seen) == 12
    val = [src["split"]["region"] for src in attrs["sources"]]
    for src, box in zip(attrs["sources"], val):
        box[src["split"]["axis"]] = src["split"]["val"]
    touched = set()
    for x, y in seen:
        for xi, yi in zip(x, y):
            k, coords = coords_of(xi, shapes, starts)
            np.testing.assert_array_equal(yi, cell_parity(coords))
            assert inside(coords, attrs["sources"][k]["train_region"]).all()
            assert not inside(coords, val[k]).any()
            touched.add(k)
    assert touched == {0, 1}


def test_random_sampling_is_reproducible_and_a_killed_run_resumes_identically(tilesets, tmp_path, monkeypatch):
    config = TrainConfig(**{**TINY, "epochs": 4, "steps_per_epoch": None, "batch_size": 8, "loader_threads": 2})
    n_train = len(read_tiles(tilesets[2])[1]["train/image"])
    straight = train(tilesets[2], tmp_path / "s.pt", config=config)
    assert straight["sampling"] == "random" and straight["config"]["schedule"] == "poly"
    assert straight["steps"] == 4 * int(np.ceil(n_train / 8))  # an epoch: one pass over the stored patches
    fixed = train(tilesets[2], tmp_path / "f.pt", config=replace(config, sampling="fixed"))
    assert fixed["sampling"] == "fixed" and fixed["steps"] == straight["steps"]
    one_thread = train(tilesets[2], tmp_path / "o.pt", config=replace(config, loader_threads=1))
    assert one_thread["best_epoch"] == straight["best_epoch"]

    class Killed(Exception):
        pass

    report = loop._Run._report

    def killed_after_epoch_2(self, record, jsonl, log):
        report(self, record, jsonl, log)
        if record["epoch"] == 2:
            raise Killed

    monkeypatch.setattr(loop._Run, "_report", killed_after_epoch_2)
    with pytest.raises(Killed):
        train(tilesets[2], tmp_path / "r.pt", config=config)
    monkeypatch.undo()
    resumed = train(tilesets[2], tmp_path / "r.pt", config=config, resume=True)
    assert resumed["resumed_from"] == 2 and resumed["steps"] == straight["steps"]
    a, b, f, o = (weights(tmp_path / f"{n}.pt") for n in "srfo")
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], o[k]) for k in a)  # loader threads change nothing
    assert not all(torch.equal(a[k], f[k]) for k in a)  # fresh patches are not the stored ones
    logs = [[json.loads(line) for line in (tmp_path / f"{n}.log.jsonl").read_text().splitlines()] for n in "sr"]
    assert [(r["loss"], r["lr"], r["val_mean_iou"]) for r in logs[0]] == [
        (r["loss"], r["lr"], r["val_mean_iou"]) for r in logs[1]]


def test_tile_sets_without_regions_train_on_their_stored_patches(vol, tmp_path):
    img_path, lab_path, _, _ = vol
    make_tiles(img_path, lab_path, tmp_path / "t.zarr", dims=2, size=16, count=16)
    group = zarr.open_group(str(tmp_path / "t.zarr"), mode="r+")
    group.attrs["format_version"] = 2  # as rockseg wrote it before regions
    del group.attrs["regions"]
    del group["regions"]
    lines: list[str] = []
    s = train(tmp_path / "t.zarr", tmp_path / "r.pt", config=TrainConfig(**TINY), log=lines.append)
    train(tmp_path / "t.zarr", tmp_path / "f.pt", config=TrainConfig(**TINY, sampling="fixed"))
    assert s["sampling"] == "fixed" and s["config"]["sampling"] == "random"
    assert "holds no training regions" in lines[0]
    a, b = weights(tmp_path / "r.pt"), weights(tmp_path / "f.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
