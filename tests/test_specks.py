"""Speck removal (rockseg.specks) against scikit-image's remove_small_objects, and its block-face rule."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.morphology import remove_small_objects

from rockseg.metrics.euler import euler_number
from rockseg.specks import SPECK_SIZES, remove_specks
from rockseg.vocabulary import OUTSIDE


def noisy_two_phase(seed: int = 0, shape: tuple[int, ...] = (40, 48, 44)) -> np.ndarray:
    """Blobs of pore (0) in solid (1) with 2 % of the voxels flipped: many specks of both phases."""
    rng = np.random.default_rng(seed)
    field = rng.normal(size=shape)
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(field, 2.5)
    labels = (smooth > 0).astype(np.uint8)
    flip = rng.random(shape) < 0.02
    labels[flip] = 1 - labels[flip]
    return labels


def small_removed(mask: np.ndarray, size: int, connectivity: int) -> np.ndarray:
    """scikit-image's removal of the objects of at most ``size`` voxels (``max_size`` since 0.26)."""
    import inspect

    if "max_size" in inspect.signature(remove_small_objects).parameters:
        return remove_small_objects(mask, max_size=size, connectivity=connectivity)
    return remove_small_objects(mask, min_size=size + 1, connectivity=connectivity)


@pytest.mark.parametrize("size", [1, 4, 16])
def test_two_phases_match_scikit_image(size: int) -> None:
    labels = noisy_two_phase()
    pore = small_removed(labels == 0, size, 3)
    solid = small_removed(~pore, size, 1)  # the pore's cavities: faces only
    expected = np.where(solid, 1, 0).astype(np.uint8)
    got = labels.copy()
    changed = remove_specks(got, size, classes=2)
    np.testing.assert_array_equal(got, expected)
    assert changed == int((got != labels).sum()) > 0


def test_zero_removes_nothing() -> None:
    labels = noisy_two_phase()
    got = labels.copy()
    assert remove_specks(got, 0, classes=2) == 0
    np.testing.assert_array_equal(got, labels)


def test_removing_specks_mends_the_pore_euler_number() -> None:
    rng = np.random.default_rng(1)
    from scipy.ndimage import gaussian_filter

    clean = (gaussian_filter(rng.normal(size=(48, 48, 48)), 3) > 0.05).astype(np.uint8)
    noisy = clean.copy()
    idx = rng.integers(2, 46, size=(200, 3))
    noisy[tuple(idx.T)] = 1 - noisy[tuple(idx.T)]  # isolated single voxels of the other phase
    mended = noisy.copy()
    remove_specks(mended, 2, classes=2)
    truth = euler_number(clean == 0)
    assert abs(euler_number(mended == 0) - truth) < abs(euler_number(noisy == 0) - truth) / 10


def test_pieces_touching_an_open_face_are_kept() -> None:
    labels = np.ones((10, 10, 10), np.uint8)
    labels[0, 4, 4] = 0  # on the low z face
    labels[5, 5, 5] = 0  # inside
    closed, opened = labels.copy(), labels.copy()
    remove_specks(closed, 4, classes=2)
    remove_specks(opened, 4, classes=2, open_faces=[(True, False), (False, False), (False, False)])
    assert (closed == 1).all()  # the volume's own faces are closed: both specks go
    assert opened[0, 4, 4] == 0 and opened[5, 5, 5] == 1


def test_blocks_remove_what_the_whole_volume_removes_away_from_their_faces() -> None:
    labels = noisy_two_phase(2, (32, 32, 32))
    whole = labels.copy()
    remove_specks(whole, 4, classes=2)
    blocked = labels.copy()
    edge = 16
    for z in range(0, 32, edge):
        for y in range(0, 32, edge):
            for x in range(0, 32, edge):
                box = (slice(z, z + edge), slice(y, y + edge), slice(x, x + edge))
                block = blocked[box].copy()
                remove_specks(block, 4, classes=2, open_faces=[(s.start > 0, s.stop < 32) for s in box])
                blocked[box] = block
    differ = blocked != whole
    assert 0 < differ.sum() < (whole != labels).sum() / 4  # only pieces crossing block faces differ
    near_face = np.zeros_like(differ)
    for axis in range(3):
        index = [slice(None)] * 3
        index[axis] = slice(edge - 5, edge + 5)
        near_face[tuple(index)] = True
    assert not (differ & ~near_face).any()


def test_more_phases_take_the_phase_around_them_and_leave_outside_alone() -> None:
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[:, :, 6:] = 2
    labels[6, 6, 3] = 1  # a speck of 1 inside phase 0
    labels[6, 6, 9] = 0  # a speck of 0 inside phase 2
    labels[2, 2, 5:8] = 1  # a speck of 1 on the boundary of 0 and 2: it becomes one of them
    labels[0, 0, 0] = OUTSIDE
    labels[11, 11, 11] = 1
    labels[10:, 10:, 10:][labels[10:, 10:, 10:] != 1] = OUTSIDE  # a speck with only OUTSIDE around it
    got = labels.copy()
    remove_specks(got, 3, classes=3)
    assert got[6, 6, 3] == 0 and got[6, 6, 9] == 2
    assert got[0, 0, 0] == OUTSIDE and got[11, 11, 11] == 1  # nothing to vote: left as it was
    assert (got[2, 2, 5:8] != 1).all()
    assert set(np.unique(got[2, 2, 5:8])) <= {0, 2}


def test_two_dimensional_labels() -> None:
    labels = np.ones((20, 20), np.uint8)
    labels[5, 5] = 0
    labels[10:15, 10:15] = 0
    remove_specks(labels, 4, classes=2)
    assert labels[5, 5] == 1 and (labels[10:15, 10:15] == 0).all()


def test_sizes_tried_start_with_none() -> None:
    assert SPECK_SIZES[0] == 0 and list(SPECK_SIZES) == sorted(SPECK_SIZES)
