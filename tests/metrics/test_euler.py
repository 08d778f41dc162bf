"""The Euler lookup table and Euler numbers: hand-made volumes with known answers, then scikit-image, exactly.

The Euler number must equal ``skimage.measure.euler_number`` for any chunking and block shape, so the known
volumes are also scored block by block, with awkward block grids.
"""

from __future__ import annotations

import numpy as np
import pytest

from rockseg.errors import InputError
from rockseg.metrics import euler_lut, euler_number, score_volumes
from tests.metrics.references import skimage_euler


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
