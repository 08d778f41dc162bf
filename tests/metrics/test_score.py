"""Scoring against hand-made volumes with known answers, then against NumPy and scikit-image, exactly.

The Euler number must equal ``skimage.measure.euler_number`` for any chunking, block shape and crop, so most tests
score the same volume with awkward block grids (blocks that do not divide the shape, one-voxel blocks, one block)
and compare every phase with scikit-image, and the confusion matrix with one counted by NumPy.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import skimage.measure
import zarr

from rockseg import metrics
from rockseg.errors import InputError
from rockseg.metrics import euler_lut, euler_number, score_volumes

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def skimage_euler(mask: np.ndarray, connectivity: int) -> int:
    """scikit-image's Euler number for rockseg's connectivity (1 or 3; 2D full connectivity is skimage's 2)."""
    if mask.ndim == 2 and connectivity == 3:
        connectivity = 2
    return int(skimage.measure.euler_number(mask, connectivity=connectivity))


def numpy_confusion(truth: np.ndarray, pred: np.ndarray, labels: list[int]) -> list[list[int]]:
    return [[int(np.count_nonzero((truth == t) & (pred == p))) for p in labels] for t in labels]


def random_labels(rng: np.random.Generator, shape: tuple[int, ...], weights: list[float]) -> np.ndarray:
    p = np.asarray(weights, float) / sum(weights)
    return rng.choice(len(p), size=shape, p=p).astype(np.uint8)


def check_against_references(doc: dict, pred: np.ndarray, truth: np.ndarray | None, connectivity: int) -> None:
    """Every number of a score document against NumPy and scikit-image on the in-memory volumes."""
    labels = [p["label"] for p in doc["phases"]]
    present = set(np.unique(pred).tolist()) | (set() if truth is None else set(np.unique(truth).tolist()))
    assert present <= set(labels)
    assert doc["voxels"] == pred.size
    assert doc["connectivity"] == connectivity
    for phase in doc["phases"]:
        label = phase["label"]
        assert phase["euler_pred"] == skimage_euler(pred == label, connectivity), label
        assert phase["fraction_pred"] == np.count_nonzero(pred == label) / pred.size
        if truth is not None:
            assert phase["euler_true"] == skimage_euler(truth == label, connectivity), label
            assert phase["fraction_true"] == np.count_nonzero(truth == label) / truth.size
    if truth is not None:
        assert doc["confusion"] == numpy_confusion(truth, pred, labels)
        assert doc["accuracy"] == np.count_nonzero(truth == pred) / pred.size


# ---------------------------------------------------------------------------------------------------------------
# The lookup table and the in-memory Euler number
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_lut_of_simple_windows(spatial_dims):
    corners = 2**spatial_dims
    for connectivity in (1, 3):
        lut = euler_lut(spatial_dims, connectivity)
        assert lut.dtype == np.int64 and lut.shape == (2**corners,)
        assert lut[0] == 0  # background only
        assert lut[-1] == 0  # inside a phase: every cell shared with other windows cancels
        # One voxel is in 2**d windows, one corner of each: the scaled sum is 2**d, so Euler number 1.
        assert all(lut[1 << bit] == 1 for bit in range(corners))
    # The connectivities are dual: a window's weight for 1 is its complement's for 3 (negated in 2D, where the
    # duality between a phase and its background flips the sign of the Euler number).
    sign = 1 if spatial_dims == 3 else -1
    assert np.array_equal(euler_lut(spatial_dims, 1), sign * euler_lut(spatial_dims, 3)[::-1])


def test_lut_rejects_bad_arguments():
    with pytest.raises(InputError, match="connectivity 2"):
        euler_lut(3, 2)
    with pytest.raises(InputError, match="spatial_dims 4"):
        euler_lut(4, 3)


def test_lut_diagonal_pair_in_2d():
    # Two pixels on a diagonal, padded: each is alone in 3 windows (scaled weight 1 each) and both share one
    # window, index 0b1001. That window decides: apart at 4-connectivity, joined at 8.
    assert (6 + euler_lut(2, 1)[0b1001]) // 4 == 2
    assert (6 + euler_lut(2, 3)[0b1001]) // 4 == 1
    assert (6 + euler_lut(2, 1)[0b1001]) % 4 == (6 + euler_lut(2, 3)[0b1001]) % 4 == 0


def cube(n: int = 7) -> np.ndarray:
    v = np.zeros((n, n, n), np.uint8)
    v[1:-1, 1:-1, 1:-1] = 1
    return v


def torus() -> np.ndarray:
    v = np.zeros((9, 9, 5), np.uint8)
    v[1:8, 1:8, 1:4] = 1
    v[3:6, 3:6, :] = 0  # a square tunnel through the block
    return v


def hollow_sphere() -> np.ndarray:
    z, y, x = np.mgrid[:15, :15, :15] - 7
    r = np.sqrt(z**2 + y**2 + x**2)
    return ((r >= 3) & (r <= 6)).astype(np.uint8)


def voxels(shape: tuple[int, ...], *points: tuple[int, ...]) -> np.ndarray:
    v = np.zeros(shape, np.uint8)
    for p in points:
        v[p] = 1
    return v


KNOWN_3D = {
    # name: (volume, Euler number at connectivity 1, at connectivity 3)
    "single voxel": (voxels((3, 3, 3), (1, 1, 1)), 1, 1),
    "voxel at the corner of the volume": (voxels((2, 3, 4), (0, 0, 0)), 1, 1),
    "solid cube": (cube(), 1, 1),
    "torus": (torus(), 0, 0),
    "hollow cube": (cube() - voxels((7, 7, 7), (3, 3, 3)), 2, 2),
    "hollow sphere": (hollow_sphere(), 2, 2),
    "two voxels touching at a corner": (voxels((3, 3, 3), (0, 0, 0), (1, 1, 1)), 2, 1),
    "two voxels touching at an edge": (voxels((3, 3, 3), (1, 0, 0), (1, 1, 1)), 2, 1),
    # Four voxels around an empty centre, each touching the next at an edge: a loop at 26-connectivity.
    "diagonal ring": (voxels((3, 3, 3), (1, 0, 1), (1, 1, 0), (1, 2, 1), (1, 1, 2)), 4, 0),
}

KNOWN_2D = {
    "single pixel": (voxels((3, 3), (1, 1)), 1, 1),
    "square ring": (np.pad(np.pad(np.zeros((2, 2), np.uint8), 1, constant_values=1), 1), 0, 0),
    "diagonal pair": (voxels((2, 2), (0, 0), (1, 1)), 2, 1),
    "diamond ring": (voxels((3, 3), (0, 1), (1, 0), (1, 2), (2, 1)), 4, 0),
    "two squares": (np.kron(np.eye(2, dtype=np.uint8), np.ones((2, 2), np.uint8)), 2, 1),
}


@pytest.mark.parametrize("name", list(KNOWN_3D) + list(KNOWN_2D))
def test_known_euler_numbers(name):
    volume, e6, e26 = {**KNOWN_3D, **KNOWN_2D}[name]
    assert euler_number(volume, connectivity=1) == e6
    assert euler_number(volume, connectivity=3) == e26
    assert euler_number(volume) == e26
    # The hand-worked answers are scikit-image's too.
    assert (skimage_euler(volume, 1), skimage_euler(volume, 3)) == (e6, e26)


@pytest.mark.parametrize("name", list(KNOWN_3D) + list(KNOWN_2D))
def test_known_euler_numbers_block_by_block(name):
    volume, e6, e26 = {**KNOWN_3D, **KNOWN_2D}[name]
    smallest = 1 if volume.size <= 200 else 3  # one-voxel blocks cost a task per voxel
    for block_shape in [(smallest,) * volume.ndim, (2, 3, 4)[: volume.ndim], volume.shape]:
        for connectivity, expected in ((1, e6), (3, e26)):
            doc = score_volumes(volume, connectivity=connectivity, block_shape=block_shape)
            assert doc["phases"][-1]["label"] == 1
            assert doc["phases"][-1]["euler_pred"] == expected, (block_shape, connectivity)


def test_label_zero_is_a_phase_and_padding_is_not():
    # Phase 0 wraps a cube of phase 1: one object with a cavity. The background padding belongs to no phase.
    volume = cube(5)
    doc = score_volumes(volume, block_shape=(2, 3, 2))
    assert [(p["label"], p["euler_pred"]) for p in doc["phases"]] == [(0, 2), (1, 1)]
    doc = score_volumes(np.zeros((4, 5, 6), np.uint8), block_shape=(3, 3, 3))
    assert [(p["label"], p["euler_pred"], p["fraction_pred"]) for p in doc["phases"]] == [(0, 1, 1.0)]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("density", [0.1, 0.5, 0.8])
def test_euler_number_matches_skimage_on_random_volumes(spatial_dims, density):
    rng = np.random.default_rng(int(density * 10) + spatial_dims)
    for _ in range(20):
        shape = tuple(int(n) for n in rng.integers(1, 10, size=spatial_dims))
        volume = rng.random(shape) < density
        for connectivity in (1, 3):
            assert euler_number(volume, connectivity=connectivity) == skimage_euler(volume, connectivity), shape


def test_euler_number_takes_nonzero_as_phase():
    volume = np.array([[0, 3, 0], [0, 0, 0], [7, 0, 0]], np.int32)
    assert euler_number(volume) == 2
    with pytest.raises(InputError, match="connectivity 2"):
        euler_number(volume, connectivity=2)
    with pytest.raises(InputError, match="2D or 3D"):
        euler_number(np.zeros((2, 2, 2, 2)))


# ---------------------------------------------------------------------------------------------------------------
# score_volumes against NumPy and scikit-image
# ---------------------------------------------------------------------------------------------------------------

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


def test_document_layout_and_agreement_metrics():
    truth = np.array([[0, 0, 1, 1], [0, 2, 2, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 2, 0, 1]], np.uint8)
    doc = score_volumes(pred, truth, phases={0: "pore", 2: "clay", 5: "pyrite"}, block_shape=(1, 3))
    assert list(doc) == ["phases", "mean_iou", "accuracy", "confusion", "connectivity", "voxels"]
    assert [list(p) for p in doc["phases"]] == [
        ["label", "name", "iou", "dice", "precision", "recall", "fraction_pred", "fraction_true", "euler_pred",
         "euler_true"]
    ] * 4
    assert [(p["label"], p["name"]) for p in doc["phases"]] == [(0, "pore"), (1, "phase1"), (2, "clay"), (5, "pyrite")]
    # rows = truth, columns = prediction
    assert doc["confusion"] == [[2, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    pore, phase1, clay, pyrite = doc["phases"]
    assert (pore["iou"], pore["dice"], pore["precision"], pore["recall"]) == (2 / 4, 4 / 6, 2 / 3, 2 / 3)
    assert (phase1["iou"], phase1["precision"], phase1["recall"]) == (3 / 4, 3 / 4, 1.0)
    assert (clay["iou"], clay["dice"], clay["precision"], clay["recall"]) == (1 / 2, 2 / 3, 1.0, 1 / 2)
    # A phase in neither volume: no ratio is defined, and it does not drag mean_iou down.
    assert {k: pyrite[k] for k in ("iou", "dice", "precision", "recall")} == dict.fromkeys(
        ("iou", "dice", "precision", "recall")
    )
    assert (pyrite["fraction_pred"], pyrite["euler_pred"], pyrite["euler_true"]) == (0.0, 0, 0)
    assert doc["mean_iou"] == pytest.approx((1 / 2 + 3 / 4 + 1 / 2) / 3, abs=0, rel=1e-15)
    assert doc["accuracy"] == 6 / 8
    assert (doc["connectivity"], doc["voxels"]) == (3, 8)
    assert json.loads(json.dumps(doc)) == doc


def test_phase_missed_by_the_prediction():
    truth = np.array([[0, 0, 1, 1]], np.uint8)
    pred = np.zeros_like(truth)
    (_, missed) = score_volumes(pred, truth)["phases"]
    assert (missed["iou"], missed["dice"], missed["precision"], missed["recall"]) == (0.0, 0.0, None, 0.0)
    assert (missed["fraction_pred"], missed["fraction_true"], missed["euler_pred"], missed["euler_true"]) == (
        0.0,
        0.5,
        0,
        1,
    )


def test_document_without_truth():
    pred = np.array([[[0, 3, 3]]], np.uint16)
    doc = score_volumes(pred, phases={1: "quartz"}, connectivity=1)
    assert list(doc) == ["phases", "connectivity", "voxels"]
    assert doc["phases"] == [
        {"label": 0, "name": "phase0", "fraction_pred": 1 / 3, "euler_pred": 1},
        {"label": 1, "name": "quartz", "fraction_pred": 0.0, "euler_pred": 0},
        {"label": 3, "name": "phase3", "fraction_pred": 2 / 3, "euler_pred": 1},
    ]
    assert (doc["connectivity"], doc["voxels"]) == (1, 3)


@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.uint16, np.int64])
def test_integer_and_boolean_dtypes(dtype):
    rng = np.random.default_rng(3)
    truth = random_labels(rng, (6, 7, 5), [1, 1])
    pred = truth.copy()
    pred[2:4] = 1 - pred[2:4]
    doc = score_volumes(pred.astype(dtype), truth.astype(dtype), block_shape=(4, 3, 2))
    check_against_references(doc, pred, truth, 3)


# ---------------------------------------------------------------------------------------------------------------
# Zarr stores, block grid and laziness
# ---------------------------------------------------------------------------------------------------------------


def write_zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...], zarr_format: int = 3, **kwargs) -> zarr.Array:
    array = zarr.create_array(
        store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=zarr_format, **kwargs
    )
    array[...] = data
    return zarr.open_array(str(path), mode="r")


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


class RecordingVolume:
    """A read-only label volume that records every region read from it (and has a chunk grid)."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, ...]) -> None:
        self.data, self.chunks = data, chunks
        self.shape, self.dtype = data.shape, data.dtype
        self.reads: list[tuple[slice, ...]] = []

    def __getitem__(self, region: tuple[slice, ...]) -> np.ndarray:
        self.reads.append(region)
        return self.data[region]


def test_blocks_follow_the_chunk_grid_and_read_only_a_one_voxel_halo(monkeypatch):
    monkeypatch.setattr(metrics, "_TARGET_BLOCK_VOXELS", 1)  # keep blocks one chunk each
    rng = np.random.default_rng(11)
    data = random_labels(rng, (10, 11, 7), [1, 2, 1])
    chunks = (4, 5, 3)
    pred = RecordingVolume(data, chunks)
    doc = score_volumes(pred, num_workers=2)
    check_against_references(doc, data, None, 3)
    grid = [range(0, n, c) for n, c in zip(data.shape, chunks)]
    expected = {
        tuple((max(s - 1, 0), min(s + c, n)) for s, c, n in zip(start, chunks, data.shape))
        for start in itertools.product(*grid)
    }
    reads = [tuple((s.start, s.stop) for s in region) for region in pred.reads]
    assert len(reads) == len(expected) == 3 * 3 * 3
    assert set(reads) == expected


def test_default_block_grows_whole_chunks():
    block = metrics._grow_block((64, 64, 64), (1000, 1000, 1000))
    assert np.prod(block) >= metrics._TARGET_BLOCK_VOXELS
    assert all(b % 64 == 0 for b in block)
    assert metrics._grow_block((1, 512, 512), (1000, 1000, 1000)) == (16, 512, 512)
    assert metrics._grow_block((8, 8, 8), (8, 8, 8)) == (8, 8, 8)  # a whole small volume: one block


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


def test_crop_reads_nothing_outside_it(monkeypatch):
    monkeypatch.setattr(metrics, "_TARGET_BLOCK_VOXELS", 1)
    data = random_labels(np.random.default_rng(2), (9, 9, 9), [1, 1])
    pred = RecordingVolume(data, (4, 4, 4))
    crop = (slice(2, 7), slice(3, 9), slice(0, 5))
    check_against_references(score_volumes(pred, crop=crop), data[crop], None, 3)
    for region in pred.reads:
        assert all(c.start <= r.start and r.stop <= c.stop for r, c in zip(region, crop))


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


@pytest.mark.parametrize(("value", "dtype"), [(-1, np.int16), (256, np.uint16), (70000, np.int64)])
def test_labels_out_of_range(value, dtype):
    truth = np.zeros((6, 6, 6), dtype)
    truth[4, 5, 1] = value
    with pytest.raises(InputError, match=f"labels.zarr has label {value} .*labels must be integers 0-255"):
        score_volumes(np.zeros((6, 6, 6), np.uint8), truth, truth_name="labels.zarr", block_shape=(3, 3, 3))


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
# Per-slice scores, masks, ignored labels and strict phase names
# ---------------------------------------------------------------------------------------------------------------


def planes(volume: np.ndarray, axis: int) -> list[np.ndarray]:
    return [np.take(volume, s, axis=axis) for s in range(volume.shape[axis])]


def check_per_slice(doc: dict, pred: np.ndarray, truth: np.ndarray | None, inside: np.ndarray, axis: int) -> None:
    """Every per-slice list against scikit-image and NumPy, slice by slice, with the mask ``inside`` applied."""
    per = doc["per_slice"]
    connectivity = doc["connectivity"]
    assert per["axis"] == "zyx"[axis]
    assert per["neighbourhood"] == (8 if connectivity == 3 else 4)
    assert per["voxels"] == [int(np.count_nonzero(m)) for m in planes(inside, axis)]
    assert [p["label"] for p in per["phases"]] == [p["label"] for p in doc["phases"]]
    for phase in per["phases"]:
        label = phase["label"]
        p_planes = planes((pred == label) & inside, axis)
        assert phase["euler_pred"] == [skimage_euler(p, connectivity) for p in p_planes], label
        assert phase["fraction_pred"] == [
            np.count_nonzero(p) / n if n else None for p, n in zip(p_planes, per["voxels"])
        ]
        scored = [e for e, n in zip(phase["euler_pred"], per["voxels"]) if n]
        assert (phase["euler_pred_min"], phase["euler_pred_max"]) == (min(scored), max(scored))
        assert phase["euler_pred_mean"] == pytest.approx(np.mean(scored), rel=1e-12)
        if truth is None:
            assert "iou" not in phase and "euler_true" not in phase
            continue
        t_planes = planes((truth == label) & inside, axis)
        assert phase["euler_true"] == [skimage_euler(t, connectivity) for t in t_planes], label
        iou = []
        for p, t in zip(p_planes, t_planes):
            union = np.count_nonzero(p | t)
            iou.append(np.count_nonzero(p & t) / union if union else None)
        assert phase["iou"] == iou
        defined = [v for v in iou if v is not None]
        if defined:
            assert (phase["iou_min"], phase["iou_max"]) == (min(defined), max(defined))
    if truth is not None:
        ignored = set(doc.get("ignore", []))
        for s, value in enumerate(per["mean_iou"]):
            ious = [p["iou"][s] for p in per["phases"] if p["label"] not in ignored and p["iou"][s] is not None]
            assert value == (pytest.approx(sum(ious) / len(ious), rel=1e-12) if ious else None)


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


def masked_reference(doc, pred, truth, inside, connectivity):
    """The document against NumPy and scikit-image with the mask applied (outside = background for Euler)."""
    labels = [p["label"] for p in doc["phases"]]
    n = int(np.count_nonzero(inside))
    assert doc["voxels"] == n
    assert doc["voxels_outside_mask"] == inside.size - n
    assert doc["confusion"] == numpy_confusion(truth[inside], pred[inside], labels)
    assert doc["accuracy"] == np.count_nonzero(truth[inside] == pred[inside]) / n
    for phase in doc["phases"]:
        label = phase["label"]
        assert phase["fraction_pred"] == np.count_nonzero(pred[inside] == label) / n
        assert phase["fraction_true"] == np.count_nonzero(truth[inside] == label) / n
        assert phase["euler_pred"] == skimage_euler((pred == label) & inside, connectivity), label
        assert phase["euler_true"] == skimage_euler((truth == label) & inside, connectivity), label


def cylinder(shape: tuple[int, int, int]) -> np.ndarray:
    """The cylindrical field of view of a core, axis along z."""
    y, x = np.ogrid[: shape[1], : shape[2]]
    cy, cx = (shape[1] - 1) / 2, (shape[2] - 1) / 2
    disc = (y - cy) ** 2 + (x - cx) ** 2 <= (min(shape[1:]) / 2 - 0.5) ** 2
    return np.broadcast_to(disc, shape).copy()


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


def test_ignore_leaves_a_label_out_of_the_mean_only():
    truth = np.array([[0, 0, 1, 1, 2, 2]], np.uint8)
    pred = np.array([[0, 1, 1, 1, 2, 0]], np.uint8)
    plain = score_volumes(pred, truth)
    doc = score_volumes(pred, truth, ignore=[0], per_slice=None)
    assert [p["label"] for p in doc["phases"]] == [0, 1, 2]  # still reported
    assert doc["phases"] == plain["phases"]
    ious = {p["label"]: p["iou"] for p in doc["phases"]}
    assert ious == {0: 1 / 3, 1: 2 / 3, 2: 1 / 2}
    assert plain["mean_iou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3, rel=1e-15)
    assert doc["mean_iou"] == pytest.approx((2 / 3 + 1 / 2) / 2, rel=1e-15)
    assert doc["ignore"] == [0] and "ignore" not in plain
    assert score_volumes(pred, truth, ignore=[0, 1, 2])["mean_iou"] is None
    assert score_volumes(pred, truth, ignore=[9])["mean_iou"] == plain["mean_iou"]  # absent label: no effect


def test_per_slice_mean_iou_leaves_ignored_labels_out():
    rng = np.random.default_rng(13)
    truth = random_labels(rng, (5, 6, 7), [1, 1, 1])
    pred = np.where(rng.random(truth.shape) < 0.3, 0, truth).astype(np.uint8)
    doc = score_volumes(pred, truth, ignore=[0], per_slice="z", block_shape=(2, 4, 4))
    check_per_slice(doc, pred, truth, np.ones(truth.shape, bool), 0)


def test_strict_phases_refuse_an_unnamed_label():
    truth = np.zeros((6, 6, 6), np.uint8)
    truth[4, 5, 1] = 3
    pred = np.zeros_like(truth)
    with pytest.raises(InputError) as info:
        score_volumes(pred, truth, phases={0: "pore", 1: "grain"}, strict_phases=True, truth_name="labels.zarr",
                      block_shape=(3, 3, 3))
    message = str(info.value)
    assert message.startswith("labels.zarr has label 3 (in region 3:6,3:6,0:3) but the phase names give only labels 0, 1")
    assert "--phases ...,3=NAME" in message
    # Not strict (names from a store, say): the label is reported under a made-up name.
    doc = score_volumes(pred, truth, phases={0: "pore", 1: "grain"})
    assert [p["name"] for p in doc["phases"]] == ["pore", "grain", "phase3"]
    # A label outside the mask counts for nothing, strict names included.
    inside = np.ones(truth.shape, bool)
    inside[4, 5, 1] = False
    doc = score_volumes(pred, truth, phases={0: "pore", 1: "grain"}, strict_phases=True, mask=inside)
    assert [p["label"] for p in doc["phases"]] == [0, 1]


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


@pytest.mark.parametrize("high", [15, 16, 17, 255])
def test_labels_spread_over_0_to_255(high):
    # Phases 0..2 and one high label ("unlabelled" is often 255): the block counts index labels densely above 16.
    rng = np.random.default_rng(high)
    shape = (7, 9, 8)
    truth = random_labels(rng, shape, [3, 2, 2, 1])
    truth[truth == 3] = high
    pred = np.where(rng.random(shape) < 0.3, random_labels(rng, shape, [1, 1, 1, 1]), truth).astype(np.uint8)
    pred[pred == 3] = high
    inside = cylinder(shape)
    for block_shape in [(3, 4, 5), (7, 9, 8)]:
        doc = score_volumes(pred, truth, per_slice="y", block_shape=block_shape, ignore=[high])
        assert [p["label"] for p in doc["phases"]] == [0, 1, 2, high]
        check_against_references(doc, pred, truth, 3)
        check_per_slice(doc, pred, truth, np.ones(shape, bool), 1)
        doc = score_volumes(pred, truth, mask=inside, per_slice="z", block_shape=block_shape)
        masked_reference(doc, pred, truth, inside, 3)
        check_per_slice(doc, pred, truth, inside, 0)


def test_every_label_with_a_mask():
    # 256 labels: the confusion codes and the outside-the-mask bin need more than 16 bits.
    rng = np.random.default_rng(256)
    shape = (8, 9, 10)
    truth = rng.integers(0, 256, shape, dtype=np.uint8)
    pred = np.where(rng.random(shape) < 0.5, truth, rng.integers(0, 256, shape, dtype=np.uint8)).astype(np.uint8)
    truth.flat[:256] = np.arange(256)
    inside = cylinder(shape)
    doc = score_volumes(pred, truth, mask=inside, block_shape=(4, 5, 6), per_slice="x")
    labels = [p["label"] for p in doc["phases"]]
    full = np.bincount(truth[inside].astype(np.int64) * 256 + pred[inside], minlength=256 * 256).reshape(256, 256)
    assert doc["confusion"] == full[np.ix_(labels, labels)].tolist()
    assert doc["per_slice"]["voxels"] == [int(np.count_nonzero(inside[:, :, s])) for s in range(shape[2])]
    for phase in doc["phases"][::37]:
        label = phase["label"]
        assert phase["euler_true"] == skimage_euler((truth == label) & inside, 3)


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
