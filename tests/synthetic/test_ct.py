"""The CT simulation on hand-built labels: grey values, blur (against SciPy), noise, clay texture, artefacts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from rockseg.errors import InputError
from rockseg.synthetic import PHASE_GREY, simulate_ct


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
