"""Tests of rockseg.synthetic: seeded synthetic rocks and their simulated CT images."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import threshold_multiotsu

from rockseg.errors import InputError
from rockseg.synthetic import PHASE_GREY, PHASES, simulate_ct, synthetic_labels, synthetic_rock


def mean_iou(truth: np.ndarray, pred: np.ndarray) -> float:
    ious = []
    for phase in PHASES:
        t, p = truth == phase, pred == phase
        ious.append(np.count_nonzero(t & p) / np.count_nonzero(t | p))
    return float(np.mean(ious))


@pytest.fixture(scope="module")
def rock64() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_rock((64, 64, 64), seed=3)


# ---------------------------------------------------------------------------------------------------------------
# Shapes, dtypes, reproducibility
# ---------------------------------------------------------------------------------------------------------------
def test_shapes_and_dtypes(rock64: tuple[np.ndarray, np.ndarray]) -> None:
    image, labels = rock64
    assert isinstance(image, np.ndarray) and isinstance(labels, np.ndarray)
    assert image.shape == labels.shape == (64, 64, 64)
    assert image.dtype == labels.dtype == np.uint8
    assert set(np.unique(labels)) <= set(PHASES)
    assert synthetic_labels((5, 6, 7)).shape == (5, 6, 7)
    assert synthetic_labels((5, 6, 7)).dtype == np.uint8


def test_same_seed_same_rock_other_seed_other_rock() -> None:
    image, labels = synthetic_rock((24, 30, 28), seed=11)
    again_image, again_labels = synthetic_rock((24, 30, 28), seed=11)
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(labels, again_labels)
    other_image, other_labels = synthetic_rock((24, 30, 28), seed=12)
    assert np.count_nonzero(other_labels != labels) > 0.2 * labels.size
    assert np.count_nonzero(other_image != image) > 0.5 * image.size


def test_numpy_integer_shape_and_seed() -> None:
    image, _ = synthetic_rock(np.array([6, 7, 8]), seed=np.int64(4))
    np.testing.assert_array_equal(image, synthetic_rock((6, 7, 8), seed=4)[0])


def test_rock_is_a_window_on_one_infinite_rock() -> None:
    # Labels depend only on the voxel's position: a bigger volume starts with the smaller one.
    small = synthetic_labels((10, 20, 30), seed=7)
    big = synthetic_labels((25, 40, 45), seed=7)
    np.testing.assert_array_equal(big[:10, :20, :30], small)


def test_rock_image_is_simulate_ct_of_rock_labels() -> None:
    options = {"blur": 1.3, "noise": 9.0, "clay_texture": 5.0, "cupping": 0.1, "rings": 4.0}
    image, labels = synthetic_rock((20, 33, 31), seed=2, porosity=0.3, **options)
    np.testing.assert_array_equal(labels, synthetic_labels((20, 33, 31), seed=2, porosity=0.3))
    np.testing.assert_array_equal(image, simulate_ct(labels, seed=2, **options))


# ---------------------------------------------------------------------------------------------------------------
# What the rock looks like
# ---------------------------------------------------------------------------------------------------------------
def test_all_phases_present_with_sensible_fractions(rock64: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = rock64
    fractions = np.bincount(labels.ravel(), minlength=4) / labels.size
    pore, clay, quartz, pyrite = fractions
    assert 0.17 < pore < 0.33
    assert 0.1 < clay < 0.45
    assert quartz == fractions.max()
    assert 0.003 < pyrite < 0.05


@pytest.mark.parametrize(("porosity", "pyrite_fraction"), [(0.25, 0.02), (0.15, 0.0), (0.35, 0.04)])
def test_fractions_follow_the_options(porosity: float, pyrite_fraction: float) -> None:
    # Small grains, so that a small volume holds many and the fractions are close to their expectation.
    labels = synthetic_labels((64, 64, 64), seed=1, grain_radius=(3, 6), clay_thickness=2, pyrite_radius=(2, 4),
                              porosity=porosity, pyrite_fraction=pyrite_fraction)
    fractions = np.bincount(labels.ravel(), minlength=4) / labels.size
    assert fractions[0] == pytest.approx(porosity, abs=0.03)
    assert fractions[3] == pytest.approx(pyrite_fraction, abs=0.01)


def test_no_clay_without_clay() -> None:
    labels = synthetic_labels((40, 40, 40), seed=0, clay_thickness=0, porosity=0.3)
    assert np.count_nonzero(labels == 1) == 0
    assert np.count_nonzero(labels == 0) / labels.size == pytest.approx(0.3, abs=0.06)
    assert np.count_nonzero(synthetic_labels((40, 40, 40), seed=0, clay_coverage=0) == 1) == 0


def test_pore_space_is_connected(rock64: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = rock64
    components, count = ndimage.label(labels == 0)
    sizes = np.bincount(components.ravel())[1:]
    assert count >= 1
    assert sizes.max() > 0.9 * sizes.sum()


def test_phase_grey_values_are_ordered(rock64: tuple[np.ndarray, np.ndarray]) -> None:
    image, labels = rock64
    means = [image[labels == phase].mean() for phase in PHASES]
    assert means[0] < means[1] < means[2] < means[3]
    assert list(PHASE_GREY) == sorted(PHASE_GREY)


@pytest.mark.parametrize("seed", [0, 1])
def test_global_threshold_errs_and_median_filter_helps(seed: int) -> None:
    # The default difficulty: multi-Otsu thresholds of the raw image are clearly wrong in places (noise,
    # blur, clay), a 3x3x3 median filter before the same thresholds recovers most of it.
    image, labels = synthetic_rock((96, 96, 96), seed=seed)
    thresholds = threshold_multiotsu(image, classes=4)
    raw = mean_iou(labels, np.digitize(image, thresholds))
    median = mean_iou(labels, np.digitize(ndimage.median_filter(image, size=3), thresholds))
    assert 0.7 <= raw <= 0.87
    assert median >= 0.89
    assert median - raw >= 0.05


# ---------------------------------------------------------------------------------------------------------------
# The CT simulation on hand-built labels
# ---------------------------------------------------------------------------------------------------------------
def test_ct_without_blur_or_noise_is_the_phase_grey_values() -> None:
    labels = np.array([[[0, 1], [2, 3]], [[3, 2], [1, 0]]], dtype=np.uint8)
    image = simulate_ct(labels, blur=0, noise=0, clay_texture=0)
    expected = np.clip(np.asarray(PHASE_GREY)[labels], 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)
    assert image[0, 1, 1] == 255  # pyrite saturates
    custom = simulate_ct(labels, blur=0, noise=0, clay_texture=0, grey=(1, 2, 3, 4))
    np.testing.assert_array_equal(custom, labels + 1)


def test_ct_blur_matches_scipy_gaussian_filter() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((12, 13, 14)) < 0.4).astype(np.uint8) * 2  # pore and quartz only
    image = simulate_ct(labels, blur=1.5, noise=0, grey=(10.0, 80.0, 170.0))
    grey = np.array([10.0, 80.0, 170.0], dtype=np.float32)[labels]
    reference = ndimage.gaussian_filter(grey, 1.5, mode="reflect", truncate=4.0)
    assert np.abs(image.astype(float) - reference).max() <= 0.5 + 1e-4


def test_ct_2d_is_blurred_in_2d() -> None:
    labels = np.zeros((9, 9), np.uint8)
    labels[4, 4] = 2
    image = simulate_ct(labels, blur=1.0, noise=0, grey=(0.0, 0.0, 200.0))
    reference = ndimage.gaussian_filter(np.where(labels == 2, 200.0, 0.0), 1.0, mode="reflect", truncate=4.0)
    assert image.shape == (9, 9)
    assert np.abs(image - reference).max() <= 0.5 + 1e-6


def test_ct_noise_statistics() -> None:
    labels = np.full((40, 40, 40), 2, np.uint8)
    image = simulate_ct(labels, noise=10.0, blur=0, seed=4).astype(float)
    assert image.mean() == pytest.approx(PHASE_GREY[2], abs=0.1)
    assert image.std() == pytest.approx(10.0, rel=0.03)
    assert np.abs(image - PHASE_GREY[2]).max() <= 3.5 * 10.0 + 0.5
    neighbours = np.corrcoef(image[:, :, :-1].ravel(), image[:, :, 1:].ravel())[0, 1]
    assert abs(neighbours) < 0.02  # white noise
    assert not np.array_equal(image, simulate_ct(labels, noise=10.0, blur=0, seed=5))


def test_clay_is_textured() -> None:
    labels = np.ones((30, 30, 30), np.uint8)
    image = simulate_ct(labels, noise=0, blur=0, clay_texture=10.0).astype(float)
    assert image.mean() == pytest.approx(PHASE_GREY[1], abs=1.0)
    assert 7.0 < image.std() < 13.0
    assert np.array_equal(simulate_ct(labels, noise=0, blur=0, clay_texture=0), np.full_like(labels, 80))


def test_cupping_darkens_the_centre_and_rings_are_the_same_on_every_slice() -> None:
    labels = np.full((3, 41, 41), 2, np.uint8)
    cupped = simulate_ct(labels, noise=0, cupping=0.3).astype(float)
    assert cupped[1, 20, 20] == pytest.approx(PHASE_GREY[2] * 0.7, abs=0.5)
    assert cupped[1, 0, 0] == pytest.approx(PHASE_GREY[2], abs=0.5)
    ringed = simulate_ct(labels, noise=0, rings=20.0)
    np.testing.assert_array_equal(ringed[0], ringed[2])
    assert ringed[0].std() > 1.0
    np.testing.assert_array_equal(ringed[0], ringed[0].T)  # circles about the centre
    assert simulate_ct(labels, noise=0).std() == 0


# ---------------------------------------------------------------------------------------------------------------
# Block by block with Dask: identical to the in-memory rock
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunks", [(10, 17, 13), 16, (37, 50, 45), (37, 9, 45)])
def test_chunked_rock_equals_in_memory_rock(chunks: object) -> None:
    shape, options = (37, 50, 45), {"cupping": 0.2, "rings": 5.0, "blur": 1.4}
    image, labels = synthetic_rock(shape, seed=5, **options)
    lazy_image, lazy_labels = synthetic_rock(shape, seed=5, chunks=chunks, **options)
    assert isinstance(lazy_image, da.Array) and isinstance(lazy_labels, da.Array)
    assert lazy_image.shape == shape and lazy_image.dtype == np.uint8 and lazy_labels.dtype == np.uint8
    got_image, got_labels = dask.compute(lazy_image, lazy_labels, scheduler="sync")
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(got_image, image)


def test_chunked_default_rock_equals_in_memory_rock() -> None:
    image, labels = synthetic_rock((30, 41, 29), seed=9)
    lazy_image, lazy_labels = synthetic_rock((30, 41, 29), seed=9, chunks=(7, 20, 11))
    np.testing.assert_array_equal(lazy_labels.compute(scheduler="threads"), labels)
    np.testing.assert_array_equal(lazy_image.compute(scheduler="threads"), image)


def test_chunked_2d_rock_equals_in_memory_rock() -> None:
    image, labels = synthetic_rock((61, 70), seed=2)
    lazy_image, lazy_labels = synthetic_rock((61, 70), seed=2, chunks=(13, 9))
    assert lazy_image.chunks[0] == (13, 13, 13, 13, 9)
    np.testing.assert_array_equal(lazy_image.compute(scheduler="sync"), image)
    np.testing.assert_array_equal(lazy_labels.compute(scheduler="sync"), labels)


def test_chunked_rock_streams_to_zarr(tmp_path) -> None:
    zarr = pytest.importorskip("zarr")
    image, labels = synthetic_rock((20, 24, 22), seed=1)
    lazy_image, lazy_labels = synthetic_rock((20, 24, 22), seed=1, chunks=8)
    da.to_zarr(lazy_image, str(tmp_path / "image.zarr"))
    da.to_zarr(lazy_labels, str(tmp_path / "labels.zarr"))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "image.zarr"))[:], image)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "labels.zarr"))[:], labels)


# ---------------------------------------------------------------------------------------------------------------
# 2D
# ---------------------------------------------------------------------------------------------------------------
def test_2d_rock_is_a_slice_of_the_3d_rock() -> None:
    image, labels = synthetic_rock((50, 60), seed=8)
    assert image.shape == labels.shape == (50, 60)
    assert image.dtype == labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, synthetic_labels((4, 50, 60), seed=8)[0])
    assert set(np.unique(synthetic_labels((200, 200), seed=8))) == set(PHASES)


# ---------------------------------------------------------------------------------------------------------------
# Bad arguments
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 10, 10), (10, -1, 10), (10,), (2, 2, 2, 2), (10.0, 10), (True, 3), "64", 64])
def test_bad_shape_raises(shape: object) -> None:
    with pytest.raises(InputError, match="shape"):
        synthetic_rock(shape)
    with pytest.raises(InputError, match="shape"):
        synthetic_labels(shape)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", None, True])
def test_bad_seed_raises(seed: object) -> None:
    with pytest.raises(InputError, match="seed"):
        synthetic_rock((4, 4, 4), seed=seed)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"porosity": 0}, "porosity"),
        ({"porosity": 1.0}, "porosity"),
        ({"porosity": "lots"}, "porosity"),
        ({"porosity": 0.8, "pyrite_fraction": 0.2}, "cannot be reached"),
        ({"grain_radius": (9, 4)}, "grain_radius"),
        ({"grain_radius": (0, 4)}, "grain_radius"),
        ({"grain_radius": (1, 2, 3)}, "grain_radius"),
        ({"grain_elongation": 0.5}, "grain_elongation"),
        ({"clay_coverage": 1.5}, "clay_coverage"),
        ({"pyrite_fraction": -0.1}, "pyrite_fraction"),
        ({"blur": -1}, "blur"),
        ({"noise": float("nan")}, "noise"),
        ({"cupping": 1.0}, "cupping"),
        ({"grey": (1, 2)}, "grey"),
        ({"poristy": 0.2}, "did you mean 'porosity'"),
    ],
)
def test_bad_option_raises(options: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        synthetic_rock((8, 8, 8), **options)


def test_bad_chunks_raise() -> None:
    with pytest.raises(InputError, match="chunks"):
        synthetic_rock((8, 8, 8), chunks=(4, 4))
    with pytest.raises(InputError, match="chunks"):
        synthetic_rock((8, 8, 8), chunks=((4, 3), 8, 8))


def test_simulate_ct_bad_labels_raise() -> None:
    with pytest.raises(InputError, match="labels"):
        simulate_ct(np.full((3, 3), 4, np.uint8))
    with pytest.raises(InputError, match="labels"):
        simulate_ct(np.full((3, 3), -1, np.int16))
    with pytest.raises(InputError, match="integer"):
        simulate_ct(np.zeros((3, 3), np.float32))
    with pytest.raises(InputError, match="label array"):
        simulate_ct(np.zeros(5, np.uint8))
    with pytest.raises(InputError, match="blur"):
        simulate_ct(np.zeros((3, 3), np.uint8), blur=-0.5)
    with pytest.raises(InputError, match="seed"):
        simulate_ct(np.zeros((3, 3), np.uint8), seed=-3)
