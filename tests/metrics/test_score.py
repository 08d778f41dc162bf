"""score_volumes against NumPy and scikit-image, exactly, on awkward block grids, Zarr stores, crops and masks.

The Euler number must equal ``skimage.measure.euler_number`` for any chunking, block shape and crop, so most tests
score the same volume with awkward block grids (blocks that do not divide the shape, one-voxel blocks, one block)
and compare every phase with scikit-image, and the confusion matrix with one counted by NumPy.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from rockseg.errors import InputError
from rockseg.metrics import euler_number, score_volumes
from tests.metrics.references import (
    RecordingVolume,
    check_against_references,
    check_per_slice,
    cylinder,
    masked_reference,
    numpy_confusion,
    random_labels,
    skimage_euler,
    write_zarr,
)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


SHAPES_AND_BLOCKS = [
    ((17, 23, 9), (4, 5, 3)),  # blocks that do not divide the shape
    ((17, 23, 9), (17, 23, 9)),  # one block
    ((5, 6, 4), (1, 1, 1)),  # one-voxel blocks
    ((17, 23, 9), (16, 7, 100)),  # blocks larger than the volume along an axis
    ((1, 30, 30), (1, 8, 7)),  # a one-voxel-thick volume
    ((5, 1, 7), (2, 1, 3)),
    ((30, 1, 1), (7, 1, 1)),
    ((23, 31), (5, 8)),  # 2D
    ((1, 40), (1, 9)),
]


@pytest.mark.parametrize(("shape", "block_shape"), SHAPES_AND_BLOCKS)
@pytest.mark.parametrize(
    "weights", [[9, 1], [1, 1], [1, 9], [5, 3, 0, 1, 1]], ids=["sparse", "half", "dense", "4phase"]
)
def test_score_matches_references(shape, block_shape, weights):
    rng = np.random.default_rng(abs(hash((shape, block_shape, tuple(weights)))) % 2**32)
    truth = random_labels(rng, shape, weights)
    pred = truth.copy()
    flip = rng.random(shape) < 0.2
    pred[flip] = random_labels(rng, shape, weights)[flip]
    for connectivity in (1, 3):
        doc = score_volumes(pred, truth, connectivity=connectivity, block_shape=block_shape, num_workers=2)
        check_against_references(doc, pred, truth, connectivity)
        alone = score_volumes(pred, connectivity=connectivity, block_shape=block_shape)
        check_against_references(alone, pred, None, connectivity)


@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.uint16, np.int64])
def test_integer_and_boolean_dtypes(dtype):
    rng = np.random.default_rng(3)
    truth = random_labels(rng, (6, 7, 5), [1, 1])
    pred = truth.copy()
    pred[2:4] = 1 - pred[2:4]
    doc = score_volumes(pred.astype(dtype), truth.astype(dtype), block_shape=(4, 3, 2))
    check_against_references(doc, pred, truth, 3)


# ---------------------------------------------------------------------------------------------------------------
# Zarr stores and crops
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_score_zarr_arrays(tmp_path, zarr_format):
    rng = np.random.default_rng(zarr_format)
    truth = random_labels(rng, (17, 23, 9), [4, 2, 1])
    pred = truth.copy()
    pred[5:9, 3:20, 2:7] = random_labels(rng, (4, 17, 5), [1, 1, 1])
    # Different chunk grids for the two stores, neither dividing the shape.
    pred_z = write_zarr(tmp_path / "pred.zarr", pred, (4, 5, 3), zarr_format)
    truth_z = write_zarr(tmp_path / "labels.zarr", truth, (6, 6, 6), zarr_format)
    for connectivity in (1, 3):
        doc = score_volumes(pred_z, truth_z, connectivity=connectivity, block_shape=(4, 5, 3))
        check_against_references(doc, pred, truth, connectivity)
        # The default block grid (whole chunks grown to a few M voxels: one block here) agrees.
        assert score_volumes(pred_z, truth_z, connectivity=connectivity) == doc


def test_score_sharded_zarr_and_stored_phase_names(tmp_path):
    rng = np.random.default_rng(7)
    data = random_labels(rng, (12, 10, 11), [2, 1])
    pred_z = write_zarr(tmp_path / "pred.zarr", data, (3, 5, 4), shards=(6, 10, 8))
    truth = zarr.open_array(str(tmp_path / "pred.zarr"), mode="r+")
    truth.attrs["phases"] = {"0": "grain", "1": "pore"}
    doc = score_volumes(pred_z, truth, block_shape=(3, 5, 4))
    check_against_references(doc, data, data, 3)
    assert [(p["name"], p["iou"]) for p in doc["phases"]] == [("grain", 1.0), ("pore", 1.0)]
    # Names given by the caller win over stored ones.
    assert score_volumes(pred_z, phases={1: "void"})["phases"][1]["name"] == "void"


def test_crop_is_scored_as_a_volume_of_its_own():
    rng = np.random.default_rng(5)
    truth = random_labels(rng, (14, 15, 16), [3, 2, 1])
    pred = np.where(rng.random(truth.shape) < 0.1, 2, truth).astype(np.uint8)
    crop = (slice(3, 12), slice(0, 15), slice(5, 11))
    for block_shape in [(4, 4, 4), (5, 7, 3), (1, 1, 1)]:
        for connectivity in (1, 3):
            doc = score_volumes(pred, truth, crop=crop, connectivity=connectivity, block_shape=block_shape)
            check_against_references(doc, pred[crop], truth[crop], connectivity)
            assert doc == score_volumes(pred[crop], truth[crop], connectivity=connectivity)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one clear error, before any block is read
# ---------------------------------------------------------------------------------------------------------------


def test_different_shapes():
    pred = np.broadcast_to(np.uint8(0), (400, 400, 400))  # no memory behind it
    truth = np.broadcast_to(np.uint8(0), (400, 400, 399))
    with pytest.raises(InputError) as info:
        score_volumes(pred, truth, pred_name="pred.zarr", truth_name="labels.zarr")
    assert str(info.value) == (
        "labels.zarr has shape (400, 400, 399) but pred.zarr has (400, 400, 400): score needs volumes of the same shape"
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"connectivity": 2}, "connectivity 2 is not supported: use 1"),
        ({"connectivity": 26}, "connectivity 26"),
        ({"crop": (slice(0, 3), slice(0, 3))}, "one slice per axis"),
        ({"crop": (slice(2, 2), slice(0, 3), slice(0, 3))}, "empty"),
        ({"phases": {300: "x"}}, "phase label 300"),
        ({"phases": {-1: "x"}}, "phase label -1"),
        ({"num_workers": 0}, "num_workers 0"),
        ({"block_shape": (2, 2)}, "block shape"),
        ({"block_shape": (2, 0, 2)}, "block shape"),
    ],
)
def test_bad_options_fail_before_reading(kwargs, match):
    pred = RecordingVolume(np.zeros((4, 4, 4), np.uint8), (2, 2, 2))
    with pytest.raises(InputError, match=match):
        score_volumes(pred, **kwargs)
    assert pred.reads == []


def test_float_labels():
    pred = RecordingVolume(np.zeros((4, 4, 4), np.float32), (2, 2, 2))
    with pytest.raises(InputError, match="pred.zarr has dtype float32 but labels must be integers"):
        score_volumes(pred, pred_name="pred.zarr")
    truth = RecordingVolume(np.zeros((4, 4, 4), np.float64), (2, 2, 2))
    with pytest.raises(InputError, match="labels.zarr has dtype float64"):
        score_volumes(np.zeros((4, 4, 4), np.uint8), truth, truth_name="labels.zarr")
    assert pred.reads == truth.reads == []


@pytest.mark.parametrize("shape", [(4,), (2, 2, 2, 2), (0, 4, 4)])
def test_volumes_that_are_not_2d_or_3d_or_empty(shape):
    with pytest.raises(InputError, match="shape"):
        score_volumes(np.zeros(shape, np.uint8))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mask": np.ones((4, 4, 3), bool)}, r"mask.zarr has shape \(4, 4, 3\) but pred.zarr has \(4, 4, 4\): the mask"),
        ({"mask": np.ones((4, 4, 4), "U1")}, "mask.zarr has dtype <U1: a mask holds numbers"),
        ({"mask": [[0]]}, "mask.zarr is a list, not an array"),
        ({"per_slice": "w"}, "per-slice axis 'w' is not one of z, y, x"),
        ({"per_slice": 3}, "per-slice axis 3"),
        ({"ignore": [256]}, "ignored label 256 is not an integer 0-255"),
        ({"ignore": ["0"]}, "ignored label '0'"),
    ],
)
def test_bad_new_options_fail_before_reading(kwargs, match):
    pred = RecordingVolume(np.zeros((4, 4, 4), np.uint8), (2, 2, 2))
    with pytest.raises(InputError, match=match):
        score_volumes(pred, pred_name="pred.zarr", mask_name="mask.zarr", **kwargs)
    assert pred.reads == []


def test_per_slice_of_a_2d_image_and_an_empty_mask():
    with pytest.raises(InputError, match=r"per-slice scores need a 3D .* has shape \(5, 6\)"):
        score_volumes(np.zeros((5, 6), np.uint8), per_slice="z", pred_name="pred.zarr")
    with pytest.raises(InputError, match="mask.zarr leaves out every voxel"):
        score_volumes(np.zeros((3, 3, 3), np.uint8), mask=np.zeros((3, 3, 3), np.uint8), mask_name="mask.zarr")


def test_scoring_needs_no_torch():
    # rockseg score runs where torch is not installed: importing and running the metrics package must not need it.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from rockseg.metrics import score_volumes\n"
        "print(score_volumes(np.zeros((2, 2, 2), np.uint8))['voxels'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "8\n"


# ---------------------------------------------------------------------------------------------------------------
# A real rock
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_berea_400(tmp_path):
    path = DATA / "berea-400" / "berea_pore.tif"
    if not path.exists():
        pytest.skip(f"real data {path} is absent")
    import tifffile

    truth = tifffile.imread(path)
    assert truth.shape == (400, 400, 400)
    truth_z = write_zarr(tmp_path / "labels.zarr", truth, (96, 128, 100))  # chunks that do not divide 400

    doc = score_volumes(truth_z, truth_z, phases={0: "grain", 1: "pore"})
    assert [(p["name"], p["iou"], p["dice"]) for p in doc["phases"]] == [("grain", 1.0, 1.0), ("pore", 1.0, 1.0)]
    assert doc["mean_iou"] == doc["accuracy"] == 1.0
    assert doc["phases"][1]["fraction_pred"] == np.count_nonzero(truth) / truth.size
    for phase in doc["phases"]:
        assert phase["euler_pred"] == phase["euler_true"] == skimage_euler(truth == phase["label"], 3)
    # A perturbed copy: grains eroded in one region, salt-and-pepper noise in another.
    rng = np.random.default_rng(0)
    pred = truth.copy()
    pred[100:200, 50:350, 0:400][rng.random((100, 300, 400)) < 0.3] = 1
    pred[250:330, 200:400, 100:300] ^= (rng.random((80, 200, 200)) < 0.02).astype(np.uint8)
    # Scored at the other connectivity, from a NumPy prediction against the Zarr truth, with other blocks.
    doc = score_volumes(pred, truth_z, connectivity=1, block_shape=(128, 150, 128), num_workers=2)
    confusion = numpy_confusion(truth, pred, [0, 1])
    assert doc["confusion"] == confusion
    (tn, fp), (fn, tp) = confusion
    assert doc["phases"][1]["iou"] == tp / (tp + fp + fn)
    assert doc["accuracy"] == (tp + tn) / truth.size
    for phase in doc["phases"]:
        assert phase["euler_true"] == skimage_euler(truth == phase["label"], 1)
        # The in-memory function is checked against scikit-image on random volumes above.
        assert phase["euler_pred"] == euler_number(pred == phase["label"], connectivity=1)
    assert doc["phases"][1]["euler_pred"] != doc["phases"][1]["euler_true"]


# ---------------------------------------------------------------------------------------------------------------
# Per-slice scores and masks
# ---------------------------------------------------------------------------------------------------------------


def test_per_slice_hand_made():
    # Slice 0: a square ring (a hole: 2D Euler 0); slice 1: two pixels touching at a corner (one object with
    # the 8-neighbourhood, two with the 4-neighbourhood); slice 2: empty; slice 3: a full square.
    volume = np.zeros((4, 5, 5), np.uint8)
    volume[0, 1:4, 1:4] = 1
    volume[0, 2, 2] = 0
    volume[1, 1, 1] = volume[1, 2, 2] = 1
    volume[3, 1:3, 1:4] = 1
    for connectivity, expected in ((3, [0, 1, 0, 1]), (1, [0, 2, 0, 1])):
        doc = score_volumes(volume, volume, per_slice="z", connectivity=connectivity, block_shape=(2, 3, 2))
        ring = doc["per_slice"]["phases"][1]
        assert ring["euler_pred"] == ring["euler_true"] == expected
        assert ring["iou"] == [1.0, 1.0, None, 1.0]
        assert (ring["iou_mean"], ring["iou_min"], ring["iou_max"]) == (1.0, 1.0, 1.0)
        assert (ring["euler_pred_min"], ring["euler_pred_max"]) == (0, max(expected))
        assert doc["per_slice"]["index"] == [0, 1, 2, 3]
        assert doc["per_slice"]["voxels"] == [25] * 4
        assert doc["per_slice"]["mean_iou"] == [1.0] * 4


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("block_shape", [(4, 5, 3), (9, 11, 13), (1, 2, 100)], ids=["awkward", "one", "thin"])
def test_per_slice_matches_skimage_per_slice(axis, block_shape):
    rng = np.random.default_rng(100 + axis)
    truth = random_labels(rng, (9, 11, 13), [4, 3, 1])
    pred = np.where(rng.random(truth.shape) < 0.25, random_labels(rng, truth.shape, [1, 1, 1]), truth)
    everywhere = np.ones(truth.shape, bool)
    for connectivity in (1, 3):
        doc = score_volumes(
            pred, truth, per_slice="zyx"[axis], connectivity=connectivity, block_shape=block_shape, num_workers=2
        )
        check_against_references(doc, pred, truth, connectivity)
        check_per_slice(doc, pred, truth, everywhere, axis)
        alone = score_volumes(pred, per_slice=axis, connectivity=connectivity, block_shape=block_shape)
        check_per_slice(alone, pred, None, everywhere, axis)
        assert "mean_iou" not in alone["per_slice"]


def test_per_slice_of_a_crop_counts_slices_in_the_volume():
    rng = np.random.default_rng(8)
    truth = random_labels(rng, (10, 8, 9), [1, 1])
    pred = truth ^ (rng.random(truth.shape) < 0.1).astype(np.uint8)
    crop = (slice(2, 9), slice(1, 8), slice(0, 9))
    doc = score_volumes(pred, truth, crop=crop, per_slice="y", block_shape=(3, 3, 4))
    assert doc["per_slice"]["index"] == list(range(1, 8))
    check_per_slice(doc, pred[crop], truth[crop], np.ones(pred[crop].shape, bool), 1)


@pytest.mark.parametrize("mask_dtype", [np.bool_, np.uint8, np.float32])
def test_mask_matches_numpy_with_the_mask_applied(mask_dtype):
    rng = np.random.default_rng(21)
    shape = (9, 14, 13)
    truth = random_labels(rng, shape, [3, 2, 2])
    pred = np.where(rng.random(shape) < 0.2, random_labels(rng, shape, [1, 1, 1]), truth)
    inside = cylinder(shape)
    # Outside the field of view the labels are garbage (a label nobody else uses): it must count for nothing.
    pred[~inside] = 7
    mask = (inside * 3).astype(mask_dtype)  # any nonzero value is inside
    for connectivity in (1, 3):
        for block_shape in [(4, 5, 3), (9, 14, 13)]:
            doc = score_volumes(
                pred, truth, mask=mask, connectivity=connectivity, block_shape=block_shape, per_slice="x"
            )
            assert [p["label"] for p in doc["phases"]] == [0, 1, 2]
            masked_reference(doc, pred, truth, inside, connectivity)
            check_per_slice(doc, pred, truth, inside, 2)


def test_mask_from_zarr_with_other_chunks_and_a_crop(tmp_path):
    rng = np.random.default_rng(4)
    shape = (10, 12, 12)
    truth = random_labels(rng, shape, [1, 1])
    pred = truth ^ (rng.random(shape) < 0.15).astype(np.uint8)
    inside = cylinder(shape)
    mask_z = write_zarr(tmp_path / "mask.zarr", inside.astype(np.uint8), (3, 7, 5))
    crop = (slice(1, 9), slice(2, 12), slice(0, 11))
    doc = score_volumes(pred, truth, mask=mask_z, crop=crop, block_shape=(4, 4, 4))
    masked_reference(doc, pred[crop], truth[crop], inside[crop], 3)


def test_berea_400_in_a_cylindrical_field_of_view_per_slice():
    path = DATA / "berea-400" / "berea_pore.tif"
    if not path.exists():
        pytest.skip(f"real data {path} is absent")
    import tifffile

    truth = tifffile.imread(path)
    crop = (slice(180, 196), slice(0, 400), slice(0, 400))  # (Zarr stores and crops are tested above)
    pred = truth.copy()
    pred[crop] ^= (np.random.default_rng(1).random((16, 400, 400), np.float32) < 0.01).astype(np.uint8)
    inside = cylinder(truth.shape)
    doc = score_volumes(pred, truth, mask=inside, crop=crop, per_slice="z", block_shape=(7, 128, 100))
    masked_reference(doc, pred[crop], truth[crop], inside[crop], 3)
    check_per_slice(doc, pred[crop], truth[crop], inside[crop], 0)
    assert doc["per_slice"]["index"] == list(range(180, 196))


class CountingStore(zarr.storage.WrapperStore):
    """A store that counts the reads of every key (and byte range, for the inner chunks of a shard)."""

    def __init__(self, store):
        super().__init__(store)
        self.reads = {}

    async def get(self, key, prototype, byte_range=None):
        self.reads[(key, repr(byte_range))] = self.reads.get((key, repr(byte_range)), 0) + 1
        return await self._store.get(key, prototype, byte_range)


@pytest.mark.parametrize("shards", [None, (8, 6, 10)])
def test_every_chunk_is_decoded_once(tmp_path, monkeypatch, shards):
    from rockseg.metrics import blockwise, units

    monkeypatch.setattr(blockwise, "_TARGET_BLOCK_VOXELS", 1)  # many blocks: many seams, no halo read
    monkeypatch.setattr(units, "_MIN_UNITS", 1)
    rng = np.random.default_rng(4)
    data = random_labels(rng, (16, 18, 20), [2, 1, 1])
    truth_data = random_labels(rng, (16, 18, 20), [2, 1, 1])
    write_zarr(tmp_path / "pred.zarr", data, (4, 3, 5), shards=shards)
    write_zarr(tmp_path / "truth.zarr", truth_data, (2, 6, 5))  # other chunks: blocks of whole chunks of both
    stores = {n: CountingStore(zarr.storage.LocalStore(str(tmp_path / f"{n}.zarr"), read_only=True))
              for n in ("pred", "truth")}
    pred, truth = (zarr.open_array(store=stores[n], mode="r") for n in ("pred", "truth"))
    doc = score_volumes(pred, truth, per_slice="z", num_workers=2)
    check_against_references(doc, data, truth_data, 3)
    for name, chunks in (("pred", 4 * 6 * 4), ("truth", 8 * 3 * 4)):
        reads = {k: n for k, n in stores[name].reads.items() if k[0].startswith("c/") and "Suffix" not in k[1]}
        assert len(reads) == chunks  # every chunk of the store...
        assert set(reads.values()) == {1}, name  # ...read once
