"""Tests of rockseg.training.pairs: checks of the options and image/label pairs, phase names, reading patches."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from rockseg.errors import InputError, MissingInputError
from rockseg.training import make_tiles, read_tiles
from rockseg.training import pairs
from tests.training.helpers import two_phase, write


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
        pairs.split_pairs([img3, lab3, img2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i2.zarr", "i3.zarr", "l2.zarr", "l3.zarr"]


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


def test_seed_reproducible_and_patchwise_reading_matches(vol, tmp_path, monkeypatch):
    img_path, lab_path, _, _ = vol
    make_tiles(img_path, lab_path, tmp_path / "a.zarr", dims=2, size=16, count=30, seed=5)
    monkeypatch.setattr(pairs, "REGION_BYTES", 0)  # read every patch from the stores
    make_tiles(img_path, lab_path, tmp_path / "b.zarr", dims=2, size=16, count=30, seed=5)
    make_tiles(img_path, lab_path, tmp_path / "c.zarr", dims=2, size=16, count=30, seed=6)
    _, a = read_tiles(tmp_path / "a.zarr")
    _, b = read_tiles(tmp_path / "b.zarr")
    _, c = read_tiles(tmp_path / "c.zarr")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["train/image"], c["train/image"])
