"""Tests of rockseg.training.augment: exact symmetries, labels that stay labels, intensity-only changes, seeds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage as ndi

from rockseg.errors import InputError
from rockseg.training.augment import PRESETS, AugmentConfig, augment_batch, gamma, preset, small_rotation, symmetry

INTENSITY_ONLY = AugmentConfig(flip=0.0, transpose=False, scale=1.0, gamma=1.0, noise=1.0, blur=1.0)


def signed_permutations(tile: np.ndarray) -> list[np.ndarray]:
    """Every axis permutation followed by every combination of flips: the symmetry group of a cubic tile."""
    out = []
    for perm in itertools.permutations(range(tile.ndim)):
        for flips in itertools.product([False, True], repeat=tile.ndim):
            t = tile.transpose(perm)
            axes = tuple(a for a, f in enumerate(flips) if f)
            out.append(np.flip(t, axes) if axes else t)
    return out


@pytest.mark.parametrize("shape, group", [((5, 5), 8), ((3, 3, 3), 48)])
def test_symmetry_is_an_exact_rearrangement_and_reaches_the_whole_group(shape, group):
    tile = np.arange(np.prod(shape)).reshape(shape)
    variants = signed_permutations(tile)
    assert len({v.tobytes() for v in variants}) == group  # all distinct for distinct voxel values
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40 * group):
        img, lab = symmetry(tile, tile.astype(np.uint8), rng)
        assert img.shape == shape and sorted(img.ravel()) == list(range(tile.size))
        np.testing.assert_array_equal(lab, img.astype(np.uint8))  # labels moved exactly like the image
        seen.add(next(i for i, v in enumerate(variants) if np.array_equal(v, img)))
    assert len(seen) == group


def test_symmetry_keeps_the_shape_of_a_non_cubic_tile():
    tile = np.arange(3 * 4 * 4).reshape(3, 4, 4)
    rng = np.random.default_rng(1)
    for _ in range(20):
        img, _ = symmetry(tile, tile, rng)
        assert img.shape == (3, 4, 4)
        # Axis 0 (length 3) never swaps with the others: its slices keep their sets of values, maybe reversed.
        assert {frozenset(img[0].ravel()), frozenset(img[2].ravel())} == {
            frozenset(tile[0].ravel()), frozenset(tile[2].ravel())}


def test_basic_batch_moves_images_and_labels_together_per_tile():
    images = np.random.default_rng(2).random((6, 4, 4, 4)).astype(np.float32)
    labels = (images > 0.5).astype(np.uint8)
    img, lab = augment_batch(images, labels, np.random.default_rng(3), config=PRESETS["basic"])
    np.testing.assert_array_equal(lab, (img > 0.5).astype(np.uint8))
    for i in range(6):
        assert any(np.array_equal(v, img[i]) for v in signed_permutations(images[i]))
    assert not np.array_equal(img, images)


def test_none_changes_nothing():
    images = np.random.default_rng(2).random((3, 8, 8)).astype(np.float32)
    labels = (images > 0.5).astype(np.uint8)
    img, lab = augment_batch(images, labels, np.random.default_rng(0), config=PRESETS["none"])
    np.testing.assert_array_equal(img, images)
    np.testing.assert_array_equal(lab, labels)
    assert not PRESETS["none"].active and PRESETS["basic"].active


@pytest.mark.parametrize("shape", [(4, 16, 16), (2, 12, 12, 12)])
def test_intensity_ops_change_the_image_not_the_labels(shape):
    rng = np.random.default_rng(4)
    images = rng.random(shape).astype(np.float32)
    labels = rng.integers(0, 4, shape).astype(np.uint8)
    img, lab = augment_batch(images, labels, np.random.default_rng(5), config=INTENSITY_ONLY)
    np.testing.assert_array_equal(lab, labels)
    assert img.dtype == np.float32 and img.shape == shape and np.isfinite(img).all()
    assert not np.allclose(img, images)


def test_gamma_by_hand():
    x = np.array([0.0, 0.25, 1.0, 2.0], np.float32)  # lo 0, hi 2: unit values 0, 0.125, 0.5, 1
    np.testing.assert_allclose(gamma(x, 2.0), [0.0, 2 * 0.125**2, 2 * 0.25, 2.0], rtol=1e-6)
    flat = np.full(5, 3.0, np.float32)
    np.testing.assert_array_equal(gamma(flat, 0.5), flat)


@pytest.mark.parametrize("shape", [(32, 32), (24, 24, 24)])
def test_small_rotation_moves_labels_with_the_image_and_keeps_them_labels(shape):
    # A centred disk / ball is (nearly) unchanged by a rotation about the centre, whatever the plane.
    centre = (np.array(shape) - 1) / 2
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(np.indices(shape), centre)))
    labels = np.where(r < shape[0] / 3, 3, 1).astype(np.uint8)
    image = labels.astype(np.float32) * 10
    rng = np.random.default_rng(6)
    for _ in range(5):
        img, lab = small_rotation(image, labels, rng, max_angle=15)
        assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {1, 3}
        assert np.mean(lab == labels) > 0.97
        # image resampled linearly, labels by nearest voxel, on the same grid: they agree except at edges
        assert np.mean(np.where(img > 20, 3, 1) == lab) > 0.97
    # An off-centre bar really turns: the labels change, and the image the same way.
    bar = np.zeros(shape, np.uint8)
    bar[(slice(None),) * (len(shape) - 1) + (slice(2, 6),)] = 2
    img, lab = small_rotation(bar.astype(np.float32), bar, np.random.default_rng(7), max_angle=15)
    assert not np.array_equal(lab, bar) and set(np.unique(lab)) <= {0, 2}
    assert np.mean(np.abs(img - lab) < 1.0) > 0.95


def test_small_rotation_matches_scipy():
    rng = np.random.default_rng(8)
    image = rng.random((10, 10)).astype(np.float32)
    labels = rng.integers(0, 3, (10, 10)).astype(np.uint8)
    img, lab = small_rotation(image, labels, np.random.default_rng(9), max_angle=15)
    angle = np.random.default_rng(9).uniform(-15, 15)
    np.testing.assert_array_equal(img, ndi.rotate(image, angle, reshape=False, order=1, mode="reflect"))
    np.testing.assert_array_equal(lab, ndi.rotate(labels, angle, reshape=False, order=0, mode="reflect"))


def test_strong_is_reproducible_per_seed_and_keeps_valid_labels():
    rng = np.random.default_rng(10)
    images = rng.random((4, 16, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 4, images.shape).astype(np.uint8)
    a = augment_batch(images, labels, np.random.default_rng(11), config=PRESETS["strong"])
    b = augment_batch(images, labels, np.random.default_rng(11), config=PRESETS["strong"])
    c = augment_batch(images, labels, np.random.default_rng(12), config=PRESETS["strong"])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[1].dtype == np.uint8 and set(np.unique(a[1])) <= {0, 1, 2, 3}
    assert a[0].dtype == np.float32 and np.isfinite(a[0]).all()


def test_integer_images_become_float_only_when_needed():
    images = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    labels = np.zeros_like(images, dtype=np.uint8)
    assert augment_batch(images, labels, np.random.default_rng(0))[0].dtype == np.uint16
    assert augment_batch(images, labels, np.random.default_rng(0), config=INTENSITY_ONLY)[0].dtype == np.float32


def test_presets_and_checks():
    assert preset("basic") == PRESETS["basic"] and preset(True) == PRESETS["basic"] and preset(False) == PRESETS["none"]
    with pytest.raises(InputError, match="did you mean 'strong'"):
        preset("strnog")
    for cfg in PRESETS.values():
        cfg.check()
    with pytest.raises(InputError, match="rotate probability"):
        AugmentConfig(rotate=1.5).check()
    with pytest.raises(InputError, match="gamma_range"):
        AugmentConfig(gamma_range=(1.5, 0.7)).check()
    with pytest.raises(ValueError, match="same shape"):
        augment_batch(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)), np.random.default_rng(0))


@pytest.mark.parametrize("shape", [(6, 5, 5), (4, 3, 4, 4)])
def test_augment_moves_images_and_labels_together(shape):
    images = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    labels = (images % 7).astype(np.uint8)
    img, lab = augment_batch(images, labels, np.random.default_rng(0))
    np.testing.assert_array_equal(lab, img % 7)
    spatial = len(shape) - 1
    seen = set()
    for i in range(shape[0]):
        variants = []
        for flips in itertools.product([False, True], repeat=spatial):
            axes = tuple(a for a, f in enumerate(flips) if f)
            flipped = np.flip(images[i], axes) if axes else images[i]
            variants += [np.rot90(flipped, k, axes=(-2, -1)) for k in range(4)]
        match = [j for j, v in enumerate(variants) if np.array_equal(v, img[i])]
        assert match, "each tile must be a flip/rotation of its input"
        seen.add(match[0])
    assert len(seen) > 1
