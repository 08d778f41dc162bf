"""The synthetic rock: shapes, reproducibility, one infinite rock, and what it looks like."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import threshold_multiotsu

from rockseg.synthetic import PHASE_GREY, PHASES, synthetic_labels, synthetic_rock


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
# 2D
# ---------------------------------------------------------------------------------------------------------------
def test_2d_rock_is_a_slice_of_the_3d_rock() -> None:
    image, labels = synthetic_rock((50, 60), seed=8)
    assert image.shape == labels.shape == (50, 60)
    assert image.dtype == labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, synthetic_labels((4, 50, 60), seed=8)[0])
    assert set(np.unique(synthetic_labels((200, 200), seed=8))) == set(PHASES)
